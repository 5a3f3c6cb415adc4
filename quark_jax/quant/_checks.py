"""Argument validation shared by the quantizers: each error names the argument and what was expected."""

from __future__ import annotations

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


def require_multiple(name: str, size: int, multiple: int, what: str) -> None:
    if size % multiple:
        raise ValueError(f"{name}: {what} must be a multiple of {multiple}, got {size}")


def true_divide(a, b):
    """``a / b`` as an IEEE float32 division, which XLA would otherwise turn into ``a * (1/b)``.

    XLA's algebraic simplifier rewrites ``a / C`` (C constant) and ``a / broadcast(b)`` (any b, e.g. a per-token
    scale [T, 1] divided into [T, K]) into a multiplication by the rounded reciprocal, off by one ulp for about a
    third of inputs (``3 / 448`` is one). vLLM divides, so our quantizers must too: the divisor is broadcast to
    the full shape and hidden behind an optimization barrier. That materializes one array of a's shape; the
    Pallas kernels avoid even that.
    """
    from jax import lax

    a = jnp.asarray(a)
    b = jnp.asarray(b, jnp.float32)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    return jnp.broadcast_to(a, shape) / lax.optimization_barrier(jnp.broadcast_to(b, shape))
