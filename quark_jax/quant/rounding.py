"""Rounding to the model dtype that XLA cannot skip.

XLA (CPU and GPU) allows "excess precision" by default: in ``convert(convert(v_f32 -> bf16) -> f32)`` it may drop
the pair and hand the unrounded f32 value to the consumer. vLLM's kernels round each intermediate to the model
dtype, and a quantizer fed with an unrounded activation can pick a different FP8/INT8 code, so the quantizers read
their input through :func:`exact_f32` and the decoder rounds with :func:`round_to` at every point where vLLM rounds: the value is rounded in float32 with
``lax.reduce_precision`` (round to nearest even, the same rule as the cast) before the cast, so it is exactly
representable and a dropped convert pair no longer changes it. (Setting
``XLA_FLAGS=--xla_allow_excess_precision=false`` has the same effect globally.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["round_to", "exact_f32", "dot_precision"]


def _reduce_to(v_f32, dtype):
    """float32 ``v`` rounded (nearest even) onto ``dtype``'s grid, staying float32; subnormals of ``dtype`` kept.

    ``lax.reduce_precision`` flushes values below the target's smallest normal, which matters for float16 (bf16
    has float32's exponent range): there the subnormal range is rounded to multiples of 2**-24 by hand (exact:
    scaling by a power of two, then round-half-even).
    """
    info = jnp.finfo(dtype)
    r = jax.lax.reduce_precision(v_f32, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    if dtype == jnp.dtype(jnp.float16):
        tiny = float(info.smallest_normal)
        step = 2.0 ** -24
        r = jnp.where(jnp.abs(v_f32) < tiny, jnp.round(v_f32 * (1.0 / step)) * step, r)
    return r


def round_to(v, dtype):
    """``v`` rounded to ``dtype`` (float32, bfloat16 or float16), robust to XLA's excess precision.

    >>> [float(round_to(jnp.float32(v), jnp.bfloat16)) for v in (1.0 + 2**-8, 1.0 + 3 * 2**-9)]
    [1.0, 1.0078125]
    """
    dtype = jnp.dtype(dtype)
    v = jnp.asarray(v).astype(jnp.float32)
    if dtype != jnp.float32:
        v = _reduce_to(v, dtype)
    return v.astype(dtype)


def exact_f32(x):
    """``x`` (bf16, f16 or f32) as float32 holding exactly ``x``'s value in its own dtype, even when XLA would hand
    over an unrounded producer value instead (excess precision). The quantizers read their inputs this way.

    >>> float(exact_f32(jnp.asarray(1.0 + 2**-8, jnp.bfloat16)))
    1.0
    """
    x = jnp.asarray(x)
    v = x.astype(jnp.float32)
    if x.dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        v = _reduce_to(v, x.dtype)
    return v


def dot_precision(*operands):
    """``lax.Precision.HIGHEST`` if any operand (an array or a dtype) is float32, else None (the default).

    XLA on NVIDIA GPUs runs float32 dots in TF32 at the default precision (measured on the H100, 2026-11-25: the f32
    MXFP4 reference 2.7e-4 relative error from float64), whereas torch's default matmul (vLLM) is full float32. Pass
    this to every dot whose operands may be float32; bf16/f16 dots are unaffected.

    >>> import jax.numpy as jnp
    >>> dot_precision(jnp.ones(2, jnp.float32)) == jax.lax.Precision.HIGHEST, dot_precision(jnp.ones(2, jnp.bfloat16))
    (True, None)
    """
    if any(jnp.dtype(getattr(a, "dtype", a)) == jnp.float32 for a in operands):
        return jax.lax.Precision.HIGHEST
    return None
