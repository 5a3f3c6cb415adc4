"""Correctly rounded float32 division on every backend (vLLM's quantizers divide; XLA may not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["true_divide"]


def true_divide(a, b):
    """``a / b`` as a correctly rounded IEEE float32 division, on every backend (see ``_true_divide``).

    >>> float(true_divide(3.0, 448.0)) == float(np.float32(3.0) / np.float32(448.0))
    True
    """
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
