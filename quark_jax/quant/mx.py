"""OCP MX quantizers for every element format (fp4, fp6_e2m3, fp6_e3m2, fp8_e4m3; E8M0 scales, block 32 along K):
quantize to the bytes a checkpoint stores, dequantize them, quantize-dequantize activations (SPEC section 2).

The scale rule is Quark's "even" mode (vLLM's emulation calls Quark for it): the block amax is rounded with the
element's mantissa width (``bits(amax) + (1 << (22 - mbits))``, mantissa cleared), then
``scale = 2**clamp(floor(log2(amax')) - emax, -127, 127)``. Elements are ``x / scale`` rounded half to even onto
the element's grid (subnormals included) and saturated at its max. For ``fp4`` this is :mod:`quark_jax.quant.mxfp4`
exactly.
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.quant._checks import require_multiple
from quark_jax.quant.fp8 import fp8_saturating_cast
from quark_jax.quant.mxfp4 import _blocks, apply_e8m0_scale  # _blocks: checked [..., K/32, 32] float32 blocks

__all__ = ["mx_block_scale_bytes", "round_to_mx_element", "quantize_mx", "dequantize_mx", "qdq_mx",
           "mx_packed_width"]

_EXPONENT_MASK = 0x7F800000


def mx_block_scale_bytes(xb_f32, element: str):
    """E8M0 scale byte (uint8) of each block of ``xb_f32`` [..., nblocks, 32] for the MX ``element`` format.

    >>> import jax.numpy as jnp
    >>> mx_block_scale_bytes(jnp.full((1, 32), 7.7), "fp6_e2m3").tolist(), mx_block_scale_bytes(jnp.full((1, 32),
    ...     7.75), "fp6_e2m3").tolist()
    ([127], [128])
    """
    e = formats.mx_element(element)
    amax = jnp.max(jnp.abs(xb_f32), axis=-1)
    bits = amax.view(jnp.uint32)
    rounded = (bits + jnp.uint32(1 << (22 - e.mbits))) & jnp.uint32(_EXPONENT_MASK)
    biased = (rounded >> 23).astype(jnp.int32) - e.emax
    return jnp.clip(biased, 0, formats.E8M0_MAX_BYTE).astype(jnp.uint8)


def _pow2(exponent_i32):
    """Exact float32 ``2**e`` for integer e in [-126, 127]."""
    return ((exponent_i32 + 127).astype(jnp.uint32) << 23).view(jnp.float32)


def round_to_mx_element(v_f32, element: str):
    """Round float32 values onto the ``element`` grid (half to even, subnormals, saturating at ±max; the sign is
    kept, so small negatives give -0.0).

    >>> import jax.numpy as jnp
    >>> round_to_mx_element(jnp.array([0.0625, 0.1875, 7.7, 26.0, 30.0, -0.01]), "fp6_e2m3").tolist()
    [0.0, 0.25, 7.5, 7.5, 7.5, -0.0]
    >>> round_to_mx_element(jnp.array([0.03125, 0.09375, 26.0, 30.0]), "fp6_e3m2").tolist()
    [0.0, 0.125, 24.0, 28.0]
    """
    e = formats.mx_element(element)
    a = jnp.minimum(jnp.abs(v_f32), e.max)
    exp = ((a.view(jnp.uint32) >> 23).astype(jnp.int32) & 0xFF) - 127
    step_exp = jnp.maximum(exp, e.emin) - e.mbits
    r = jnp.round(a * _pow2(-step_exp)) * _pow2(step_exp)
    return jnp.copysign(jnp.minimum(r, e.max), v_f32)


def _codes(r_f32, e: formats.MXElement):
    """Sign-magnitude code of a grid value (4 or 6 bits); zero of either sign is written as +0 (code 0)."""
    a = jnp.abs(r_f32)
    exp = ((a.view(jnp.uint32) >> 23).astype(jnp.int32) & 0xFF) - 127
    e_blk = jnp.maximum(exp, e.emin)
    q = (a * _pow2(e.mbits - e_blk)).astype(jnp.int32)  # integer in [0, 2**(mbits + 1))
    mag = ((e_blk - e.emin) << e.mbits) + q
    mag = jnp.where(a == 0, 0, mag)
    sign = jnp.where((r_f32 < 0) & (mag != 0), 1 << (e.bits - 1), 0)
    return (mag | sign).astype(jnp.uint8)


def mx_packed_width(k: int, element: str) -> int:
    """Stored width of K elements: K/2 bytes (fp4), 3K/4 bytes (fp6), K (fp8).

    >>> [mx_packed_width(64, d) for d in ("fp4", "fp6_e2m3", "fp8_e4m3")]
    [32, 48, 64]
    """
    bits = formats.mx_element(element).bits
    return k * bits // 8


def _inverse_scale(sbytes):
    field = jnp.clip(254 - sbytes.astype(jnp.int32), 0, 254).astype(jnp.uint32)
    return (field << 23).view(jnp.float32)


def quantize_mx(x, element: str):
    """Quantize ``x`` [..., K] (K a multiple of 32) to MX ``element``; returns ``(q, scales)``.

    ``q``: fp4 uint8 [..., K/2] (two codes a byte, low nibble first), fp6 uint8 [..., 3K/4] (:func:`quark_jax.
    formats.pack_fp6`), fp8_e4m3 float8_e4m3fn [..., K]; ``scales`` uint8 [..., K/32] (E8M0 bytes). Jittable.

    >>> import jax.numpy as jnp
    >>> q, s = quantize_mx(jnp.concatenate([jnp.array([0.125, 1.0, 7.5, -7.5]), jnp.zeros(28)]), "fp6_e2m3")
    >>> q[:3].tolist(), s.tolist()
    ([1, 242, 253], [127])
    """
    e = formats.mx_element(element)
    xb = _blocks("x", x)
    sbytes = mx_block_scale_bytes(xb, element)
    v = xb * _inverse_scale(sbytes)[..., None]
    if e.name == "fp8_e4m3":
        q = fp8_saturating_cast(v).reshape(x.shape)
        return q, sbytes
    codes = _codes(round_to_mx_element(v, element), e).reshape(x.shape)
    packed = formats.pack_nibbles(codes) if e.bits == 4 else formats.pack_fp6(codes)
    return packed, sbytes


def dequantize_mx(q, scales, element: str, dtype=jnp.float32):
    """Dequantize what :func:`quantize_mx` returns (or a checkpoint stores) to ``dtype`` [..., K]: each element's
    value times ``2**(s - 127)`` of its block, exact in float32, rounded once to ``dtype``. Jittable.

    >>> import jax.numpy as jnp
    >>> w = dequantize_mx(jnp.concatenate([jnp.array([1, 242, 253], jnp.uint8), jnp.zeros(21, jnp.uint8)]),
    ...                   jnp.array([128], jnp.uint8), "fp6_e2m3")
    >>> w[:4].tolist()
    [0.25, 2.0, 15.0, -15.0]
    """
    e = formats.mx_element(element)
    q, scales = jnp.asarray(q), jnp.asarray(scales)
    if scales.dtype != jnp.uint8:
        raise TypeError(f"scales: expected uint8 E8M0 bytes [..., K/32], got dtype {scales.dtype}")
    if e.name == "fp8_e4m3":
        if q.dtype != jnp.float8_e4m3fn:
            raise TypeError(f"q: expected float8_e4m3fn elements for MXFP8, got dtype {q.dtype}")
        values = q.astype(jnp.float32)
    else:
        if q.dtype != jnp.uint8:
            raise TypeError(f"q: expected packed uint8 {element} codes, got dtype {q.dtype}")
        codes = formats.unpack_nibbles(q) if e.bits == 4 else formats.unpack_fp6(q)
        values = jnp.asarray(formats.mx_element_values_np(element))[codes.astype(jnp.int32)]
    k = values.shape[-1]
    require_multiple("q", k, formats.MX_BLOCK_SIZE, f"K (the unpacked last axis, from shape {tuple(q.shape)})")
    expected = (*values.shape[:-1], k // formats.MX_BLOCK_SIZE)
    if tuple(scales.shape) != expected:
        raise ValueError(f"scales: expected shape {expected} for {element} q of shape {tuple(q.shape)}, "
                         f"got {tuple(scales.shape)}")
    vb = values.reshape(*expected, formats.MX_BLOCK_SIZE)
    return apply_e8m0_scale(vb, scales[..., None]).reshape(*values.shape).astype(dtype)


def qdq_mx(x, element: str):
    """MX quantize-dequantize of activations ``x`` [..., K] (vLLM's emulation: Quark's "even" scale, elements
    rounded to the grid); same shape and dtype; keeps the sign of zero. Jittable.

    >>> import jax.numpy as jnp
    >>> qdq_mx(jnp.concatenate([jnp.array([0.0625, 0.1875, 7.7, 3.3]), jnp.zeros(28)]), "fp6_e2m3")[:4].tolist()
    [0.0, 0.25, 7.5, 3.25]
    """
    e = formats.mx_element(element)
    xb = _blocks("x", x)
    sbytes = mx_block_scale_bytes(xb, element)[..., None]
    v = xb * _inverse_scale(sbytes)
    if e.name == "fp8_e4m3":
        r = fp8_saturating_cast(v).astype(jnp.float32)
    else:
        r = round_to_mx_element(v, element)
    return apply_e8m0_scale(r, sbytes).reshape(x.shape).astype(x.dtype)
