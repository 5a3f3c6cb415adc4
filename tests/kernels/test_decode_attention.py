"""Decode attention over the KV cache (kernels.decode_attention): the Pallas flash-decoding kernel and the XLA
reference against float64 numpy (ragged cache lengths, grouped-query heads, left padding, empty splits, an FP8
cache), the reference equal to the model's float32 path, and a model decoding with ``decode_attention_impl=
"pallas"`` within the bound of "xla". On the CPU the kernel runs in Pallas interpret mode, on a CUDA GPU compiled."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax.kernels import decode_attention, decode_attention_xla
from quark_jax.kernels.attention import pallas_triton
from quark_jax.models import llama
from tests.kernels.base import rng

B, S, H, HKV, D = 2, 40, 6, 2, 16  # 3 query heads per KV head; S not a multiple of the slot block
POS = np.array([37, 20], np.int32)
FIRST = np.array([0, 5], np.int32)  # row 1 left-padded by 5 slots
BOUND = 2.0 ** -18  # SPEC 11.2: |decode attention - float64| <= 2^-18 * max |v| (float32 rounding only)


def _data(cache_dtype=jnp.bfloat16, *, seed="dec"):
    g = rng(seed)
    q = jnp.asarray(g.standard_normal((B, H, D)) * 2.0, jnp.bfloat16)
    if cache_dtype == jnp.float8_e4m3fn:
        mk = lambda: jnp.asarray(np.clip(g.standard_normal((B, S, HKV, D)) * 64, -448, 448), cache_dtype)  # noqa
        return q, mk(), mk(), (jnp.float32(0.03), jnp.float32(0.05))
    mk = lambda: jnp.asarray(g.standard_normal((B, S, HKV, D)) * 2.0, cache_dtype)  # noqa: E731
    return q, mk(), mk(), None


def _f64(q, k, v, pos, first, scales=None):
    """Float64 attention of one query per row over the slots first[b] <= s <= pos[b]; an FP8 cache read as
    float32(code) * scale (the cache's defined read), then widened."""
    k, v = (np.asarray(a.astype(jnp.float32), np.float32) for a in (k, v))
    if scales is not None:
        k, v = k * np.float32(scales[0]), v * np.float32(scales[1])
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    s = np.einsum("bhd,bshd->bhs", q, k) * q.shape[-1] ** -0.5
    slots = np.arange(k.shape[1])
    mask = (slots[None] >= first[:, None]) & (slots[None] <= pos[:, None])
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhs,bshd->bhd", p / p.sum(-1, keepdims=True), v), np.abs(v).max()


@pytest.mark.parametrize("cache_dtype", [jnp.bfloat16, jnp.float8_e4m3fn], ids=["bf16", "fp8"])
def test_kernel_and_reference_against_float64(cache_dtype):
    q, k, v, scales = _data(cache_dtype)
    want, vmax = _f64(q, k, v, POS, FIRST, scales)
    # 3 splits of 8-slot blocks: row 0's 38 slots in 5 blocks (2, 2, 1 per split), the last block read as slots
    # 32..39 with 32..39 valid up to 37; row 1's slots 5..20 start mid-block
    cfg = pallas_triton.Config(block_s=8, splits=3)
    got = decode_attention(q, k, v, pos=POS, first_slot=FIRST, scales=scales, impl="pallas", config=cfg)
    ref = decode_attention_xla(q, k, v, POS, FIRST, scales and jnp.stack(scales))
    assert got.dtype == jnp.float32 and got.shape == (B, H, D)
    for out in (got, ref):
        err = np.abs(np.asarray(out, np.float64) - want).max()
        assert err <= BOUND * vmax, (err, BOUND * vmax)


def test_kernel_empty_splits_ragged_last_block_and_default_config():
    """Short rows with many splits (most splits sum nothing and weigh 0), a block size that does not divide the
    cache (S = 40 with 16-slot blocks: the last block read as slots 24..39), and the automatic config."""
    q, k, v, _ = _data(seed="empty")
    pos, first = np.array([2, 39], np.int32), np.array([0, 35], np.int32)
    want, vmax = _f64(q, k, v, pos, first)
    for cfg in (pallas_triton.Config(block_s=16, splits=4), None):
        got = decode_attention(q, k, v, pos=pos, first_slot=first, impl="pallas", config=cfg)
        assert np.abs(np.asarray(got, np.float64) - want).max() <= BOUND * vmax
        # out_dtype: the float32 result rounded once (one split: in the kernel; more: in the XLA combine)
        bf = decode_attention(q, k, v, pos=pos, first_slot=first, impl="pallas", config=cfg, out_dtype=jnp.bfloat16)
        assert bf.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(bf, np.float32), np.asarray(got.astype(jnp.bfloat16), np.float32))
    assert pallas_triton.fit(pallas_triton.DEFAULT, B, HKV, S).splits == 1  # 40 slots: one split


def test_reference_equals_the_model_float32_path():
    """decode_attention_xla is ``llama.attend`` at T = 1 (the same float32 products and sums)."""
    q, k, v, _ = _data(seed="model")
    got = decode_attention_xla(q, k, v, POS, FIRST)
    for b in range(B):  # attend takes one query slot for the batch: compare row by row at its own position
        want = llama.attend(q[:, None], k, v, jnp.array([POS[b]]), jnp.asarray(FIRST))[b, 0]
        np.testing.assert_allclose(np.asarray(got[b]), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_errors():
    q, k, v, _ = _data()
    with pytest.raises(ValueError, match="impl"):
        decode_attention(q, k, v, pos=3, impl="flash")
    with pytest.raises(ValueError, match="H % H_kv"):
        decode_attention(q[:, :5], k, v, pos=3)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(q[..., :12], k[..., :12], v[..., :12], pos=3, impl="pallas")


def test_model_decode_with_the_kernel_equals_xla_within_the_bound():
    """A one-layer bf16 model decoding one token per row (row 1 left-padded) against a cache of random contents,
    with ``decode_attention_impl`` "xla" and "pallas", for a bf16 and an FP8 cache: the same cache write, and the
    attention output (rounded to bf16) may move by one bf16 ulp where the float32 values straddle a rounding
    boundary, so the logits agree closely and the greedy tokens are the same."""
    import jax
    from flax import nnx

    from quark_jax.models.config import ModelConfig
    from quark_jax.models.kv_cache import KVCache

    cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 64,
                                 "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "max_position_embeddings": 64})
    model = llama.LlamaForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    attn = model.model.layers[0].self_attn
    first, ids = jnp.array([0, 4], jnp.int32), jnp.array([[12], [6]], jnp.int32)
    g = rng("model-cache")

    def step(cache):
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda st, c: nnx.merge(graphdef, st)._cached(ids, c, jnp.int32(7), first))
        out, new = fn(state, cache)
        return np.asarray(out[:, -1], np.float32), new

    for kv_fp8 in (False, True):
        if kv_fp8:
            attn.enable_fp8_kv_cache()
            attn.k_scale[...], attn.v_scale[...] = jnp.float32(0.01), jnp.float32(0.004)
        mk = lambda: jnp.asarray(g.standard_normal((2, 16, 2, 16)) * (64 if kv_fp8 else 0.5),  # noqa: E731
                                 model.kv_cache_dtype)
        cache = KVCache(k=(mk(),), v=(mk(),))
        logits, caches = {}, {}
        for impl in ("xla", "pallas"):
            attn.decode_attention_impl = impl
            logits[impl], caches[impl] = step(cache)
        for a, b in zip(caches["xla"].k + caches["xla"].v, caches["pallas"].k + caches["pallas"].v):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
        np.testing.assert_array_equal(logits["pallas"].argmax(-1), logits["xla"].argmax(-1))
        diff = np.abs(logits["pallas"] - logits["xla"]).max()
        assert diff <= 2 ** -6 * np.abs(logits["xla"]).max(), (kv_fp8, diff)


def test_auto_runs_the_kernel_for_long_caches_on_a_gpu_only(monkeypatch):
    from quark_jax.kernels import _dispatch, tuning
    from quark_jax.kernels.attention import DECODE_PALLAS_MIN_SLOTS, decode_attention_impl

    bf16, fp8 = jnp.bfloat16, jnp.float8_e4m3fn
    assert decode_attention_impl("auto", 1 << 15, 128, bf16) == "xla"  # this CPU: the reference
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setattr(_dispatch, "pallas_interpret", lambda: False)
    assert decode_attention_impl("auto", DECODE_PALLAS_MIN_SLOTS, 128, bf16) == "pallas"
    assert decode_attention_impl("auto", 4096, 128, fp8) == "pallas"
    assert decode_attention_impl("auto", DECODE_PALLAS_MIN_SLOTS - 64, 128, bf16) == "xla"  # short: XLA measured faster
    assert decode_attention_impl("auto", 4096, 96, bf16) == "xla"  # head_dim not a power of two
    assert decode_attention_impl("xla", 4096, 128, bf16) == "xla"
    with pytest.raises(ValueError, match="decode attention impl"):
        decode_attention_impl("cuda", 4096, 128, bf16)
