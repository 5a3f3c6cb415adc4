"""The XLA reference of ``add_rmsnorm``: the decoder's residual add and RMSNorm as written in
``quark_jax.models.llama`` (float32 statistics, rounded to the model dtype, weight multiply, rounded again), then
the static FP8 quantization ``quant.scaled_fp8_quant`` applies."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quark_jax import quant
from quark_jax.kernels.tiling import SplitSums
from quark_jax.quant import round_to


def add_rmsnorm_xla(x, weight, residual=None, *, eps: float, codes=None, scale=None, scale_reciprocal=None,
                    zero_point=None):
    """``(h, y)``: ``h = dtype(x + residual)`` (x itself without ``residual``), ``y = RMSNorm(h)`` in x's dtype,
    or its codes: ``codes="fp8"`` float8_e4m3fn with the static per-tensor ``scale`` (and its stored
    ``scale_reciprocal``), ``codes="int8"`` int8 with ``scale`` (and ``zero_point``), as the quantizers give them.
    ``residual`` may be a split-K GEMM's unfinished ``kernels.tiling.SplitSums`` (finished first).

    >>> h, y = add_rmsnorm_xla(jnp.array([[1.0, 3.0]], jnp.bfloat16), jnp.ones(2), jnp.array([[1.0, -1.0]]), eps=0.0)
    >>> h.tolist(), y.tolist()   # h = [2, 2]: rms 2
    ([[2.0, 2.0]], [[1.0, 1.0]])
    """
    if isinstance(residual, SplitSums):
        # a split-K GEMM's unfinished output: its epilogue first, rounded so that XLA cannot skip the cast
        residual = round_to(residual.finish(), residual.dtype)
    if residual is not None:
        x = round_to(x.astype(jnp.float32) + residual.astype(jnp.float32), x.dtype)
    xf = x.astype(jnp.float32)
    y = round_to(xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps), x.dtype)
    y = round_to(weight.astype(jnp.float32) * y.astype(jnp.float32), x.dtype)
    if codes == "fp8":
        y = quant.scaled_fp8_quant(y, scale, dtype=jnp.float8_e4m3fn, scale_reciprocal=scale_reciprocal)[0]
    elif codes == "int8":
        y = quant.scaled_int8_quant(y, scale, zero_point, symmetric=zero_point is None)[0]
    elif codes is not None:
        raise ValueError(f"codes: expected None, 'fp8' or 'int8', got {codes!r}")
    return x, y
