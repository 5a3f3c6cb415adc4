"""W4A16 INT4 / UINT4 per-group GEMM (``QuarkW4A16Int4``): XLA reference and Pallas (Triton) kernels.

Two weight layouts, one GEMM: :func:`int4_mm_nk` takes the load-time repacked layout the scheme stores
(:func:`int4_repack`: uint8 [N, K/2], int8 zero points [G, N]; ``impl="pallas"`` is ``pallas_nk``'s decode
kernel, the default at decode on sm80+), :func:`int4_mm` Quark's checkpoint layout (int32 [K, N/8];
``pallas_triton``'s older kernel, ~2x slower at decode on the H200: kept for the benchmarks and callers holding
the checkpoint layout). Both resolve ``impl="auto"`` as the op ``"int4_mm"``.
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.int4_mm.xla import int4_mm_nk_xla, int4_mm_xla

ACT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def _groups(k: int, n: int, group_size: int, w_scales, *, even: bool = False) -> int:
    """G = K / group_size, after checking group_size (a positive divisor of K; even for the repacked layout)
    and that ``w_scales`` is [G, N]."""
    if group_size <= 0 or (even and group_size % 2) or k % group_size:
        raise ValueError(f"group_size: expected {'an even' if even else 'a'} positive divisor of K = {k}, "
                         f"got {group_size}")
    g = k // group_size
    if w_scales.shape != (g, n):
        raise ValueError(f"w_scales: expected shape ({g}, {n}), got {tuple(w_scales.shape)}")
    return g


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
    g = _groups(k, n, group_size, w_scales)
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


def int4_repack(w_packed, w_zeros=None, *, group_size: int, order: str = "reorder", signed: bool = True):
    """Quark's int32 [K, N/8] weight (and int32 [G, N/8] zero points) -> the repacked ``(uint8 [N, K/2], int8
    [G, N] or None)`` that :func:`int4_mm_nk` takes (``pallas_nk.repack``; jitted, pure). Scales need no repack.

    >>> w = formats.pack_int4(jnp.arange(-8, 8).reshape(2, 8), "order")      # K = 2, N = 8
    >>> [hex(int(b)) for b in int4_repack(w, group_size=2, order="order")[0][:3, 0]]   # q + 8 a nibble
    ['0x80', '0x91', '0xa2']
    """
    from quark_jax.kernels.int4_mm import pallas_nk

    return pallas_nk.repack(w_packed, w_zeros, group_size=group_size, order=order, signed=signed)


def int4_unrepack(w_nk, w_zeros=None, *, group_size: int, order: str = "reorder", signed: bool = True):
    """The exact inverse of :func:`int4_repack`: ``(int32 [K, N/8], int32 [G, N/8] or None)`` in Quark's layout.

    >>> w = formats.pack_int4(jnp.arange(-8, 8).reshape(2, 8), "reorder")
    >>> bool((int4_unrepack(*int4_repack(w, group_size=2), group_size=2)[0] == w).all())
    True
    """
    from quark_jax.kernels.int4_mm import pallas_nk

    return pallas_nk.unrepack(w_nk, w_zeros, group_size=group_size, order=order, signed=signed)


def int4_mm_nk(x, w_nk, w_scales, w_zeros=None, bias=None, *, group_size: int, signed: bool = True,
               out_dtype=None, impl="auto"):
    """``y = linear(x, (q - z) * s, bias)`` from the repacked layout (:func:`int4_repack`): what
    :func:`int4_mm` computes on the checkpoint layout.

    Args:
      x: [M, K] bf16/f16/f32 activations.
      w_nk: uint8 [N, K/2] (``int4_repack``'s weight). w_scales: f32 [K/group_size, N].
      w_zeros: int8 [K/group_size, N] (uint4; ``int4_repack``'s zero points) or None (symmetric int4).
      bias: optional [N], added in f32. group_size: K elements per scale (even). signed: int4 or uint4.
      out_dtype: default x.dtype. impl: "auto", "pallas" (``pallas_nk``'s kernel, its tuned ``DEFAULTS``: the
        zero point and offset subtracted from the decoded weight) or "xla" (:func:`int4_mm_nk_xla`).

    ``auto`` resolves the op ``"int4_mm"`` (``tuning.choose_impl``: the kernel at decode on sm80+) and takes XLA
    where the kernel does not take the shape (``pallas_nk.supports``: N % 16, a power-of-two group in 32..512).

    >>> w = jnp.full((16, 16), 0x99, jnp.uint8)                               # N = 16, K = 32, every q = 1
    >>> int4_mm_nk(jnp.ones((1, 32)), w, jnp.full((1, 16), 0.5), group_size=32, impl="xla")[0, :2].tolist()
    [16.0, 16.0]
    """
    x = _validate.matrix("x", x, ACT_DTYPES, "[M, K] bf16/f16/f32")
    w_nk = _validate.matrix("w_nk", w_nk, (jnp.uint8,), "[N, K/2] uint8 (int4_repack's layout)")
    w_scales = _validate.matrix("w_scales", w_scales, (jnp.float32,), "[K/group_size, N] float32")
    m, k = x.shape
    n = w_nk.shape[0]
    _validate.multiple_of("x", k, 2, "K")  # two int4 codes per byte
    _validate.packed_shape("w_nk", w_nk, (n, k // 2), k)
    g = _groups(k, n, group_size, w_scales, even=True)
    if w_zeros is not None:
        w_zeros = _validate.matrix("w_zeros", w_zeros, (jnp.int8,), "[K/group_size, N] int8 (unpacked)")
        if w_zeros.shape != (g, n):
            raise ValueError(f"w_zeros: expected shape ({g}, {n}), got {tuple(w_zeros.shape)}")
    bias = _validate.bias_vector(bias, n)
    from quark_jax.kernels.int4_mm import pallas_nk

    which = _dispatch.resolve_impl("int4_mm", impl, m, k, n, supported=pallas_nk.supports(k, n, group_size))
    if which == "pallas":
        return pallas_nk.int4_mm_nk_pallas(x, w_nk, w_scales, w_zeros, bias, group_size=group_size, signed=signed,
                                           out_dtype=out_dtype)
    return int4_mm_nk_xla(x, w_nk, w_scales, w_zeros, bias, group_size=group_size, signed=signed,
                          out_dtype=out_dtype)


__all__ = ["int4_mm", "int4_mm_xla", "int4_mm_nk", "int4_mm_nk_xla", "int4_repack", "int4_unrepack"]
