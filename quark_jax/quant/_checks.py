"""Argument validation shared by the quantizers: each error names the argument and what was expected."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


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


def true_divide(a, b):
    """``a / b`` as a correctly rounded IEEE float32 division, on every backend (see ``_true_divide``)."""
    return _true_divide(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))


@jax.jit
def _true_divide(a, b):
    """``a / b`` as a correctly rounded IEEE float32 division, on every backend.

    Two XLA behaviours stand between ``a / b`` and vLLM's division: the algebraic simplifier rewrites ``a / C``
    (C constant) and ``a / broadcast(b)`` (e.g. a per-token scale [T, 1] divided into [T, K]) into a
    multiplication by the rounded reciprocal (off by one ulp for about a third of inputs; ``3 / 448`` is one), and
    XLA on NVIDIA GPUs emits an approximate float32 division (measured on the H100, 2026-11-25: 30% of random
    quotients off by 1-2 ulp, 13% of reciprocals off by one). So the divisor is broadcast to the full shape and
    hidden behind an optimization barrier, and the quotient gets one exact-residual correction
    (:func:`_correctly_rounded`). That materializes one array of a's shape; the Pallas kernels avoid even that.
    """
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    a = jnp.broadcast_to(a, shape)
    b = lax.optimization_barrier(jnp.broadcast_to(b, shape))
    return _correctly_rounded(a, b, a / b)


def _split(x):
    """Veltkamp split of float32 ``x`` into hi + lo with 12 significant bits each (so their products are exact)."""
    c = x * 4097.0
    hi = c - (c - x)
    return hi, x - hi


def _two_product_error(p, a, b):
    """The rounding error of ``p = fl(a * b)``: a * b = p + error exactly (Dekker), for moderate magnitudes."""
    ah, al = _split(a)
    bh, bl = _split(b)
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _correctly_rounded(a, b, q):
    """``q`` (a quotient a / b within a few ulps) corrected to the float32 nearest to a / b: with the exact residual
    ``r = a - q * b`` (Dekker's product; exact since q * b is close to a), ``q + r / b`` rounds the true quotient
    once. A no-op where the division is already correctly rounded (CPU): r is then 0. Non-finite or huge values
    (where the split would overflow) keep q."""
    p = q * b
    r = (a - p) - _two_product_error(p, q, b)
    refined = q + r / b
    ok = jnp.isfinite(refined) & (jnp.abs(q) < 1e30) & (jnp.abs(b) < 1e30)
    return jnp.where(ok, refined, q)
