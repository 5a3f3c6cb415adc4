"""Decoding packed MXFP4 weight tiles inside a kernel (the weight is never dequantized in HBM).

A packed tile is uint8 ``[bn, bkh]`` (``bkh`` = half the K tile; byte j holds element 2j in the low nibble and
2j+1 in the high nibble) with E8M0 scale bytes ``[bn, bkh // 16]`` (one per 32 elements = 16 bytes). The decoders
return the two nibble planes separately, ``lo`` (even K elements) and ``hi`` (odd K elements), each ``[bn, bkh]``:
the kernel multiplies them with the even and odd columns of x, so nothing is ever interleaved.

Every value is exact: an E2M1 value times ``2**(s - 127)`` has at most two significant bits, so it is exact in
bf16, f16 (up to range) and f32; the only roundings are the ones ``quant.dequantize_mxfp4`` makes too (overflow
to inf at the top scale bytes, and flushing of float32 subnormals where a backend flushes them).

Two implementations:

* ``decode_jnp``: integer and float jnp ops on normal numbers only (runs in interpret mode and on any backend).
* ``decode_asm``: PTX on packed 32-bit registers (2 bytes -> 4 bf16 in ~9 integer ops and 2 ``mul.bf16x2``),
  NVIDIA sm_90+ only; ``ptx_decode_emulated`` is a numpy model of exactly those instructions, used by the tests.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from quark_jax.quant import apply_e8m0_scale

MX_BYTES = 16  # packed bytes per 32-element MX block
_HALF_BITS = 0x3F000000  # float32 0.5
_BF16_2_POW_126 = 0x7E80  # bf16 2**126


def e2m1_to_f32(codes):
    """float32 value of 4-bit E2M1 codes (int32 array, 0..15) using normal numbers only.

    Magnitude codes 2..7 are ``2**(e-1) * (1 + m/2)`` = bit pattern ``(mag << 22) + bits(0.5)``; code 1 is 0.5 and
    0 is 0; bit 3 is the sign.

    >>> e2m1_to_f32(jnp.arange(16, dtype=jnp.int32)).tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    """
    mag = codes & 7
    bits = jnp.where(mag >= 2, (mag << 22) + _HALF_BITS, jnp.where(mag == 1, _HALF_BITS, 0))
    bits = bits | ((codes & 8) << 28)
    return lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.float32)


def scale_bf16(sbytes):
    """bf16 ``2**(s - 127)`` of E8M0 bytes: bit pattern ``s << 7``, and 0x0040 (the subnormal 2**-127) for s = 0.

    >>> scale_bf16(jnp.array([127, 128, 0], jnp.uint8)).astype(jnp.float32).tolist()[:2]
    [1.0, 2.0]
    """
    bits = jnp.maximum(sbytes.astype(jnp.int32) << 7, 0x40)
    return lax.bitcast_convert_type(bits.astype(jnp.uint16), jnp.bfloat16)


FOLD_MAX_SCALE_BYTE = 128  # the folded scale 2**(s - 1) is a finite bf16 only up to here


def scale_bf16_folded(sbytes):
    """bf16 ``2**(s - 1)`` = ``2**126 * 2**(s - 127)``: the E8M0 scale with the PTX decode's ``2**126`` folded in
    (one multiply per element instead of two). Bit pattern ``(s + 126) << 7``; exact only for scale bytes
    ``s <= FOLD_MAX_SCALE_BYTE`` (above it 2**(s - 1) overflows bf16: the caller must check the weight's scales,
    e.g. once at load time).

    >>> scale_bf16_folded(jnp.array([0, 1, 2], jnp.uint8)).astype(jnp.float32).tolist()
    [0.5, 1.0, 2.0]
    """
    bits = (jnp.minimum(sbytes.astype(jnp.int32), FOLD_MAX_SCALE_BYTE) + 126) << 7
    return lax.bitcast_convert_type(bits.astype(jnp.uint16), jnp.bfloat16)


def _per_block(values, per_block, op):
    """``op(values viewed as [bn, nb, 16], per_block[:, :, None])`` reshaped back to ``[bn, bkh]``."""
    bn, bkh = values.shape
    nb = bkh // MX_BYTES
    out = op(values.reshape(bn, nb, MX_BYTES), per_block.reshape(bn, nb, 1))
    return out.reshape(bn, bkh)


def decode_jnp(packed, sbytes, dtype):
    """Portable decode: ``(lo, hi)`` in ``dtype`` from packed uint8 ``[bn, bkh]`` and scale bytes ``[bn, bkh/16]``.

    >>> p = jnp.full((16, 16), 0x72, jnp.uint8); s = jnp.full((16, 1), 126, jnp.uint8)
    >>> [float(a[0, 0]) for a in decode_jnp(p, s, jnp.float32)]
    [0.5, 3.0]
    """
    b = packed.astype(jnp.int32)
    s = sbytes.astype(jnp.int32)

    def scaled(codes):  # quant.mxfp4.apply_e8m0_scale: exact on normal results, also where subnormals flush
        return _per_block(e2m1_to_f32(codes), s, apply_e8m0_scale).astype(dtype)

    return scaled(b & 0xF), scaled(b >> 4)


# PTX for one nibble plane. ``pack`` bytes per asm instance: 2 (16-bit $N) suits the tensor-core operand layout,
# where each thread holds pairs of consecutive K elements; 4 (32-bit $N) suits blocked layouts with 16-byte loads.
# Outputs: pack/2 bf16x2 registers ($0, $1) holding the plane's elements (0, 1) and (2, 3).
# prmt 0x9180 builds [b0, sign(b0), b1, sign(b1)] (selector 8|i replicates bit 7 of byte i; 0xB3A2 does the same
# for b2, b3); shifting it left by 2 puts the high nibble's magnitude bits at 6..8 and a copy of its sign bit at 15
# (22..24 and 31 for the second byte). The mask keeps exactly those bits: a bf16 with exponent field e and top
# mantissa bit m, i.e. E2M1 * 2**-126 (code 1 is the subnormal 2**-127), and the multiply by 2**126 makes it the
# exact E2M1 value. The low-nibble plane does the same on the bytes shifted left by 4. With ``scaled``, the
# operands after the packed bytes are the bf16x2 block scales of the same elements, multiplied in.
# ``fold``: no multiply by 2**126 (the scale operand is ``scale_bf16_folded``, 2**126 already in it; without
# ``scaled`` the output is the raw E2M1 * 2**-126 pattern, to be multiplied by the folded scale outside).
# (One asm per plane: older Pallas lowers only single-result inline asm.)
def _ptx(low_nibble: bool, scaled: bool, pack: int = 2, fold: bool = False) -> str:
    regs = pack // 2  # output registers
    src = f"${regs}"
    lines = ["{", ".reg .b32 q<3>;", "mov.b32 q2, 0x7E807E80;"]
    lines.append(f"cvt.u32.u16 q0, {src};" if pack == 2 else f"mov.b32 q0, {src};")
    if low_nibble:
        lines.append("shl.b32 q0, q0, 4;")
    for r, sel in zip(range(regs), ("0x9180", "0xB3A2")):
        lines += [f"prmt.b32 q1, q0, 0, {sel};", "shl.b32 q1, q1, 2;", "and.b32 q1, q1, 0x81C081C0;"]
        if fold:
            lines.append(f"mul.rn.bf16x2 ${r}, q1, ${regs + 1 + r};" if scaled else f"mov.b32 ${r}, q1;")
        elif scaled:
            lines += ["mul.rn.bf16x2 q1, q1, q2;", f"mul.rn.bf16x2 ${r}, q1, ${regs + 1 + r};"]
        else:
            lines.append(f"mul.rn.bf16x2 ${r}, q1, q2;")
    lines.append("}")
    return "\n".join(lines)


def decode_asm(packed, sbytes, dtype, *, pack=2, scale_in_asm=False, fold=False):
    """GPU decode with inline PTX (sm_90+): ``(lo, hi)`` in ``dtype``; same contract as ``decode_jnp``.

    ``pack`` (2 or 4) is the number of packed bytes one asm instance converts (see ``_ptx``). ``fold``: one
    multiply per element by ``scale_bf16_folded`` (exact only for scale bytes <= ``FOLD_MAX_SCALE_BYTE``)."""
    import jax
    from jax.experimental.pallas import triton as plgpu

    bn, bkh = packed.shape
    out = [jax.ShapeDtypeStruct((bn, bkh), jnp.bfloat16)]
    sc = scale_bf16_folded(sbytes) if fold else scale_bf16(sbytes)
    byte_c = "h" if pack == 2 else "r"
    outs = ",".join(["=r"] * (pack // 2))
    planes = []
    for low_nibble in (True, False):
        if scale_in_asm:
            sc_full = jnp.broadcast_to(sc.reshape(bn, bkh // MX_BYTES, 1), (bn, bkh // MX_BYTES, MX_BYTES))
            cons = ",".join([outs, byte_c] + ["r"] * (pack // 2))
            [v] = plgpu.elementwise_inline_asm(_ptx(low_nibble, True, pack, fold), args=[packed, sc_full.reshape(bn, bkh)],
                                               constraints=cons, pack=pack, result_shape_dtypes=out)
        else:
            [v] = plgpu.elementwise_inline_asm(_ptx(low_nibble, False, pack, fold), args=[packed],
                                               constraints=f"{outs},{byte_c}", pack=pack, result_shape_dtypes=out)
            v = _per_block(v, sc, lambda a, c: a * c)
        planes.append(v.astype(dtype))
    return planes[0], planes[1]


def ptx_decode_emulated(packed_u8: np.ndarray, pack: int = 2, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """numpy model of ``_ptx(low_nibble, False, pack)`` on bytes (any shape, a multiple of ``pack`` along the last
    axis), returning the float64 values of the ``lo`` and ``hi`` planes. Follows each instruction: prmt with sign
    replication (selectors 0x9180 for bytes 0, 1 and 0xB3A2 for bytes 2, 3), the shifts, the mask and an exact bf16
    multiply by 2**126 (bf16 subnormal inputs kept, as sm_90 does); ``raw``: without that multiply (the ``fold``
    form's pattern, E2M1 * 2**-126)."""
    b = np.asarray(packed_u8, np.uint8).reshape(-1, pack).astype(np.uint64)
    words = np.zeros(b.shape[0], np.uint64)
    for i in range(pack):
        words |= b[:, i] << (8 * i)

    def prmt(a, sel):  # b operand is 0
        out = np.zeros_like(a)
        for i in range(4):
            nib = (sel >> (4 * i)) & 0xF
            byte = (a >> (8 * (nib & 7))) & 0xFF if (nib & 7) < 4 else np.zeros_like(a)
            if nib & 8:
                byte = np.where(byte & 0x80, 0xFF, 0).astype(np.uint64)
            out |= byte << (8 * i)
        return out

    def bf16_pair_values(reg):
        vals = []
        for half in (reg & 0xFFFF, reg >> 16):
            sign = np.where(half & 0x8000, -1.0, 1.0)
            exp = ((half >> 7) & 0xFF).astype(np.int64)
            man = (half & 0x7F).astype(np.float64)
            mag = np.where(exp == 0, man * 2.0 ** -133, (1 + man / 128) * 2.0 ** (exp - 127))
            vals.append(sign * mag * (1.0 if raw else 2.0 ** 126))
        return np.stack(vals, axis=-1)

    def plane(src):
        regs = [((prmt(src, sel) << 2) & 0x81C081C0) & 0xFFFFFFFF for sel in (0x9180, 0xB3A2)[:pack // 2]]
        return np.concatenate([bf16_pair_values(r) for r in regs], axis=-1)

    lo = plane((words << 4) & 0xFFFFFFFF)
    hi = plane(words)
    return lo.reshape(packed_u8.shape), hi.reshape(packed_u8.shape)
