"""FP8 with block scales (vLLM's ``QuarkW8A8Fp8PerBlock`` numerics, SPEC section 2): weights per block of
[128, 128] (float scales ``amax / 448`` or E8M0 power-of-two scales), activations per token and group of 128 along
K (vLLM's ``per_token_group_quant_fp8``)."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.quant._checks import nan_max_abs, require_float, require_rank
from quark_jax.quant.division import true_divide
from quark_jax.quant.fp8 import fp8_saturating_cast
from quark_jax.quant.rounding import exact_f32

__all__ = ["per_token_group_quant_fp8", "quantize_fp8_per_block", "expand_block_scales", "dequantize_fp8_per_block",
           "e8m0_ceil_bytes"]

_GROUP_EPS = 1e-10  # vLLM's per_token_group_quant_fp8 eps: amax is at least this


def e8m0_ceil_bytes(s_f32):
    """E8M0 byte of the smallest power of two >= ``s`` (positive finite float32): ``ceil(log2 s) + 127``, by
    integer arithmetic (vLLM's UE8M0 scales ``2**ceil(log2(s))``).

    >>> e8m0_ceil_bytes(jnp.array([1.0, 1.5, 0.25, 3.0])).tolist()
    [127, 128, 125, 129]
    """
    bits = jnp.asarray(s_f32, jnp.float32).view(jnp.uint32)
    exp = ((bits >> 23) & 0xFF).astype(jnp.int32)
    exact = (bits & 0x7FFFFF) == 0
    return jnp.clip(jnp.where(exact, exp, exp + 1), 0, formats.E8M0_MAX_BYTE).astype(jnp.uint8)


def per_token_group_quant_fp8(x, group_size: int = 128, *, e8m0_scales: bool = False, dtype=jnp.float8_e4m3fn):
    """Dynamic FP8 per token and group of ``group_size`` along K (vLLM's ``per_token_group_quant_fp8``):
    ``s = max(amax_group, 1e-10) / fp8_max`` in float32 (``e8m0_scales``: rounded up to a power of two),
    ``q = fp8(clamp(f32(x) / s))``. Returns ``(q [..., K], s [..., K / group_size] float32)``. Jittable.

    >>> q, s = per_token_group_quant_fp8(jnp.concatenate([jnp.full((4,), 4.48), jnp.zeros(4)])[None], 4)
    >>> q.astype(jnp.float32).tolist(), s.tolist()
    ([[448.0, 448.0, 448.0, 448.0, 0.0, 0.0, 0.0, 0.0]], [[0.009999999776482582, 2.2321428288629014e-13]])
    """
    require_float("x", x)
    require_rank("x", x)
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(f"x: the last (K) axis must be a multiple of the group size {group_size}, got shape "
                         f"{tuple(x.shape)}")
    xg = exact_f32(x).reshape(*x.shape[:-1], k // group_size, group_size)
    amax = jnp.maximum(nan_max_abs(xg, axis=-1, keepdims=True), _GROUP_EPS)
    s = true_divide(amax, formats.fp8_max(dtype))
    if e8m0_scales:
        s = formats.e8m0_to_float32(e8m0_ceil_bytes(s))
    q = fp8_saturating_cast(true_divide(xg, s), dtype).reshape(x.shape)
    return q, s[..., 0]


def _check_block(block) -> tuple[int, int]:
    bn, bk = (int(b) for b in block)
    if bn <= 0 or bk <= 0:
        raise ValueError(f"block: expected two positive sizes [rows, cols], got {block}")
    return bn, bk


def quantize_fp8_per_block(w, block=(128, 128), *, scale_format: str = "float"):
    """Quantize a weight [N, K] per block of ``block`` = [rows, cols] (partial edge blocks allowed).

    ``scale_format="float"``: ``s = amax / 448`` (float32); ``"e8m0"``: ``s = 2**ceil(log2(amax / 448))``, returned
    as uint8 E8M0 bytes. An all-zero block gets ``s = 1`` (byte 127). ``q = fp8(clamp(f32(w) / s))``. Returns
    ``(q float8_e4m3fn [N, K], scales [ceil(N/rows), ceil(K/cols)])``; ``w ≈ q * expand_block_scales(scales)``.

    >>> q, s = quantize_fp8_per_block(jnp.full((2, 4), 0.5), (2, 2), scale_format="e8m0")
    >>> s.tolist(), q.astype(jnp.float32)[0].tolist()
    ([[118, 118]], [256.0, 256.0, 256.0, 256.0])
    """
    require_float("w", w)
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w: expected a weight [N, K], got shape {tuple(w.shape)}")
    if scale_format not in ("float", "e8m0"):
        raise ValueError(f"scale_format: expected 'float' or 'e8m0', got {scale_format!r}")
    bn, bk = _check_block(block)
    n, k = w.shape
    nb, kb = -(-n // bn), -(-k // bk)
    wf = jnp.pad(exact_f32(w), ((0, nb * bn - n), (0, kb * bk - k)))
    amax = nan_max_abs(wf.reshape(nb, bn, kb, bk), axis=(1, 3))
    s = true_divide(amax, formats.FP8_E4M3FN_MAX)
    s = jnp.where(amax == 0, 1.0, s)
    if scale_format == "e8m0":
        scales = e8m0_ceil_bytes(s)
        s = formats.e8m0_to_float32(scales)
    else:
        scales = s
    q = fp8_saturating_cast(true_divide(w.astype(jnp.float32), expand_block_scales(s, (n, k), (bn, bk))))
    return q, scales


def expand_block_scales(scales, shape, block):
    """Block scales [ceil(N/rows), ceil(K/cols)] (float, or uint8 E8M0 bytes) -> float32 [N, K], one per element.

    >>> expand_block_scales(jnp.array([[1.0, 2.0]]), (1, 3), (1, 2)).tolist()
    [[1.0, 1.0, 2.0]]
    """
    scales = jnp.asarray(scales)
    s = formats.e8m0_to_float32(scales) if scales.dtype == jnp.uint8 else scales.astype(jnp.float32)
    bn, bk = _check_block(block)
    n, k = shape
    want = (-(-n // bn), -(-k // bk))
    if tuple(s.shape) != want:
        raise ValueError(f"scales: expected shape {list(want)} for a weight {list(shape)} in blocks {[bn, bk]}, got "
                         f"{list(s.shape)}")
    return jnp.repeat(jnp.repeat(s, bn, axis=0), bk, axis=1)[:n, :k]


def dequantize_fp8_per_block(q, scales, block=(128, 128), dtype=jnp.float32):
    """``f32(q) * expanded scales`` as ``dtype`` [N, K] (exact in float32 for power-of-two scales).

    >>> dequantize_fp8_per_block(jnp.full((1, 3), 2.0, jnp.float8_e4m3fn), jnp.array([[1.0, 0.5]]), (1, 2)).tolist()
    [[2.0, 2.0, 1.0]]
    """
    q = jnp.asarray(q)
    return (q.astype(jnp.float32) * expand_block_scales(scales, q.shape, block)).astype(dtype)
