"""MXFP6 (e2m3 / e3m2) weight GEMM from the packed weight (``QuarkOCP_MX`` with fp6 weights): XLA reference and
Pallas (Triton) kernel. The activation is used as given (the scheme quantize-dequantizes an MX input first)."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.mxfp6_mm.xla import mxfp6_mm_xla

ACT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
ELEMENTS = ("fp6_e2m3", "fp6_e3m2")


def mxfp6_mm(x, w_packed, w_scales, bias=None, *, element: str = "fp6_e2m3", out_dtype=None, impl="auto"):
    """``y = linear(x, dequantize_mx(w_packed, w_scales, element), bias)``.

    Args:
      x: [M, K] bf16/f16/f32, K a multiple of 32 (the kernel: of 64).
      w_packed: uint8 [N, 3K/4] (four 6-bit codes in three bytes, SPEC section 1).
      w_scales: uint8 [N, K/32] E8M0. bias: optional [N], added in f32.
      element: "fp6_e2m3" or "fp6_e3m2". out_dtype: default x.dtype. impl: "auto", "pallas" or "xla".

    Every dequantized weight is exact in bf16 / f16 (at most 4 significant bits times a power of two, up to range),
    so the kernel equals the reference up to the f32 summation order.

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 64), 0.5), "fp6_e3m2")
    >>> mxfp6_mm(jnp.ones((1, 64)), w, s, element="fp6_e3m2", impl="xla")[0, :2].tolist()
    [32.0, 32.0]
    """
    if element not in ELEMENTS:
        raise ValueError(f"element: expected one of {ELEMENTS}, got {element!r}")
    x = _validate.matrix("x", x, ACT_DTYPES, "[M, K] bf16/f16/f32")
    w_packed = _validate.matrix("w_packed", w_packed, (jnp.uint8,), "[N, 3K/4] uint8 (FP6)")
    w_scales = _validate.matrix("w_scales", w_scales, (jnp.uint8,), "[N, K/32] uint8 (E8M0)")
    m, k = x.shape
    n = w_packed.shape[0]
    _validate.multiple_of("x", k, formats.MX_BLOCK_SIZE, "K")
    _validate.packed_shape("w_packed", w_packed, (n, 3 * k // 4), k)
    if w_scales.shape != (n, k // formats.MX_BLOCK_SIZE):
        raise ValueError(f"w_scales: expected shape ({n}, {k // formats.MX_BLOCK_SIZE}), got {tuple(w_scales.shape)}")
    bias = _validate.bias_vector(bias, n)
    which = _dispatch.resolve_impl("mxfp6_mm", impl, m, k, n, supported=n % 16 == 0 and k % 64 == 0)
    if which == "pallas":
        _validate.multiple_of("w_packed", n, 16, "N")
        _validate.multiple_of("x", k, 64, "K")
        from quark_jax.kernels.mxfp6_mm import pallas_triton

        return pallas_triton.mxfp6_mm_pallas(x, w_packed, w_scales, bias, element=element, out_dtype=out_dtype)
    return mxfp6_mm_xla(x, w_packed, w_scales, bias, element=element, out_dtype=out_dtype)


__all__ = ["mxfp6_mm", "mxfp6_mm_xla"]
