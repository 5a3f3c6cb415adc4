"""W4A16 INT4 / UINT4 per-group GEMM from Quark's packed weight (``QuarkW4A16Int4``): XLA reference and Pallas
(Triton) kernel."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.int4_mm.xla import int4_mm_xla

ACT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def int4_mm(x, w_packed, w_scales, w_zeros=None, bias=None, *, group_size: int, order: str = "reorder",
            signed: bool = True, out_dtype=None, impl="auto"):
    """``y = linear(x, (q - z) * s, bias)`` from Quark's per-group INT4 / UINT4 layout.

    Args:
      x: [M, K] bf16/f16/f32 activations.
      w_packed: int32 [K, N/8], 8 values along N per word in Quark's ``pack_method`` ``order``.
      w_scales: f32 [K/group_size, N].
      w_zeros: int32 [K/group_size, N/8] packed like the weight (uint4), or None (int4: symmetric).
      bias: optional [N], added in f32.
      group_size: K elements per scale (a multiple of 16 for the kernel). order: "reorder" or "order".
      signed: int4 (-8..7) or uint4 (0..15). out_dtype: default x.dtype. impl: "auto", "pallas" or "xla".

    The XLA reference rounds the dequantized weight to x's dtype; the kernel applies the scale to each group's
    f32 partial sum instead (the weight is never rounded), so the two agree to x's precision, bit for bit where
    every product is exact (SPEC section 3, QuarkW4A16Int4).

    >>> w = formats.pack_int4(jnp.ones((16, 8), jnp.int32), "order")          # K = 16, N = 8, every q = 1
    >>> int4_mm(jnp.ones((1, 16)), w, jnp.full((1, 8), 0.5), group_size=16, order="order", impl="xla")[0, :2].tolist()
    [8.0, 8.0]
    """
    x = _validate.matrix("x", x, ACT_DTYPES, "[M, K] bf16/f16/f32")
    w_packed = _validate.matrix("w_packed", w_packed, (jnp.int32,), "[K, N/8] int32 (8 INT4 values a word)")
    w_scales = _validate.matrix("w_scales", w_scales, (jnp.float32,), "[K/group_size, N] float32")
    m, k = x.shape
    n = w_packed.shape[1] * 8
    if w_packed.shape[0] != k:
        raise ValueError(f"w_packed: expected shape ({k}, N/8) for x with K = {k}, got {tuple(w_packed.shape)}")
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size: expected a positive divisor of K = {k}, got {group_size}")
    g = k // group_size
    if w_scales.shape != (g, n):
        raise ValueError(f"w_scales: expected shape ({g}, {n}), got {tuple(w_scales.shape)}")
    if w_zeros is not None:
        w_zeros = _validate.matrix("w_zeros", w_zeros, (jnp.int32,), "[K/group_size, N/8] int32")
        if w_zeros.shape != (g, n // 8):
            raise ValueError(f"w_zeros: expected shape ({g}, {n // 8}), got {tuple(w_zeros.shape)}")
    formats.INT4_PACK_ORDERS.get(order) or formats.pack_int4(jnp.zeros(8, jnp.int32), order)  # order's error
    bias = _validate.bias_vector(bias, n)
    supported = group_size % 16 == 0 and n % 128 == 0
    which = _dispatch.resolve_impl("int4_mm", impl, m, k, n, supported=supported)
    if which == "pallas":
        _validate.multiple_of("w_packed", n, 128, "N")
        _validate.multiple_of("x", group_size, 16, "group_size")
        from quark_jax.kernels.int4_mm import pallas_triton

        return pallas_triton.int4_mm_pallas(x, w_packed, w_scales, w_zeros, bias, group_size=group_size,
                                            order=order, signed=signed, out_dtype=out_dtype)
    return int4_mm_xla(x, w_packed, w_scales, w_zeros, bias, group_size=group_size, order=order, signed=signed,
                       out_dtype=out_dtype)


__all__ = ["int4_mm", "int4_mm_xla"]
