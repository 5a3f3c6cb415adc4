"""FP8 (e4m3fn / e4m3fnuz) activation quantizers, bit-exact to vLLM (SPEC section 2)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax import formats
from quark_jax.quant.rounding import exact_f32
from quark_jax.quant._checks import nan_max_abs, require_float, require_rank, scalar_f32, static_scale
from quark_jax.quant.division import true_divide

__all__ = ["scaled_fp8_quant", "fp8_saturating_cast"]


def fp8_saturating_cast(v, dtype=jnp.float8_e4m3fn):
    """Clamp float32 ``v`` to ±fp8_max(dtype) and cast (round to nearest even). Never produces NaN from a finite v.

    NaN stays NaN (as vLLM's KV-cache conversion, ``__NV_SATFINITE``); ±inf saturates to ±max.
    ml_dtypes casts do not saturate (500 -> NaN for e4m3fn), hence the clamp. The result goes through an
    optimization barrier: XLA on GPU (allow-excess-precision, the default) otherwise deletes a
    ``f32 -> fp8 -> f32`` convert pair inside one fusion, so a quantize-dequantize would not quantize at all
    (measured on the H100, 2026-11-25: ``jit(lambda a: a.astype(e4m3fn).astype(f32))(1.0625) == 1.0625``).
    """
    m = formats.fp8_max(dtype)
    return lax.optimization_barrier(jnp.clip(v, -m, m).astype(dtype))


CLAMP_FIRST = False
"""How the activation quantizers state vLLM's NaN -> +M clamp (read when traced; the same codes for every input,
tests/test_quant_errors.py): False, ``clip(where(isnan(v), M, v))``; True, ``where(isnan(c), M, c)`` with
``c = clip(v)`` (XLA's clamp keeps NaN), so v is read by one op. XLA-GPU did not fuse the first form with an
expensive producer that reads v several times (the FP8 prefill's SiLU-and-mul, an f32 [T, 14336] round trip, 128 us
per 8B layer at 2048 tokens; benchmarks/NOTES.md session 7, helper fp8pf). Off until measured on the H200."""


def _vllm_clamp_cast(v, dtype):
    """vLLM's activation conversion ``fp8(fmaxf(-M, fminf(v, M)))``: fminf returns its non-NaN operand, so a NaN
    becomes +M (then the saturating cast)."""
    m = formats.fp8_max(dtype)
    if CLAMP_FIRST:
        c = jnp.clip(v, -m, m)
        return lax.optimization_barrier(jnp.where(jnp.isnan(c), m, c).astype(dtype))
    return fp8_saturating_cast(jnp.where(jnp.isnan(v), m, v), dtype)


def scaled_fp8_quant(x, scale=None, *, per_token=False, scale_ub=None, dtype=jnp.float8_e4m3fn, axis_name=None,
                     scale_reciprocal=None):
    """Quantize ``x`` [..., K] to FP8; returns ``(q, scale)`` with ``x ≈ f32(q) * scale``.

    * ``scale`` given (static per-tensor, vLLM-exact): ``q = fp8(clamp(f32(x) * (1/scale)))``; ``scale`` must be a
      scalar (shape () or (1,)) and is returned as a 0-d float32.
    * ``scale`` None, ``per_token=True`` (dynamic per-token): ``s = max(min(amax_row, ub) / M, 1/(M*512))`` in f32,
      shape [..., 1]; ``q = fp8(clamp(f32(x) / s))`` (true division).
    * ``scale`` None, ``per_token=False`` (dynamic per-tensor): ``s = max(amax / M, 1/(M*512))`` over all of x
      (0-d float32); ``q = fp8(clamp(f32(x) * (1/s)))``.

    ``scale_reciprocal`` (static ``scale`` only): ``true_divide(1.0, scale)`` computed beforehand (e.g. when the
    weights are loaded), used instead of computing it here: the same codes, and a decode step computes no
    reciprocal (on a GPU, a kernel per layer).

    ``axis_name`` (inside ``shard_map``; dynamic scales only): the mesh axis name(s) over which x is split along the
    axes the amax spans (K for per-token; every axis for per-tensor); the amax is their ``pmax``, so every shard
    quantizes with the scale of the whole x.

    M is 448 for float8_e4m3fn and 224 for float8_e4m3fnuz (vLLM). Values past the range saturate; rows of zeros
    give zeros. Jittable. A concrete (not traced) static ``scale`` must be finite and > 0 (ValueError otherwise).

    Non-finite input, as vLLM's CUDA kernels (``fminf``/``fmaxf`` clamps and amax reductions, which drop NaN):
    a NaN element becomes +M and is left out of the dynamic amax (the other elements quantize as without it);
    with a static scale ±inf becomes ±M; with a dynamic scale an inf element makes the (row's / tensor's) scale
    inf, its finite elements ±0 and the inf element itself +M (``inf / inf`` is NaN, then +M).

    >>> import jax.numpy as jnp
    >>> q, s = scaled_fp8_quant(jnp.array([1.0, -2.5, 1000.0]), jnp.float32(0.5))
    >>> q.astype(jnp.float32).tolist(), float(s)
    ([2.0, -5.0, 448.0], 0.5)
    """
    require_float("x", x)
    require_rank("x", x)
    if not formats.is_fp8_dtype(dtype):
        raise TypeError(f"dtype: expected float8_e4m3fn or float8_e4m3fnuz, got {jnp.dtype(dtype)}")
    m = formats.fp8_max(dtype)
    xf = exact_f32(x)
    min_scale = 1.0 / (m * formats.FP8_MIN_SCALE_FACTOR)

    if scale is not None:
        if per_token:
            raise ValueError("per_token: a static scale is per-tensor; pass scale=None for dynamic per-token")
        s = static_scale("scale", scale)
        inv = true_divide(1.0, s) if scale_reciprocal is None else scalar_f32("scale_reciprocal", scale_reciprocal)
        return _vllm_clamp_cast(xf * inv, dtype), s

    if scale_reciprocal is not None:
        raise ValueError("scale_reciprocal: only used with a static scale (pass scale too)")
    if per_token:
        amax = nan_max_abs(xf, axis=-1, keepdims=True)
        if axis_name:
            amax = lax.pmax(amax, axis_name)
        if scale_ub is not None:
            amax = jnp.minimum(amax, static_scale("scale_ub", scale_ub))
        s = jnp.maximum(true_divide(amax, m), min_scale)
        return _vllm_clamp_cast(true_divide(xf, s), dtype), s

    if scale_ub is not None:
        raise ValueError("scale_ub: only used with per_token=True (vLLM applies the bound to per-token scales)")
    amax = nan_max_abs(xf)
    if axis_name:
        amax = lax.pmax(amax, axis_name)
    s = jnp.maximum(true_divide(amax, m), min_scale)
    return _vllm_clamp_cast(xf * true_divide(1.0, s), dtype), s
