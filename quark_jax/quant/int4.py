"""INT4 / UINT4 weight-only dequantization (vLLM's ``QuarkW4A16Int4``, Quark's packed layout; SPEC section 2)."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats

__all__ = ["dequantize_int4", "dequantize_int4_per_channel"]


def dequantize_int4(packed, scales, zero_points=None, *, group_size: int, order: str = "reorder",
                    signed: bool = True, dtype=jnp.float32):
    """Dequantize Quark's packed INT4 / UINT4 weight to ``dtype`` [N, K].

    * ``packed``: int32 [K, N/8] (the transposed weight, 8 values a word along N, Quark's ``pack_method`` ``order``).
    * ``scales``: float [G, N], G = K / group_size (per channel, as Quark exports it, is
      :func:`dequantize_int4_per_channel`).
    * ``zero_points``: int32 [G, N/8] packed the same way (uint4), or None (symmetric int4: zero).
    * ``w[n, k] = (q[k, n] - z[k // group_size, n]) * s[k // group_size, n]`` computed in float32 (exact: small
      integers times a scale), rounded once to ``dtype``. Jittable.

    >>> p = formats.pack_int4(jnp.array([[1, 2, 3, 4, 5, 6, 7, -8]]), "order")   # K = 1, N = 8
    >>> dequantize_int4(p, jnp.full((1, 8), 0.5), group_size=1, order="order")[:, 0].tolist()
    [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, -4.0]
    """
    q = formats.unpack_int4(packed, order, signed=signed).astype(jnp.float32)  # [K, N]
    k, n = q.shape
    scales = jnp.asarray(scales).astype(jnp.float32)
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size: expected a positive divisor of K = {k}, got {group_size}")
    g = k // group_size
    if tuple(scales.shape) != (g, n):
        raise ValueError(f"scales: expected shape [{g}, {n}] (groups, N) for packed {list(jnp.shape(packed))} and "
                         f"group_size {group_size}, got {list(scales.shape)}")
    if zero_points is not None:
        z = formats.unpack_int4(zero_points, order, signed=signed).astype(jnp.float32)
        if tuple(z.shape) != (g, n):
            raise ValueError(f"zero_points: expected [{g}, {n // 8}] int32 (packed), got {list(jnp.shape(zero_points))}")
        q = q - jnp.repeat(z, group_size, axis=0)
    return (q * jnp.repeat(scales, group_size, axis=0)).T.astype(dtype)


def dequantize_int4_per_channel(packed, scales, zero_points=None, *, order: str = "reorder", signed: bool = True,
                                dtype=jnp.float32):
    """Dequantize Quark's per-channel INT4 / UINT4 weight (amd-quark 0.13's export: not transposed) to ``dtype``
    [N, K]: ``packed`` int32 [N, K/8] (8 values a word along K), ``scales`` float [N], ``zero_points`` int32
    [N/8] (packed along N) or None; ``w[n, k] = (q[n, k] - z[n]) * s[n]`` in float32, rounded once. Jittable.

    >>> p = formats.pack_int4(jnp.array([[1, 2, 3, 4, 5, 6, 7, -8]]), "order")   # N = 1, K = 8
    >>> dequantize_int4_per_channel(p, jnp.array([0.5]), order="order")[0].tolist()
    [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, -4.0]
    """
    q = formats.unpack_int4(packed, order, signed=signed).astype(jnp.float32)  # [N, K]
    n = q.shape[0]
    scales = jnp.asarray(scales).astype(jnp.float32).reshape(-1)
    if scales.shape != (n,):
        raise ValueError(f"scales: expected shape [{n}] (one per output channel), got {list(jnp.shape(scales))}")
    if zero_points is not None:
        z = formats.unpack_int4(jnp.asarray(zero_points).reshape(1, -1), order, signed=signed).reshape(-1)
        if z.shape != (n,):
            raise ValueError(f"zero_points: expected [{n // 8}] int32 (packed), got {list(jnp.shape(zero_points))}")
        q = q - z.astype(jnp.float32)[:, None]
    return (q * scales[:, None]).astype(dtype)
