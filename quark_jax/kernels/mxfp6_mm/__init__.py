"""MXFP6 (e2m3 / e3m2) weight GEMM from the packed weight (``QuarkOCP_MX`` with fp6 weights): XLA reference and
Pallas (Triton) kernels. The activation is used as given (the scheme quantize-dequantizes an MX input first).

Two weight layouts, one GEMM: :func:`mxfp6_mm` takes the checkpoint's (uint8 [N, 3K/4], four codes in three bytes;
``pallas_triton``'s kernel), :func:`mxfp6_mm_planes` the load-time repacked one (:func:`mxfp6_repack`: a 4-bit and a
2-bit plane plus the scales transposed, still 6.25 bits a weight; ``pallas_planes``' decode kernel, 2.2-2.9x the
checkpoint-layout kernel at M = 1 on the H200). Both resolve ``impl="auto"`` as the op ``"mxfp6_mm"``.
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.mxfp6_mm.xla import (PLANES_CHUNK, dequantize_planes, mxfp6_mm_planes_xla, mxfp6_mm_xla,
                                           planes_codes)

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


def mxfp6_repack(w_packed, w_scales):
    """The checkpoint's ``(uint8 [N, 3K/4], uint8 [N, K/32])`` -> ``(hi uint8 [N, K/2], lo uint8 [N, K/4], scales
    uint8 [K/32, N])`` that :func:`mxfp6_mm_planes` takes (``pallas_planes.repack``; jitted, pure; K % 128 == 0).

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 128), 0.5), "fp6_e2m3")
    >>> [a.shape for a in mxfp6_repack(w, s)]
    [(16, 64), (16, 32), (4, 16)]
    """
    from quark_jax.kernels.mxfp6_mm import pallas_planes

    w_packed = _validate.matrix("w_packed", w_packed, (jnp.uint8,), "[N, 3K/4] uint8 (FP6)")
    if (w_packed.shape[1] * 4 // 3) % pallas_planes.CHUNK:
        raise ValueError(f"w_packed: K = {w_packed.shape[1] * 4 // 3} must be a multiple of {pallas_planes.CHUNK}")
    return pallas_planes.repack(w_packed, w_scales)


def mxfp6_unrepack(hi, lo, scales_t):
    """The exact inverse of :func:`mxfp6_repack`: the checkpoint's ``(uint8 [N, 3K/4], uint8 [N, K/32])``.

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.arange(256.0).reshape(2, 128) / 64, "fp6_e3m2")
    >>> w2, s2 = mxfp6_unrepack(*mxfp6_repack(w, s)); bool((w2 == w).all() & (s2 == s).all())
    True
    """
    from quark_jax.kernels.mxfp6_mm import pallas_planes

    return pallas_planes.unrepack(hi, lo, scales_t)


def mxfp6_mm_planes(x, hi, lo, scales_t, bias=None, *, element: str = "fp6_e2m3", out_dtype=None, impl="auto"):
    """:func:`mxfp6_mm` on the repacked layout (:func:`mxfp6_repack`): the same result up to the f32 summation
    order (the kernel's weight equals the reference's dequantized weight bit for bit).

    Args:
      x: [M, K] bf16/f16/f32, K a multiple of 128.
      hi, lo, scales_t: ``mxfp6_repack``'s uint8 [N, K/2], [N, K/4], [K/32, N].
      bias: optional [N], added in f32. element: "fp6_e2m3" or "fp6_e3m2". out_dtype: default x.dtype.
      impl: "auto" (the op ``"mxfp6_mm"``'s choice: the kernel at decode on sm80+), "pallas" (``pallas_planes``,
        its measured ``DEFAULTS``; the PTX decode for bf16 x) or "xla" (:func:`mxfp6_mm_planes_xla`: the planes
        dequantized elementwise in XLA, then one GEMM; bit for bit the reference on ``mxfp6_unrepack``'s bytes).

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 128), 0.5), "fp6_e3m2")
    >>> mxfp6_mm_planes(jnp.ones((1, 128)), *mxfp6_repack(w, s), element="fp6_e3m2", impl="xla")[0, :2].tolist()
    [64.0, 64.0]
    """
    from quark_jax.kernels.mxfp6_mm import pallas_planes

    if element not in ELEMENTS:
        raise ValueError(f"element: expected one of {ELEMENTS}, got {element!r}")
    x = _validate.matrix("x", x, ACT_DTYPES, "[M, K] bf16/f16/f32")
    hi = _validate.matrix("hi", hi, (jnp.uint8,), "[N, K/2] uint8 (mxfp6_repack's 4-bit plane)")
    m, k = x.shape
    n = hi.shape[0]
    _validate.multiple_of("x", k, pallas_planes.CHUNK, "K")
    _validate.packed_shape("hi", hi, (n, k // 2), k)
    lo = _validate.matrix("lo", lo, (jnp.uint8,), "[N, K/4] uint8 (mxfp6_repack's 2-bit plane)")
    _validate.packed_shape("lo", lo, (n, k // 4), k)
    scales_t = _validate.matrix("scales_t", scales_t, (jnp.uint8,), "[K/32, N] uint8 (E8M0, transposed)")
    if scales_t.shape != (k // formats.MX_BLOCK_SIZE, n):
        raise ValueError(f"scales_t: expected shape ({k // formats.MX_BLOCK_SIZE}, {n}), got {tuple(scales_t.shape)}")
    bias = _validate.bias_vector(bias, n)
    which = _dispatch.resolve_impl("mxfp6_mm", impl, m, k, n, supported=pallas_planes.supports(k, n))
    if which == "pallas":
        return pallas_planes.mxfp6_mm_planes(x, hi, lo, scales_t, bias, element=element, out_dtype=out_dtype)
    return mxfp6_mm_planes_xla(x, hi, lo, scales_t, bias, element=element, out_dtype=out_dtype)


__all__ = ["mxfp6_mm", "mxfp6_mm_xla", "mxfp6_mm_planes", "mxfp6_mm_planes_xla", "mxfp6_repack", "mxfp6_unrepack",
           "dequantize_planes", "planes_codes", "PLANES_CHUNK"]
