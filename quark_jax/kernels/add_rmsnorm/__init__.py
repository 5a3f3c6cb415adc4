"""Residual add + RMSNorm (+ the next GEMM's static FP8 input quantization): ``add_rmsnorm``, an XLA reference
and one Pallas-Triton kernel (a decode step's norm in one launch instead of three: the add, the sum of squares,
the normalize).

Layout as the other ops: this module is the entry and its dispatch, ``xla.py`` the reference composition,
``pallas_triton.py`` the kernel with its ``Config``.
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax.kernels import _dispatch
from quark_jax.kernels.add_rmsnorm.xla import add_rmsnorm_xla


def add_rmsnorm(x, weight, residual=None, *, eps: float, codes=None, scale=None, scale_reciprocal=None,
                zero_point=None, impl: str = "auto"):
    """``(h, y)`` with ``h = dtype(x + residual)`` (x without ``residual``) and ``y = RMSNorm(h)`` as
    ``quark_jax.models.llama.RMSNorm`` computes it (float32 statistics, rounded to x's dtype, times ``weight``,
    rounded again); ``codes="fp8"``: y is the float8_e4m3fn codes ``quant.scaled_fp8_quant(y, scale)`` gives
    with a static per-tensor ``scale`` (and ``scale_reciprocal``, its stored ``true_divide(1, scale)``);
    ``codes="int8"``: the int8 codes of ``quant.scaled_int8_quant(y, scale, zero_point)``.

    Args:
      x: [..., H] bf16, f16 or f32 (the residual stream). residual: None or x's shape (added, then rounded);
        or a split-K GEMM's unfinished ``kernels.tiling.SplitSums`` (``fp8_scaled_mm(..., finish=False)``),
        whose epilogue the Pallas kernel runs itself (the same values; the XLA path finishes it first).
      weight: [H]. eps: the norm's epsilon.
      codes: None (y in x's dtype), "fp8" or "int8".
      scale, scale_reciprocal: "fp8" needs both (the Pallas kernel multiplies by the reciprocal; it must be
        ``quant.true_divide(1, scale)``, as the FP8 scheme stores it); "int8" needs ``scale`` (f32 scalar) and
        takes an optional int32 ``zero_point`` (asymmetric).
      impl: "auto" (the kernel on a CUDA GPU where it takes the shape, else XLA), "pallas" or "xla".

    Numerics: the Pallas kernel sums the squares in another order than XLA (float32, relative error of the sum
    <= (H - 1) * 2**-24 for any order, SPEC 11.6); everything else is bit for bit the reference.

    >>> h, y = add_rmsnorm(jnp.ones((1, 16), jnp.bfloat16), jnp.full(16, 2.0, jnp.bfloat16), eps=1e-6, impl="xla")
    >>> y.dtype.name, float(y[0, 0])
    ('bfloat16', 2.0)
    """
    _dispatch.check_impl(impl)
    if codes == "fp8" and (scale is None or scale_reciprocal is None or zero_point is not None):
        raise ValueError("codes='fp8': pass both scale and scale_reciprocal (and no zero_point)")
    if codes == "int8" and (scale is None or scale_reciprocal is not None):
        raise ValueError("codes='int8': pass scale (and zero_point when asymmetric), not scale_reciprocal")
    if codes is None and (scale is not None or scale_reciprocal is not None or zero_point is not None):
        raise ValueError("scale / scale_reciprocal / zero_point: only with codes='fp8' or 'int8'")
    if codes not in (None, "fp8", "int8"):
        raise ValueError(f"codes: expected None, 'fp8' or 'int8', got {codes!r}")
    lead, hdim = x.shape[:-1], x.shape[-1]
    if impl == "auto":
        from quark_jax.kernels.add_rmsnorm import pallas_triton

        impl = "pallas" if not _dispatch.pallas_interpret() and pallas_triton.supported(hdim, x.dtype) else "xla"
    if impl == "xla":
        return add_rmsnorm_xla(x, weight, residual, eps=eps, codes=codes, scale=scale,
                               scale_reciprocal=scale_reciprocal, zero_point=zero_point)
    from quark_jax.kernels.add_rmsnorm import pallas_triton

    x2 = x.reshape(-1, hdim)
    r2 = None if residual is None else residual.reshape(-1, hdim)  # (SplitSums.reshape: the token axes)
    h, y = pallas_triton.add_rmsnorm_pallas(x2, weight, r2, scale, scale_reciprocal, zero_point, eps=float(eps),
                                            codes=codes)
    return (x if residual is None else h.reshape(x.shape)), y.reshape(*lead, hdim)


__all__ = ["add_rmsnorm", "add_rmsnorm_xla"]
