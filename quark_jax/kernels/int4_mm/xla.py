"""XLA reference for the W4A16 INT4 / UINT4 group GEMM: vLLM's emulation (dequantize the weight to x's dtype,
f32-accumulated dot). This reference materializes the dequantized weight; the Pallas kernel never does."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax.quant import dequantize_int4, dequantize_int4_nk, dot_precision


def int4_mm_xla(x, w_packed, w_scales, w_zeros=None, bias=None, *, group_size: int, order: str = "reorder",
                signed: bool = True, out_dtype=None):
    """``out(linear(x, dequantize_int4(w_packed, w_scales, w_zeros) in x's dtype) + bias)``, f32 accumulation.

    >>> from quark_jax import formats
    >>> w = formats.pack_int4(jnp.ones((8, 8), jnp.int32), "order")          # K = 8, N = 8, every q = 1
    >>> int4_mm_xla(jnp.ones((1, 8)), w, jnp.full((1, 8), 0.5), group_size=8, order="order")[0, :2].tolist()
    [4.0, 4.0]
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    w = dequantize_int4(w_packed, w_scales, w_zeros, group_size=group_size, order=order, signed=signed,
                        dtype=x.dtype)
    acc = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=dot_precision(x, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)


def int4_mm_nk_xla(x, w_nk, w_scales, w_zeros=None, bias=None, *, group_size: int, signed: bool = True,
                   out_dtype=None):
    """:func:`int4_mm_xla` on the repacked layout (``int4_repack``: uint8 [N, K/2], zero points int8 [G, N]):
    the same dequantized weight (``quant.dequantize_int4_nk``), so the same result bit for bit.

    >>> w = jnp.full((8, 4), 0x99, jnp.uint8)                                 # N = 8, K = 8, every q = 1
    >>> int4_mm_nk_xla(jnp.ones((1, 8)), w, jnp.full((1, 8), 0.5), group_size=8)[0, :2].tolist()
    [4.0, 4.0]
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    w = dequantize_int4_nk(w_nk, w_scales, w_zeros, group_size=group_size, signed=signed, dtype=x.dtype)
    acc = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=dot_precision(x, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)
