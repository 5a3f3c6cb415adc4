"""MXFP4 (OCP MX, E2M1 elements + E8M0 block scales, block 32 along K): quantize, dequantize, quant-dequant.

Exact to vLLM's emulation and to the bytes Quark exports (SPEC sections 1-2).
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.quant.rounding import exact_f32
from quark_jax.quant._checks import require_float, require_multiple, require_rank

__all__ = ["mxfp4_block_scale_bytes", "quantize_mxfp4", "dequantize_mxfp4", "qdq_mxfp4", "round_to_e2m1",
           "apply_e8m0_scale"]

_F32_MANTISSA_BITS = 23
_E2M1_MANTISSA_BITS = 1
# "even" rounding of the block amax: add half of the dropped range, keep only sign+exponent
_EVEN_ROUND_ADD = 1 << (_F32_MANTISSA_BITS - _E2M1_MANTISSA_BITS - 1)
_EXPONENT_MASK = 0x7F800000
_E2M1_EMAX = 2  # floor(log2(6))


def _blocks(name: str, x):
    require_float(name, x)
    require_rank(name, x)
    k = x.shape[-1]
    require_multiple(name, k, formats.MX_BLOCK_SIZE, f"the last (K) axis of shape {tuple(x.shape)}")
    return exact_f32(x).reshape(*x.shape[:-1], k // formats.MX_BLOCK_SIZE, formats.MX_BLOCK_SIZE)


def mxfp4_block_scale_bytes(xb_f32):
    """E8M0 scale byte (uint8) of each block of ``xb_f32`` [..., nblocks, 32], by integer arithmetic.

    ``amax`` is rounded "even" (its float32 bit pattern plus 1<<21, mantissa cleared: amax >= 1.75*2^e becomes
    2^(e+1)), then ``byte = clamp(biased_exponent(amax') - 2, 0, 254)``. A zero block gives byte 0.
    """
    amax = jnp.max(jnp.abs(xb_f32), axis=-1)
    bits = amax.view(jnp.uint32)
    rounded = (bits + jnp.uint32(_EVEN_ROUND_ADD)) & jnp.uint32(_EXPONENT_MASK)
    biased = (rounded >> _F32_MANTISSA_BITS).astype(jnp.int32) - _E2M1_EMAX
    return jnp.clip(biased, 0, formats.E8M0_MAX_BYTE).astype(jnp.uint8)


def _inverse_scale(sbytes):
    """Exact float32 ``2**(127 - s)`` for scale bytes s (a normal number for s <= 253, unlike 2**-127 itself).

    Multiplying by it equals dividing by the scale (both powers of two) and stays right on backends that flush
    subnormals to zero, where ``x / 2**-127`` would be ``0 / 0`` for an all-zero block.
    """
    field = jnp.clip(254 - sbytes.astype(jnp.int32), 0, 254).astype(jnp.uint32)
    return (field << 23).view(jnp.float32)


def apply_e8m0_scale(values_f32, scale_bytes):
    """``values * 2**(s - 127)`` in float32, exact wherever the result is a normal float32.

    Byte 0 (2**-127) is a float32 subnormal, which backends that flush subnormals treat as zero even where the
    product is normal (6 * 2**-127); it is applied as 2**-126 then a halving, both normal operands.

    >>> apply_e8m0_scale(jnp.array([1.5, 6.0]), jnp.array([128, 0], jnp.uint8)).tolist() == [3.0, 6.0 * 2.0**-127]
    True
    """
    out = values_f32 * formats.e8m0_to_float32(jnp.maximum(scale_bytes, 1))
    return jnp.where(scale_bytes == 0, out * 0.5, out)


def round_to_e2m1(v_f32):
    """Round float32 values to the E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6} (half to even), saturating at ±6.

    The sign is kept (so small negatives give -0.0). Ties: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4.
    """
    a = jnp.minimum(jnp.abs(v_f32), formats.E2M1_MAX)
    r = jnp.where(a < 2.0, jnp.round(a * 2.0) * 0.5, jnp.where(a < 4.0, jnp.round(a), jnp.round(a * 0.5) * 2.0))
    return jnp.copysign(jnp.minimum(r, formats.E2M1_MAX), v_f32)


def _e2m1_code(r_f32):
    """4-bit code of an E2M1 grid value; zero (either sign) is written as +0 (code 0), like Quark's exporter."""
    a = jnp.abs(r_f32)
    mag = jnp.where(a < 2.0, a * 2.0, jnp.where(a < 4.0, a + 2.0, a * 0.5 + 4.0)).astype(jnp.uint8)
    sign = jnp.where((r_f32 < 0) & (mag != 0), jnp.uint8(8), jnp.uint8(0))
    return mag | sign


def quantize_mxfp4(x):
    """Quantize ``x`` [..., K] (float, K a multiple of 32) to MXFP4.

    Returns ``(packed, scales)``: ``packed`` uint8 [..., K/2] (element 2j in the low nibble), ``scales`` uint8
    [..., K/32] (E8M0 bytes). Reproduces Quark's exported weight and scale bytes from the float weight. Jittable.

    Non-finite input (not compared with Quark's exporter, which is not given such weights): a block holding NaN
    or ±inf gets scale byte 253 (the amax's exponent field is all ones); a NaN element is written as code 0 (+0),
    ±inf as ±6, the block's finite elements as ±0. :func:`quark_jax.validate_checkpoint` reports non-finite
    float weights.

    >>> import jax.numpy as jnp
    >>> p, s = quantize_mxfp4(jnp.concatenate([jnp.array([0.5, 1.0, 6.0, -6.0]), jnp.zeros(28)]))
    >>> p[:2].tolist(), s.tolist()
    ([33, 247], [127])
    """
    xb = _blocks("x", x)
    sbytes = mxfp4_block_scale_bytes(xb)
    codes = _e2m1_code(round_to_e2m1(xb * _inverse_scale(sbytes)[..., None]))
    codes = codes.reshape(*x.shape[:-1], x.shape[-1])
    return formats.pack_nibbles(codes), sbytes


def dequantize_mxfp4(packed, scales, dtype=jnp.float32):
    """Dequantize MXFP4 ``packed`` uint8 [..., K/2] with E8M0 ``scales`` uint8 [..., K/32] to ``dtype`` [..., K].

    ``w[..., 2j] = e2m1(lo(byte j)) * 2**(s - 127)``, ``w[..., 2j+1] = e2m1(hi(byte j)) * 2**(s - 127)``, computed
    exactly in float32 and rounded once to ``dtype``. Jittable. Scale byte 255 (NaN in OCP MX) is not given a
    meaning here (it gives inf, or NaN for a zero element); the loaders reject it (:mod:`quark_jax.value_checks`).

    >>> import jax.numpy as jnp
    >>> b = jnp.concatenate([jnp.array([0x21, 0xF7, 0x98, 0x5C], jnp.uint8), jnp.zeros(12, jnp.uint8)])
    >>> dequantize_mxfp4(b, jnp.array([127], jnp.uint8))[:8].tolist()
    [0.5, 1.0, 6.0, -6.0, -0.0, -0.5, -2.0, 3.0]
    """
    packed = jnp.asarray(packed)
    scales = jnp.asarray(scales)
    if packed.dtype != jnp.uint8:
        raise TypeError(f"packed: expected uint8 [..., K/2] (two E2M1 codes a byte), got dtype {packed.dtype}")
    if scales.dtype != jnp.uint8:
        raise TypeError(f"scales: expected uint8 E8M0 bytes [..., K/32], got dtype {scales.dtype}")
    k = packed.shape[-1] * 2
    expected = (*packed.shape[:-1], k // formats.MX_BLOCK_SIZE)
    require_multiple("packed", k, formats.MX_BLOCK_SIZE, f"K = 2 * last axis of shape {packed.shape}")
    if tuple(scales.shape) != expected:
        raise ValueError(f"scales: expected shape {expected} for packed of shape {tuple(packed.shape)}, "
                         f"got {tuple(scales.shape)}")
    table = jnp.asarray(formats.e2m1_values_np())
    values = table[formats.unpack_nibbles(packed).astype(jnp.int32)]
    values = values.reshape(*packed.shape[:-1], k // formats.MX_BLOCK_SIZE, formats.MX_BLOCK_SIZE)
    out = apply_e8m0_scale(values, scales[..., None])
    return out.reshape(*packed.shape[:-1], k).astype(dtype)


def qdq_mxfp4(x):
    """MXFP4 quantize-dequantize of activations ``x`` [..., K] (vLLM-exact emulation); same shape and dtype as x.

    Per block of 32: E8M0 scale from the "even"-rounded amax, elements rounded to E2M1 (saturating), times the
    scale. Keeps the sign of zero. Zero blocks give zeros. Jittable.

    Non-finite input (ours; not compared with vLLM's torch emulation): a block holding NaN or ±inf gets the scale
    2**126 (byte 253), so its finite elements become ±0 while NaN stays NaN and ±inf stays ±inf (6 * 2**126
    overflows float32).

    >>> import jax.numpy as jnp
    >>> x = jnp.concatenate([jnp.array([0.25, 0.75, 1.25, 1.75, 5.0]), jnp.zeros(27)])
    >>> qdq_mxfp4(x)[:5].tolist()
    [0.0, 1.0, 1.0, 2.0, 4.0]
    """
    xb = _blocks("x", x)
    sbytes = mxfp4_block_scale_bytes(xb)[..., None]
    q = round_to_e2m1(xb * _inverse_scale(sbytes))
    return apply_e8m0_scale(q, sbytes).reshape(x.shape).astype(x.dtype)
