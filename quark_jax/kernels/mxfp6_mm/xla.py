"""XLA reference for the MXFP6 weight GEMM: vLLM's OCP MX emulation (dequantize the weight to x's dtype, one
f32-accumulated dot), on the checkpoint's layout (:func:`mxfp6_mm_xla`) and on the load-time planes layout
(:func:`mxfp6_mm_planes_xla`, the codes read straight from the planes). These references materialize the
dequantized weight; the Pallas kernels never do."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax import formats
from quark_jax.quant import apply_e8m0_scale, dequantize_mx, dot_precision


def mxfp6_mm_xla(x, w_packed, w_scales, bias=None, *, element: str = "fp6_e2m3", out_dtype=None):
    """``out(linear(x, dequantize_mx(w_packed, w_scales, element) in x's dtype) + bias)``, f32 accumulation.

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 32), 0.5), "fp6_e2m3")
    >>> mxfp6_mm_xla(jnp.ones((1, 32)), w, s)[0, :2].tolist()
    [16.0, 16.0]
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    w = dequantize_mx(w_packed, w_scales, element, x.dtype)
    acc = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=dot_precision(x, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)


PLANES_CHUNK = 128  # K elements of one hi / lo chunk (``pallas_planes.CHUNK``; a test checks they agree)


def planes_codes(hi, lo):
    """The 6-bit codes uint8 [N, K] held by the planes layout (``mxfp6_repack``'s ``hi`` [N, K/2], ``lo`` [N, K/4]):
    elementwise shifts and masks, no byte-triple packing (what ``mxfp6_unrepack`` does before ``pack_fp6``).

    >>> planes_codes(jnp.full((1, 64), 0x21, jnp.uint8), jnp.full((1, 32), 0b11100100, jnp.uint8))[0, ::32].tolist()
    [4, 5, 10, 11]
    """
    n, kh = hi.shape
    k = 2 * kh
    chunks = k // PLANES_CHUNK
    # broadcast shifts (one elementwise fusion, no concatenate): quarter p's high bits are nibble p // 2 of the
    # chunk's hi bytes 32 (p % 2) + j, its low bits bits 2p, 2p + 1 of the chunk's lo byte j
    h = hi.reshape(n, chunks, 1, 64) >> jnp.asarray([0, 4], jnp.uint8)[:, None]
    nib = (h & 15).reshape(n, chunks, 4, 32)
    two = (lo.reshape(n, chunks, 1, 32) >> jnp.asarray([0, 2, 4, 6], jnp.uint8)[:, None]) & 3
    return ((nib << 2) | two).reshape(n, k).astype(jnp.uint8)


def dequantize_planes(hi, lo, scales_t, element: str = "fp6_e2m3", dtype=jnp.float32):
    """The planes layout (``hi`` [N, K/2], ``lo`` [N, K/4], ``scales_t`` [K/32, N] uint8) dequantized to ``dtype``
    [N, K]: the codes' values times ``2**(s - 127)`` in float32, rounded once to ``dtype``; bit for bit
    ``dequantize_mx(*mxfp6_unrepack(hi, lo, scales_t), element, dtype)`` (the same table and scaling, on codes
    read straight from the planes). Jittable, elementwise in XLA.

    >>> from quark_jax.kernels.mxfp6_mm.pallas_planes import repack
    >>> from quark_jax.quant import quantize_mx
    >>> w = dequantize_planes(*repack(*quantize_mx(jnp.full((2, 128), -0.75), "fp6_e3m2")), "fp6_e3m2")
    >>> w.shape, w[0, :2].tolist()
    ((2, 128), [-0.75, -0.75])
    """
    codes = planes_codes(hi, lo)
    n, k = codes.shape
    values = jnp.asarray(formats.mx_element_values_np(element))[codes.astype(jnp.int32)]
    vb = values.reshape(n, k // formats.MX_BLOCK_SIZE, formats.MX_BLOCK_SIZE)
    return apply_e8m0_scale(vb, scales_t.T[..., None]).reshape(n, k).astype(dtype)


def mxfp6_mm_planes_xla(x, hi, lo, scales_t, bias=None, *, element: str = "fp6_e2m3", out_dtype=None):
    """:func:`mxfp6_mm_xla` on the planes layout: :func:`dequantize_planes` to x's dtype (elementwise, no
    repacking to the checkpoint's byte triples), then the same f32-accumulated dot; bit for bit the reference on
    ``mxfp6_unrepack``'s bytes (the same weight, the same GEMM).

    >>> from quark_jax.kernels.mxfp6_mm.pallas_planes import repack
    >>> from quark_jax.quant import quantize_mx
    >>> mxfp6_mm_planes_xla(jnp.ones((1, 128)), *repack(*quantize_mx(jnp.full((16, 128), 0.5), "fp6_e2m3")))[0, :2]
    Array([64., 64.], dtype=float32)
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    w = dequantize_planes(hi, lo, scales_t, element, x.dtype)
    acc = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=dot_precision(x, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)
