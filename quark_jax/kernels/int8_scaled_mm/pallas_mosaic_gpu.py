"""Pallas Mosaic GPU (Hopper: TMA + wgmma) INT8 W8A8 GEMM with the azp epilogue, for decode shapes (M <= 128).

int8 x int8 -> int32 wgmma with the weight [N, K] as the A operand streamed through a TMA ring; the epilogue
``out(x_scale * (w_scale * f32(acc - azp term)) + bias)`` runs on the int32 accumulator in registers
(``quark_jax.kernels.mosaic_skinny``; the azp term is this op's ``correct``). Same contract as the Triton kernel
(``pallas_triton.py``). ``Config`` is the shared skinny kernel's; ``DEFAULT`` its tiling here (not tuned).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from quark_jax.kernels import _dispatch, mosaic_skinny
from quark_jax.kernels.mosaic_skinny import Config

DEFAULT = Config()


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def int8_scaled_mm_mosaic(x_q, w_q, x_scale, w_scale, bias=None, *, azp_adj=None, azp=None,
                          out_dtype=jnp.bfloat16, config: Config | None = None, interpret=None):
    """The INT8 scaled GEMM (SPEC section 3) as one Mosaic GPU kernel plus XLA glue (M padding, transpose).

    Args:
      x_q: [M, K] int8, M <= 128; w_q: [N, K] int8, N a multiple of 64, K of 16.
      x_scale: f32 () or [M, 1]; w_scale: f32 () or [N]; bias: optional [N].
      azp_adj: optional int32 [N]; azp: optional int32 [M, 1] (per-token zero points, needs azp_adj).
      out_dtype: bfloat16, float16 or float32; config: a ``Config`` or None (``DEFAULT``).
      interpret: run in the Mosaic GPU interpreter; None means "unless on a CUDA GPU".

    >>> import jax.numpy as jnp
    >>> x = jnp.full((1, 64), 2, jnp.int8); w = jnp.ones((64, 64), jnp.int8)
    >>> y = int8_scaled_mm_mosaic(x, w, 0.5, 0.25, azp_adj=jnp.full((64,), 64, jnp.int32), out_dtype=jnp.float32)
    >>> float(y[0, 0])
    8.0
    """
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    rows = () if azp_adj is None else (azp_adj,)
    cols = () if azp is None else (azp,)

    def correct(acc, row_vals, col_vals):  # [N, M] orientation: azp_adj along rows, per-token azp along columns
        return acc - (col_vals[0] * row_vals[0] if col_vals else row_vals[0])

    return mosaic_skinny.scaled_mm_skinny(
        x_q, w_q, jnp.asarray(x_scale, jnp.float32), jnp.asarray(w_scale, jnp.float32), bias,
        out_dtype=out_dtype, config=config or DEFAULT, interpret=interpret, int_rows=rows, int_cols=cols,
        correct=None if azp_adj is None else correct)


__all__ = ["int8_scaled_mm_mosaic", "Config", "DEFAULT"]
