"""Jitted prefill and decode over a fixed-size KV cache.

* The model is split once per call into its graph definition (static) and state (arrays); both jitted functions
  take ``(graphdef, state, cache, ...)``.
* **Prefill** runs the whole prompt in one call. The prompt is right-padded to a bucket (the next power of two,
  at least 16, at most the cache size), so it compiles once per bucket, not once per prompt length. Padded tokens
  sit after the real ones: causal masking keeps them out of the real tokens' attention, and the slots they write
  are overwritten by decode before any query can see them.
* **Decode** is one jitted function of ``(graphdef, state, cache, token [B], position, key, temperature, top_k)``
  with everything but the graph definition traced, so every step reuses one compiled executable (one compile
  per model, batch size and cache size; sampling settings do not recompile). The cache argument is donated on
  accelerators (updated in place).
* The cache holds ``bucket(prompt + max_new_tokens)`` slots (a multiple of 64; or ``max_cache_len``), never more
  than ``max_position_embeddings``; see :mod:`quark_jax.models.kv_cache` for its layout.
* Sampling: greedy by default (``temperature=0``); ``temperature > 0`` samples from ``softmax(logits / T)``,
  optionally restricted to the ``top_k`` largest logits; the key for step p is ``fold_in(PRNGKey(seed), p)``, so a
  seed gives the same tokens every time.

``TRACE_COUNTS`` counts how often each function was traced (= compiled), for tests and curious users.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.models.inputs import check_token_ids

__all__ = ["generate", "GenerationStats", "TRACE_COUNTS", "prefill_bucket", "cache_size"]

TRACE_COUNTS: collections.Counter = collections.Counter()
"""How often ``prefill`` and ``decode`` were traced by jax.jit in this process."""


@dataclasses.dataclass
class GenerationStats:
    """Wall times of one :func:`generate` call (seconds; the first call of a shape includes compilation)."""

    prompt_tokens: int
    new_tokens: int
    prefill_bucket: int
    cache_len: int
    prefill_s: float
    decode_s: list

    @property
    def per_token_s(self) -> float:
        return float(np.mean(self.decode_s)) if self.decode_s else 0.0


def prefill_bucket(prompt_len: int, cache_len: int) -> int:
    """The padded prompt length: next power of two >= max(prompt_len, 16), capped at ``cache_len``.

    >>> prefill_bucket(5, 64), prefill_bucket(17, 64), prefill_bucket(40, 48)
    (16, 32, 48)
    """
    return min(max(16, 1 << (prompt_len - 1).bit_length()), cache_len)


def cache_size(total_len: int, max_positions: int) -> int:
    """Cache slots for ``total_len`` tokens: rounded up to a multiple of 64, capped at ``max_positions``.

    >>> cache_size(21, 128), cache_size(65, 128), cache_size(100, 100)
    (64, 128, 100)
    """
    return min(-(-total_len // 64) * 64, max_positions)


def _sample(logits, key, temperature, top_k):
    """Next token [B] from logits [B, V]: argmax when temperature == 0, else categorical over logits / T
    restricted to the ``top_k`` largest (ties at the k-th value included). temperature and top_k are traced, so
    changing them does not recompile."""
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    v = logits.shape[-1]
    k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, v)
    kth = jax.lax.dynamic_index_in_dim(jnp.sort(logits, axis=-1), v - k, axis=-1, keepdims=True)
    temp = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)
    masked = jnp.where(logits >= kth, logits / temp, -jnp.inf)
    sampled = jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


@partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, state, cache, input_ids, prompt_len, key, temperature, top_k):
    TRACE_COUNTS["prefill"] += 1
    model = nnx.merge(graphdef, state)
    logits, cache = model._cached(input_ids, cache, jnp.int32(0))
    last = jax.lax.dynamic_index_in_dim(logits, prompt_len - 1, axis=1, keepdims=False)
    return _sample(last, jax.random.fold_in(key, prompt_len - 1), temperature, top_k), cache


def _decode_impl(graphdef, state, cache, token, position, key, temperature, top_k):
    TRACE_COUNTS["decode"] += 1
    model = nnx.merge(graphdef, state)
    logits, cache = model._cached(token[:, None], cache, position)
    return _sample(logits[:, 0], jax.random.fold_in(key, position), temperature, top_k), cache


_decode_donating = jax.jit(_decode_impl, static_argnames=("graphdef",), donate_argnames=("cache",))
_decode_plain = jax.jit(_decode_impl, static_argnames=("graphdef",))


def _decode_fn():
    # CPU buffers are not donatable (jax would warn on every call); accelerators update the cache in place
    return _decode_plain if jax.default_backend() == "cpu" else _decode_donating


def generate(model, input_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             seed: int = 0, eos_token_id: int | None = None, max_cache_len: int | None = None,
             return_stats: bool = False):
    """Continue ``input_ids`` [B, T] by ``max_new_tokens`` tokens; returns ids [B, T + max_new_tokens] (int32).

    Greedy unless ``temperature > 0`` (then ``top_k`` optionally limits the candidates; ``seed`` fixes the draws).
    With ``eos_token_id``, generation stops early once every row has produced it, and rows that finished are
    padded with it. ``return_stats=True`` also returns a :class:`GenerationStats` with prefill and per-token
    wall times. All rows share the prompt length (no padding mask).
    """
    cfg = model.config
    check_token_ids(input_ids, cfg.vocab_size)
    ids = np.asarray(input_ids, np.int32)
    b, t = ids.shape
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected a positive integer or None, got {top_k}")
    total = t + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({t} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
                         f"max_position_embeddings {cfg.max_position_embeddings}")
    cache_len = max_cache_len or cache_size(total, cfg.max_position_embeddings)
    if cache_len < total:
        raise ValueError(f"max_cache_len: {cache_len} slots cannot hold {total} tokens")
    bucket = prefill_bucket(t, cache_len)

    graphdef, state = nnx.split(model)
    key = jax.random.PRNGKey(seed)
    sampling = (np.float32(temperature), np.int32(cfg.vocab_size if top_k is None else top_k))
    padded = np.zeros((b, bucket), np.int32)
    padded[:, :t] = ids
    cache = model.init_cache(b, cache_len)

    t0 = time.perf_counter()
    token, cache = _prefill(graphdef, state, cache, jnp.asarray(padded), np.int32(t), key, *sampling)
    token.block_until_ready()
    prefill_s = time.perf_counter() - t0

    decode = _decode_fn()
    out = [token]
    done = np.zeros((b,), bool)
    decode_s = []
    for step in range(1, max_new_tokens):
        if eos_token_id is not None:
            done |= np.asarray(token) == eos_token_id
            if done.all():
                break
        t0 = time.perf_counter()
        token, cache = decode(graphdef, state, cache, token, np.int32(t + step - 1), key, *sampling)
        token.block_until_ready()
        decode_s.append(time.perf_counter() - t0)
        if eos_token_id is not None:
            token = jnp.where(jnp.asarray(done), eos_token_id, token)
        out.append(token)
    new = np.stack([np.asarray(x) for x in out], axis=1)
    if new.shape[1] < max_new_tokens:  # stopped early: pad with eos
        new = np.concatenate([new, np.full((b, max_new_tokens - new.shape[1]), eos_token_id, np.int32)], axis=1)
    result = jnp.asarray(np.concatenate([ids, new], axis=1))
    if return_stats:
        return result, GenerationStats(t, max_new_tokens, bucket, cache_len, prefill_s, decode_s)
    return result
