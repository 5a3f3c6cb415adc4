"""Argument validation shared by the quantizers: each error names the argument and what was expected."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def require_float(name: str, x) -> None:
    """Raise TypeError unless ``x`` has a floating dtype (bf16, f16, f32, f64)."""
    dtype = jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.dtype(dtype).itemsize < 2:
        raise TypeError(f"{name}: expected a floating-point array (bfloat16, float16 or float32), got dtype {dtype}")


def require_rank(name: str, x, min_rank: int = 1) -> None:
    if jnp.ndim(x) < min_rank:
        raise ValueError(f"{name}: expected at least {min_rank} dimension(s) [..., K], got shape {jnp.shape(x)}")


def scalar_f32(name: str, value):
    """A per-tensor scale (or zero point) as a 0-d float32 array; accepts shape () or (1,), nothing larger."""
    arr = jnp.asarray(value)
    if arr.size != 1:
        raise ValueError(f"{name}: expected a scalar (shape () or (1,)) for a static per-tensor quantizer, "
                         f"got shape {arr.shape}")
    return arr.reshape(()).astype(jnp.float32)


def static_scale(name: str, value):
    """:func:`scalar_f32` of a static quantization scale, rejected (ValueError) when it is concrete (not traced under
    a jax transformation) and not finite and > 0: a zero scale saturates everything, a negative one flips signs,
    a NaN or inf one makes every output NaN or zero. Traced scales are not checked (loaders check checkpoint
    scales, :mod:`quark_jax.value_checks`)."""
    s = scalar_f32(name, value)
    if not isinstance(s, jax.core.Tracer):
        v = float(s)
        if not (v > 0 and v < float("inf")):
            from quark_jax.errors import InvalidArgumentError

            raise InvalidArgumentError(f"{name}: expected a finite static scale > 0, got {v}")
    return s


def nan_max_abs(xf, axis=None, keepdims=False):
    """``max(0, |x|)`` over ``axis`` ignoring NaN (vLLM's reductions use ``fmaxf``, which drops a NaN operand)."""
    return jnp.max(jnp.where(jnp.isnan(xf), 0.0, jnp.abs(xf)), axis=axis, keepdims=keepdims)


def require_multiple(name: str, size: int, multiple: int, what: str) -> None:
    if size % multiple:
        raise ValueError(f"{name}: {what} must be a multiple of {multiple}, got {size}")
