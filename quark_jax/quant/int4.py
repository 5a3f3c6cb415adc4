"""INT4 / UINT4 weight-only dequantization (vLLM's ``QuarkW4A16Int4``, Quark's packed layout; SPEC section 2)."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats

__all__ = ["dequantize_int4", "dequantize_int4_per_channel", "dequantize_int4_nk"]


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


def dequantize_int4_nk(w_nk, scales, zero_points=None, *, group_size: int, signed: bool = True, dtype=jnp.float32):
    """Dequantize the load-time repacked INT4 / UINT4 weight (``kernels.int4_repack``, what ``QuarkW4A16Int4``
    stores per group) to ``dtype`` [N, K]; the same values as :func:`dequantize_int4` on the checkpoint layout.

    * ``w_nk``: uint8 [N, K/2]; byte j of group g in row n holds K element ``g * group_size + j`` in its low and
      ``g * group_size + group_size / 2 + j`` in its high nibble ``u``: ``q + 8`` for int4, ``q`` for uint4.
    * ``scales``: float [G, N]; ``zero_points``: int8 [G, N] (unpacked) or None.
    * ``w[n, k] = (q - z) * s`` in float32 (exact), rounded once to ``dtype``. Jittable.

    >>> w = jnp.array([[0x90, 0x7F]], jnp.uint8)        # N = 1, K = 4, group 4: q = (-8, 7, 1, -1), + 8
    >>> dequantize_int4_nk(w, jnp.full((1, 1), 0.5), group_size=4)[0].tolist()
    [-4.0, 3.5, 0.5, -0.5]
    """
    b = jnp.asarray(w_nk)
    n, kh = b.shape
    k = 2 * kh
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"group_size: expected an even divisor of K = {k}, got {group_size}")
    g = k // group_size
    scales = jnp.asarray(scales).astype(jnp.float32)
    if tuple(scales.shape) != (g, n):
        raise ValueError(f"scales: expected shape [{g}, {n}] (groups, N), got {list(scales.shape)}")
    b = b.astype(jnp.int32).reshape(n, g, 1, group_size // 2)
    q = jnp.concatenate([b & 15, b >> 4], axis=2).reshape(n, k).astype(jnp.float32)
    if signed:
        q = q - 8.0
    if zero_points is not None:
        if tuple(jnp.shape(zero_points)) != (g, n):
            raise ValueError(f"zero_points: expected [{g}, {n}] int8 (unpacked), got {list(jnp.shape(zero_points))}")
        q = q - jnp.repeat(jnp.asarray(zero_points).astype(jnp.float32).T, group_size, axis=1)
    return (q * jnp.repeat(scales.T, group_size, axis=1)).astype(dtype)
