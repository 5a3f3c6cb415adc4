"""A fixed-size KV cache, optionally stored in FP8 with per-layer k/v scales (SPEC section 6).

Layout: one key and one value array per layer, each ``[B, S, H_kv, D]`` (batch, cache slot = absolute token
position, KV head, head dim). Slot ``p`` holds the token at position ``p`` after RoPE; slots past the current
length hold stale data and are masked out by position. The dtype is the model dtype, or ``float8_e4m3fn`` for an
FP8 cache: written as ``fp8(clamp(k / k_scale, ±448))`` (true f32 division, round to nearest even), read as
``f32(k_fp8) * k_scale`` (vLLM's cache semantics; the scales are per layer and per tensor).

The cache is a pytree (jit-friendly, donatable); its size S is fixed when it is created, so one compiled decode
step serves every position.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from quark_jax.quant import fp8_saturating_cast, true_divide

__all__ = ["KVCache", "quantize_kv", "dequantize_kv"]

FP8_KV_DTYPE = jnp.float8_e4m3fn


def quantize_kv(x, scale):
    """``fp8(clamp(f32(x) / scale, ±448))`` (true division): the value written into an FP8 cache.

    >>> quantize_kv(jnp.array([1.0, -3.0, 1000.0]), jnp.float32(0.5)).astype(jnp.float32).tolist()
    [2.0, -6.0, 448.0]
    """
    return fp8_saturating_cast(true_divide(jnp.asarray(x, jnp.float32), scale), FP8_KV_DTYPE)


def dequantize_kv(q, scale):
    """``f32(q) * scale``: the value read back from an FP8 cache (float32).

    >>> dequantize_kv(jnp.array([2.0, -6.0], jnp.float8_e4m3fn), jnp.float32(0.5)).tolist()
    [1.0, -3.0]
    """
    return q.astype(jnp.float32) * jnp.asarray(scale, jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer key/value arrays ``[B, S, H_kv, D]`` (tuples of length num_layers).

    >>> c = KVCache.create(num_layers=2, batch=1, max_len=8, num_kv_heads=2, head_dim=4, dtype=jnp.float32)
    >>> len(c.k), c.k[0].shape, c.max_len
    (2, (1, 8, 2, 4), 8)
    """

    k: tuple
    v: tuple

    @classmethod
    def create(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype):
        """An all-zero cache (zeros are valid FP8 values too)."""
        shape = (batch, max_len, num_kv_heads, head_dim)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(a.size * a.dtype.itemsize for a in self.k + self.v)
