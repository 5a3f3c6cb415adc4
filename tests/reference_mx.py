"""float64 numpy references for the issue-19 formats, built from the format definitions (OCP MX spec, Quark's
packers as documented in SPEC section 1, vLLM's formulas), not from quark_jax."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np

F32 = np.float32
# (ebits, mbits, emax): OCP MX / Quark's get_dtype_params
MX_SPECS = {"fp4": (2, 1, 2), "fp6_e2m3": (2, 3, 2), "fp6_e3m2": (3, 2, 4), "fp8_e4m3": (4, 3, 8)}
INT4_NIBBLES = {"order": [0, 1, 2, 3, 4, 5, 6, 7], "reorder": [0, 2, 4, 6, 1, 3, 5, 7]}


def grid(name):
    """[(value, magnitude code)] of every non-negative value of the format, ascending (fp8: finite ones)."""
    ebits, mbits, _ = MX_SPECS[name]
    bias = 2 ** (ebits - 1) - 1
    vals = []
    for field, mant in itertools.product(range(2 ** ebits), range(2 ** mbits)):
        v = mant * 2.0 ** (1 - bias - mbits) if field == 0 else (1 + mant / 2 ** mbits) * 2.0 ** (field - bias)
        code = (field << mbits) | mant
        if name == "fp8_e4m3" and code == 0x7F:  # NaN
            continue
        vals.append((v, code))
    return np.array(vals)


def code_value(codes, name):
    """Value of sign-magnitude codes (4 or 6 bits)."""
    ebits, mbits, _ = MX_SPECS[name]
    bits = 1 + ebits + mbits
    g = dict((int(c), v) for v, c in grid(name))
    codes = np.asarray(codes, np.int64)
    mag = np.vectorize(lambda c: g[c & ((1 << (bits - 1)) - 1)])(codes)
    return np.where(codes >> (bits - 1), -mag, mag)


def round_grid(v, name):
    """Nearest grid value (ties to the even code), saturating; sign kept; plus the magnitude code."""
    g = grid(name)
    a = np.minimum(np.abs(v), g[-1, 0])
    d = np.abs(a[..., None] - g[:, 0])
    best = d.min(-1, keepdims=True)
    tie = d == best
    idx = np.where(tie.sum(-1) > 1, np.argmax(tie & (g[:, 1] % 2 == 0), -1), np.argmax(tie, -1))
    return np.copysign(g[idx, 0], v), g[idx, 1].astype(np.int64)


def scale_exp(amax, name):
    """Unbiased E8M0 exponent of Quark's "even" scale."""
    _, mbits, emax = MX_SPECS[name]
    m, e = np.frexp(np.asarray(amax, np.float64))
    e_floor = e - 1
    e_r = np.where(m >= 1 - 2.0 ** -(mbits + 2), e_floor + 1, e_floor)
    return np.clip(np.where(amax == 0, -127, e_r - emax), -127, 127)


def mx_quantize(x, name):
    """(grid values [.., K] float64 with sign, codes [.., K] (zeros +0), scale exponents [.., K/32])."""
    xb = np.asarray(x, F32).astype(np.float64).reshape(*np.shape(x)[:-1], -1, 32)
    e = scale_exp(np.abs(xb).max(-1), name)
    r, mag = round_grid(xb / np.ldexp(1.0, e)[..., None], name)
    bits = 1 + MX_SPECS[name][0] + MX_SPECS[name][1]
    codes = np.where((r < 0) & (mag != 0), mag | (1 << (bits - 1)), mag)
    return r.reshape(np.shape(x)), codes.reshape(np.shape(x)), e


def mx_qdq(x, name):
    r, _, e = mx_quantize(x, name)
    return r * np.repeat(np.ldexp(1.0, e), 32, axis=-1)


def pack_fp6(codes):
    out = []
    for row in np.asarray(codes).reshape(-1, 4):
        word = sum(int(c) << (6 * i) for i, c in enumerate(row))
        out += [word & 0xFF, (word >> 8) & 0xFF, word >> 16]
    return np.array(out, np.uint8).reshape(*np.shape(codes)[:-1], -1)


def unpack_fp6(packed):
    out = []
    for row in np.asarray(packed, np.int64).reshape(-1, 3):
        word = int(row[0]) | int(row[1]) << 8 | int(row[2]) << 16
        out += [(word >> (6 * i)) & 0x3F for i in range(4)]
    return np.array(out).reshape(*np.shape(packed)[:-1], -1)


def mx_dequantize(q, scales, name):
    """A stored MX weight (uint8 packed or float8_e4m3fn) with E8M0 bytes -> float64 [.., K]."""
    q = np.asarray(q)
    if name == "fp8_e4m3":
        vals = q.astype(np.float64)
    elif name == "fp4":
        codes = np.stack([q & 0xF, q >> 4], -1).reshape(*q.shape[:-1], -1)
        vals = code_value(codes, name)
    else:
        vals = code_value(unpack_fp6(q), name)
    return vals * np.repeat(np.ldexp(1.0, np.asarray(scales, np.int64) - 127), 32, axis=-1)


def mx_quantize_weight(w, name):
    """The bytes a checkpoint stores for w (float) in MX ``name``: (q, scales uint8)."""
    r, codes, e = mx_quantize(w, name)
    if name == "fp8_e4m3":
        q = r.astype(ml_dtypes.float8_e4m3fn)
    elif name == "fp4":
        q = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    else:
        q = pack_fp6(codes)
    return q, (e + 127).astype(np.uint8)


def pack_int4(vals, order):
    """values [R, 8C] -> int32 [R, C], nibble i of word c = element 8c + nib[i]."""
    vals = np.asarray(vals, np.int64)
    nib = INT4_NIBBLES[order]
    out = np.zeros((vals.shape[0], vals.shape[1] // 8), np.int64)
    for c in range(out.shape[1]):
        for i in range(8):
            out[:, c] |= (vals[:, 8 * c + nib[i]] & 0xF) << (4 * i)
    return out.astype(np.uint32).view(np.int32)


def unpack_int4(words, order, signed):
    w = np.asarray(words).view(np.uint32).astype(np.int64)
    nib = INT4_NIBBLES[order]
    out = np.zeros((w.shape[0], w.shape[1] * 8), np.int64)
    for c in range(w.shape[1]):
        for i in range(8):
            out[:, 8 * c + nib[i]] = (w[:, c] >> (4 * i)) & 0xF
    return np.where(out >= 8, out - 16, out) if signed else out


def int4_quantize_weight(w, group, order, signed):
    """Quark-layout int4 / uint4 of a float weight [N, K]: (packed [K, N/8], scales [G, N] f32, zeros [G, N/8] or
    None), symmetric ``s = amax/7``, asymmetric ``s = (max-min)/15, z = rint(-min/s)``."""
    n, k = w.shape
    wg = np.asarray(w, np.float64).T.reshape(k // group, group, n)
    if signed:
        s = (np.abs(wg).max(1) / 7).astype(F32)
        q = np.clip(np.rint(wg / s[:, None]), -8, 7)
        zeros = None
    else:
        lo, hi = np.minimum(wg.min(1), 0), np.maximum(wg.max(1), 0)
        s = ((hi - lo) / 15).astype(F32)
        z = np.clip(np.rint(-lo / s), 0, 15)
        q = np.clip(np.rint(wg / s[:, None]) + z[:, None], 0, 15)
        zeros = pack_int4(z, order)
    return pack_int4(q.reshape(k, n), order), s, zeros


def int4_quantize_weight_per_channel(w, order, signed):
    """amd-quark 0.13's per-channel layout: (packed [N, K/8], scales [N] f32, zeros [N/8] or None)."""
    p, s, z = int4_quantize_weight(w, np.shape(w)[1], order, signed)  # one group of K: [K, N/8], [1, N]
    q = unpack_int4(p, order, signed).T  # [N, K], repacked along K
    return pack_int4(q, order), s.reshape(-1), None if z is None else z.reshape(-1)


def int4_dequantize_per_channel(packed, scales, zeros, order, signed):
    q = unpack_int4(packed, order, signed).astype(np.float64)  # [N, K]
    z = 0 if zeros is None else unpack_int4(np.asarray(zeros).reshape(1, -1), order, False).reshape(-1, 1)
    w = (q - z) * np.asarray(scales, np.float64).reshape(-1, 1)
    return w.astype(F32).astype(np.float64)


def int4_dequantize(packed, scales, zeros, group, order, signed):
    q = unpack_int4(packed, order, signed).astype(np.float64)  # [K, N]
    z = 0 if zeros is None else np.repeat(unpack_int4(zeros, order, False), group, 0)
    w = (q - z) * np.repeat(np.asarray(scales, np.float64), group, 0)  # small integer x f32 scale: rounded to f32
    return w.astype(F32).astype(np.float64).T


def fp8_block_dequantize(q, scales, block):
    """f32(q) * the block's scale, rounded to float32 (exact for E8M0 scales), as float64."""
    s = np.asarray(scales)
    s = np.ldexp(1.0, s.view(np.uint8).astype(np.int64) - 127) if s.dtype.itemsize == 1 else s.astype(np.float64)
    n, k = q.shape
    full = np.repeat(np.repeat(s, block[0], 0), block[1], 1)[:n, :k]
    return (np.asarray(q).astype(np.float64) * full).astype(F32).astype(np.float64)


def fp8_group_qdq(x, group):
    """vLLM's per_token_group_quant_fp8 then dequant: s = max(amax, 1e-10) / 448 (f32), q = fp8(clamp(x / s))."""
    x32 = np.asarray(x, F32)
    xg = x32.reshape(*x32.shape[:-1], -1, group)
    s = (np.maximum(np.abs(xg).max(-1, keepdims=True), F32(1e-10)) / F32(448)).astype(F32)
    q = np.clip(xg / s, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    return (q.astype(np.float64) * s).reshape(x32.shape)
