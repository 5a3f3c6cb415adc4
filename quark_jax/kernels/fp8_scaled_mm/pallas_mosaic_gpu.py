"""Pallas Mosaic GPU (Hopper: TMA + wgmma) FP8 W8A8 GEMM for decode shapes (M <= 128).

The weight [N, K] streams through a TMA ring in shared memory and is the wgmma A operand as stored; the
activation tile is the transposed B operand; the scales and bias are applied in f32 in the epilogue with one
rounding (``quark_jax.kernels.mosaic_skinny``). Same contract as the Triton kernel (``pallas_triton.py``).
``Config`` is the shared skinny kernel's; ``DEFAULT`` its tiling here (not tuned: ``auto`` does not pick this
backend, see benchmarks/NOTES.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from quark_jax.kernels import _dispatch, mosaic_skinny
from quark_jax.kernels.mosaic_skinny import Config

DEFAULT = Config()


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def fp8_scaled_mm_mosaic(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16,
                         config: Config | None = None, interpret=None):
    """``out(x_scale * (w_scale * (x_q @ w_q.T)) + bias)`` as one Mosaic GPU kernel (plus XLA glue: padding M to
    a multiple of 8, the [N, M] -> [M, N] transpose).

    Args:
      x_q: [M, K] float8_e4m3fn, M <= 128.
      w_q: [N, K] float8_e4m3fn; N a multiple of 64, K of 16.
      x_scale: f32 () or [M, 1]; w_scale: f32 () or [N]; bias: optional [N].
      out_dtype: bfloat16, float16 or float32.
      config: a ``Config`` (fit to the shape); None uses ``DEFAULT``.
      interpret: run in the Mosaic GPU interpreter; None means "unless on a CUDA GPU".

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((3, 64), jnp.float8_e4m3fn); w = jnp.ones((64, 64), jnp.float8_e4m3fn)
    >>> y = fp8_scaled_mm_mosaic(x, w, jnp.float32(0.5), jnp.full((64,), 2.0), jnp.ones(64), out_dtype=jnp.float32)
    >>> y.shape, float(y[2, 63])
    ((3, 64), 65.0)
    """
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    return mosaic_skinny.scaled_mm_skinny(
        x_q, w_q, jnp.asarray(x_scale, jnp.float32), jnp.asarray(w_scale, jnp.float32), bias,
        out_dtype=out_dtype, config=config or DEFAULT, interpret=interpret)


__all__ = ["fp8_scaled_mm_mosaic", "Config", "DEFAULT"]
