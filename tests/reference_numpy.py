"""Independent numpy implementations of SPEC section 2, for testing the JAX quantizers.

Written differently from the library on purpose: FP8 rounding by ml_dtypes' numpy casts, E2M1 rounding by a
nearest-grid search with even-code tie breaking, block exponents from ``np.frexp``, packing with explicit loops
over nibbles. Float32 arithmetic where the spec says float32, so results are bit-exact comparable.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

F32 = np.float32
FP8 = ml_dtypes.float8_e4m3fn
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp8_cast(v32, maxval=448.0, dtype=FP8):
    return np.clip(v32.astype(F32), F32(-maxval), F32(maxval)).astype(dtype)


def fp8_static(x, s):
    x32 = np.asarray(x).astype(F32)
    inv = F32(1.0) / F32(s)
    return fp8_cast(x32 * inv), F32(s)


def fp8_dynamic_per_token(x, ub=None):
    x32 = np.asarray(x).astype(F32)
    amax = np.abs(x32).max(axis=-1, keepdims=True)
    if ub is not None:
        amax = np.minimum(amax, F32(ub))
    s = np.maximum(amax / F32(448.0), F32(1.0) / F32(448.0 * 512.0)).astype(F32)
    return fp8_cast(x32 / s), s


def fp8_dynamic_per_tensor(x):
    x32 = np.asarray(x).astype(F32)
    s = np.maximum(np.abs(x32).max() / F32(448.0), F32(1.0) / F32(448.0 * 512.0)).astype(F32)
    return fp8_cast(x32 * (F32(1.0) / s)), s


def _rne(v):
    return np.rint(v)  # numpy rint rounds half to even


def int8_static_sym(x, s):
    q = _rne(np.asarray(x).astype(F32) / F32(s))
    return np.clip(q, -128, 127).astype(np.int8)


def int8_static_asym(x, s, z):
    q = _rne(np.asarray(x).astype(F32) * (F32(1.0) / F32(s))).astype(np.int64) + int(z)
    return np.clip(q, -128, 127).astype(np.int8)


def int8_dynamic_sym(x):
    x32 = np.asarray(x).astype(F32)
    amax = np.abs(x32).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(amax == 0, 0, _rne(x32 * (F32(127.0) / amax)))
    return np.clip(q, -128, 127).astype(np.int8), (amax / F32(127.0)).astype(F32)


def int8_dynamic_asym(x):
    x32 = np.asarray(x).astype(F32)
    mx = x32.max(axis=-1, keepdims=True)
    mn = x32.min(axis=-1, keepdims=True)
    s = ((mx - mn) / F32(255.0)).astype(F32)
    z = _rne(F32(-128.0) - mn / s).astype(np.int64)
    q = np.clip(_rne(x32 / s).astype(np.int64) + z, -128, 127).astype(np.int8)
    return q, s, z.astype(np.int32)


def e2m1_round(v):
    """Nearest E2M1 grid value to v (float64), ties to the even code, saturating at 6; keeps the sign."""
    a = np.minimum(np.abs(v).astype(np.float64), 6.0)
    d = np.abs(a[..., None] - E2M1_GRID)
    best = d.min(axis=-1, keepdims=True)
    cand = d == best
    # among tied candidates prefer the even code index
    idx = np.where(cand.sum(-1) > 1, np.argmax(cand & (np.arange(8) % 2 == 0), axis=-1), np.argmax(cand, axis=-1))
    return np.copysign(E2M1_GRID[idx], v), idx


def mx_scale_exponent(amax):
    """Unbiased exponent e of the E8M0 block scale for block amax (float32 values), via frexp."""
    amax = np.asarray(amax, np.float64)
    mant, exp = np.frexp(amax)  # amax = mant * 2**exp, mant in [0.5, 1)
    # "even" rounding with one mantissa bit kept: mant >= 0.875 rounds up to the next power of two
    e_floor = exp - 1
    e_round = np.where(mant >= 0.875, e_floor + 1, e_floor)
    e = e_round - 2
    e = np.where(amax == 0, -127, e)
    return np.clip(e, -127, 127).astype(np.int64)


def mxfp4_qdq(x):
    x = np.asarray(x)
    xb = x.astype(F32).reshape(*x.shape[:-1], -1, 32)
    e = mx_scale_exponent(np.abs(xb).max(-1))
    scale = np.ldexp(1.0, e)[..., None]
    r, _ = e2m1_round(xb.astype(np.float64) / scale)
    return (r * scale).reshape(x.shape).astype(x.dtype)


def mxfp4_quantize(x):
    x = np.asarray(x)
    xb = x.astype(F32).reshape(*x.shape[:-1], -1, 32)
    e = mx_scale_exponent(np.abs(xb).max(-1))
    r, idx = e2m1_round(xb.astype(np.float64) / np.ldexp(1.0, e)[..., None])
    codes = np.where((r < 0) & (idx != 0), idx + 8, idx).reshape(*x.shape[:-1], x.shape[-1])
    packed = np.zeros((*x.shape[:-1], x.shape[-1] // 2), np.uint8)
    for j in range(x.shape[-1] // 2):
        packed[..., j] = codes[..., 2 * j] + 16 * codes[..., 2 * j + 1]
    return packed, (e + 127).astype(np.uint8)


def mxfp4_dequantize(packed, scales):
    packed = np.asarray(packed, np.uint8)
    k = packed.shape[-1] * 2
    vals = np.empty((*packed.shape[:-1], k), np.float64)
    for j in range(packed.shape[-1]):
        for half, code in ((0, packed[..., j] % 16), (1, packed[..., j] // 16)):
            mag = E2M1_GRID[code % 8]
            vals[..., 2 * j + half] = np.where(code >= 8, -mag, mag)
    sc = np.ldexp(1.0, np.asarray(scales, np.int64) - 127)
    return vals * np.repeat(sc, 32, axis=-1)
