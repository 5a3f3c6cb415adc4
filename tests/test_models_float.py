"""quark_jax.models on float checkpoints: HF parity (fixture and a float64 numpy reference), cache, generation."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from conftest import FIXTURES
from quark_jax.io import SafetensorsFile
from quark_jax.models import (TRACE_COUNTS, LlamaForCausalLM, ModelConfig, UnsupportedModelError, from_pretrained)
from quark_jax.models.generation import cache_size, prefill_bucket
from quark_jax.models.rope import inverse_frequencies
from quark_jax.errors import CheckpointError as CheckpointMismatchError
from reference_llama import llama_logits, random_llama_weights, rope_inv_freq

TOKENS = np.array([[1, 5, 9, 200, 17]])


def write_checkpoint(d, cfg: dict, weights: dict):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(d / "model.safetensors"))
    return d


def fixture_float():
    f = SafetensorsFile(FIXTURES / "float.safetensors")
    weights = {n: f.get(n) for n in f.names() if not n.startswith("__")}
    cfg = json.loads((FIXTURES / "float_config.json").read_text())
    return cfg, weights, f.get("__logit_tokens__"), f.get("__logits_float__")


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    cfg, weights, _, _ = fixture_float()
    return write_checkpoint(tmp_path_factory.mktemp("float"), cfg, weights)


@pytest.fixture(scope="module")
def float_model(float_dir):
    return from_pretrained(float_dir)


def small_cfg(**kw):
    cfg = dict(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64,
               rope_theta=500.0, tie_word_embeddings=False)
    cfg.update(kw)
    return cfg


# --- parity ----------------------------------------------------------------------------------------------------

def test_float_model_matches_quark_float_logits(float_model):
    _, _, tokens, ref = fixture_float()
    np.testing.assert_array_equal(tokens, TOKENS)
    out = np.asarray(float_model(tokens))
    assert out.shape == (1, 5, 256) and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-5


def test_float_model_matches_numpy_reference_on_fixture(float_model):
    cfg, weights, tokens, _ = fixture_float()
    ref = llama_logits(weights, {**cfg, "rope_theta": 10000.0}, tokens)
    np.testing.assert_allclose(np.asarray(float_model(tokens)), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("case", ["qwen2_bias", "tied", "mha", "rope_llama3", "rope_linear_tf5", "head_dim"])
def test_architecture_variants_match_numpy_reference(tmp_path, case):
    kw, wkw, inv = {}, {}, None
    if case == "qwen2_bias":
        kw, wkw = dict(model_type="qwen2"), dict(qkv_bias=True)
    elif case == "tied":
        kw, wkw = dict(tie_word_embeddings=True), dict(tied=True)
    elif case == "mha":
        kw = dict(num_key_value_heads=4)
    elif case == "rope_llama3":
        kw = dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=16), rope_theta=50000.0)
        inv = rope_inv_freq(8, 50000.0, "llama3", 8.0, 1.0, 4.0, 16)
    elif case == "rope_linear_tf5":
        kw = dict(rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=1000.0))
        inv = rope_inv_freq(8, 1000.0, "linear", 2.0)
    elif case == "head_dim":
        kw = dict(head_dim=16)  # head_dim * heads != hidden_size
    cfg = small_cfg(**kw)
    if case == "rope_linear_tf5":
        del cfg["rope_theta"]
    weights = random_llama_weights(cfg, seed=3, **wkw)
    model = from_pretrained(write_checkpoint(tmp_path / case, cfg, weights))
    ids = np.array([[3, 14, 15, 92, 65, 35, 89], [79, 32, 38, 46, 26, 43, 38]])
    ref = llama_logits(weights, cfg, ids, inv_freq=inv)
    np.testing.assert_allclose(np.asarray(model(ids)), ref, atol=3e-5 * np.abs(ref).max(), rtol=0)
    if case == "qwen2_bias":
        assert model.model.layers[0].self_attn.qkv_proj.use_bias  # fused (the default layout)
        assert not model.model.layers[0].self_attn.o_proj.use_bias
    if case == "tied":
        assert not hasattr(model, "lm_head")


def test_llama3_rope_frequencies_keep_high_and_scale_low():
    cfg = ModelConfig.from_dict(small_cfg(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                            high_freq_factor=4.0,
                                                            original_max_position_embeddings=8192),
                                          rope_theta=500000.0, hidden_size=512, num_attention_heads=4))
    got = inverse_frequencies(cfg.rope, 128)
    base = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    wavelen = 2 * np.pi / base
    np.testing.assert_allclose(got[wavelen < 8192 / 4], base[wavelen < 8192 / 4], rtol=1e-6)
    np.testing.assert_allclose(got[wavelen > 8192], base[wavelen > 8192] / 8, rtol=1e-6)
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert mid.any() and np.all(got[mid] <= base[mid]) and np.all(got[mid] >= base[mid] / 8)


def test_bf16_model_rounds_weights_and_computes_in_bf16(float_dir):
    _, weights, tokens, ref = fixture_float()
    model = from_pretrained(float_dir, dtype=jnp.bfloat16, fuse_projections=False)
    w = model.model.layers[0].self_attn.q_proj.kernel[...]
    assert w.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(w, np.float32),
                                  weights["model.layers.0.self_attn.q_proj.weight"].T.astype(ml_dtypes.bfloat16)
                                  .astype(np.float32))
    out = model(tokens)
    assert out.dtype == jnp.bfloat16
    # bf16 activations through two layers: a few bf16 ulps of the logit range (|logits| <= 0.53, ulp 2**-9)
    assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.02


# --- cache and generation -----------------------------------------------------------------------------------------

def test_cached_prefill_and_decode_equal_full_forward(float_model):
    ids = np.array([[1, 5, 9, 200, 17, 33, 250, 4]])
    full = np.asarray(float_model(ids))
    cache = float_model.init_cache(1, 16)
    logits, cache = float_model.forward_cached(jnp.asarray(ids[:, :5]), cache, 0)
    np.testing.assert_allclose(np.asarray(logits), full[:, :5], atol=2e-6, rtol=0)
    for p in range(5, 8):
        step, cache = float_model.forward_cached(jnp.asarray(ids[:, p:p + 1]), cache, p)
        np.testing.assert_allclose(np.asarray(step[:, 0]), full[:, p], atol=2e-6, rtol=0)


def test_greedy_generate_equals_argmax_loop(float_model):
    ids = np.array([[1, 5, 9, 200, 17], [7, 7, 8, 9, 10]])
    out = np.asarray(float_model.generate(ids, 10))
    assert out.shape == (2, 15) and out.dtype == np.int32
    np.testing.assert_array_equal(out[:, :5], ids)
    # the uncached full pass, argmax at the last real token; right padding to one length (15) is harmless
    # because attention is causal, and keeps this loop at one compile
    seq = np.zeros((2, 15), np.int64)
    seq[:, :5] = ids
    for n in range(5, 15):
        seq[:, n] = np.asarray(float_model(seq))[:, n - 1].argmax(-1)
    np.testing.assert_array_equal(out, seq)


def test_generate_compiles_decode_once_and_is_deterministic(float_model):
    ids = np.array([[3, 1, 4, 1, 5, 9, 2]] * 3)  # batch 3: no other test compiles this shape
    before = dict(TRACE_COUNTS)
    first = np.asarray(float_model.generate(ids, 12))
    after_first = dict(TRACE_COUNTS)
    assert after_first["decode"] - before.get("decode", 0) == 1  # 11 decode steps, one trace
    assert after_first["prefill"] - before.get("prefill", 0) == 1
    second = np.asarray(float_model.generate(ids, 12))
    other_len = np.asarray(float_model.generate(ids[:, :6], 12))  # same prefill bucket (16), same cache (64)
    sampled = np.asarray(float_model.generate(ids, 12, temperature=0.8, top_k=5, seed=3))
    assert dict(TRACE_COUNTS) == after_first  # no new trace at all
    np.testing.assert_array_equal(first, second)
    assert other_len.shape == (3, 18) and sampled.shape == (3, 19)


def test_sampling_is_seeded_and_top_k_one_is_greedy(float_model):
    ids = np.array([[1, 5, 9]])
    greedy = np.asarray(float_model.generate(ids, 8))
    np.testing.assert_array_equal(np.asarray(float_model.generate(ids, 8, temperature=0.7, top_k=1, seed=5)), greedy)
    a = np.asarray(float_model.generate(ids, 8, temperature=5.0, seed=1))
    b = np.asarray(float_model.generate(ids, 8, temperature=5.0, seed=1))
    c = np.asarray(float_model.generate(ids, 8, temperature=5.0, seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # hot sampling over 256 tokens: two seeds agree on 8 tokens with ~0 odds


def test_top_k_samples_only_among_the_k_best(float_model):
    ids = np.array([[1, 5, 9, 200]])
    top3 = set(np.argsort(np.asarray(float_model(ids))[0, -1])[-3:].tolist())
    seen = {int(float_model.generate(ids, 1, temperature=100.0, top_k=3, seed=s)[0, -1]) for s in range(24)}
    assert seen <= top3 and len(seen) >= 2


def test_generate_stops_at_eos_and_pads(float_model):
    ids = np.array([[1, 5, 9, 200, 17]])
    free = np.asarray(float_model.generate(ids, 6))
    eos = int(free[0, 7])  # the third generated token
    out, stats = float_model.generate(ids, 6, eos_token_id=eos, return_stats=True)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[0, :8], free[0, :8])
    assert (out[0, 8:] == eos).all() and len(stats.decode_s) == 2
    assert stats.prompt_tokens == 5 and stats.prefill_bucket == 16 and stats.cache_len == 64


def test_stream_chunks_concatenate_to_generate(float_model):
    ids = np.array([[1, 5, 9, 200, 17], [7, 7, 8, 9, 10]])
    ref = np.asarray(float_model.generate(ids, 11))
    traced = TRACE_COUNTS["decode"]
    for chunk in (1, 3):
        chunks = list(float_model.generate_stream(ids, 11, chunk_size=chunk))
        assert chunks[0].shape == (2, 1) and all(c.shape[1] <= chunk and c.dtype == np.int32 for c in chunks)
        assert len(chunks) == 1 + -(-10 // chunk)  # the first token, then chunks of at most chunk_size
        np.testing.assert_array_equal(np.concatenate(chunks, axis=1), ref[:, 5:])
    assert TRACE_COUNTS["decode"] == traced  # every chunk size <= DECODE_CAPACITY runs generate's one program
    sampled = np.asarray(float_model.generate(ids, 11, temperature=3.0, seed=4))
    np.testing.assert_array_equal(np.asarray(float_model.generate(ids, 11, temperature=3.0, seed=4, chunk_size=3)),
                                  sampled)


def test_eos_list_stops_each_row_and_the_stream(float_model):
    ids = np.array([[1, 5, 9, 200, 17], [7, 7, 8, 9, 10]])
    free = np.asarray(float_model.generate(ids, 8))
    eos_a, eos_b = int(free[0, 6]), int(free[1, 8])  # row 0 stops at its 2nd new token, row 1 at its 4th
    if eos_a in free[1, 5:9].tolist() or eos_b in free[0, 5:7].tolist():
        pytest.skip("fixture tokens collide")
    out = np.asarray(float_model.generate(ids, 8, eos_token_id=[eos_a, eos_b]))
    np.testing.assert_array_equal(out[0, :7], free[0, :7])
    assert (out[0, 7:] == eos_a).all()  # padded with the first id of the list
    np.testing.assert_array_equal(out[1, :9], free[1, :9])
    assert (out[1, 9:] == eos_a).all()
    chunks = list(float_model.generate_stream(ids, 8, eos_token_id=[eos_a, eos_b], chunk_size=3))  # compiled above
    assert sum(c.shape[1] for c in chunks) == 4  # stops once both rows are done, not after 8
    with pytest.raises(ValueError, match="eos_token_id"):
        float_model.generate(ids, 2, eos_token_id=[])


def test_prompts_of_different_lengths_equal_one_at_a_time(float_model):
    prompts = [[1, 5, 9, 200, 17, 33, 4], [7, 8], [250, 3, 3, 3]]
    alone = [np.asarray(float_model.generate(np.array([p]), 6))[0, len(p):] for p in prompts]
    out = np.asarray(float_model.generate(prompts, 6))
    assert out.shape == (3, 13)
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(out[i, 7 - len(p):7], p)
        np.testing.assert_array_equal(out[i, 7:], alone[i])
    # the same batch as a left-padded array with a mask
    ids, mask = np.zeros((3, 7), np.int32), np.zeros((3, 7), np.int32)
    for i, p in enumerate(prompts):
        ids[i, 7 - len(p):], mask[i, 7 - len(p):] = p, 1
    np.testing.assert_array_equal(np.asarray(float_model.generate(ids, 6, attention_mask=mask)), out)
    with pytest.raises(ValueError, match="row 0 is not left-padded"):
        float_model.generate(ids, 2, attention_mask=np.array([[1, 0, 1, 1, 1, 1, 1]] + [[1] * 7] * 2))


def test_attention_in_query_blocks_equals_one_block(monkeypatch):
    from quark_jax.models import llama

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 24, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, 32, 2, 8)), jnp.float32) for _ in range(2))
    slots, first = jnp.arange(24) + 3, jnp.array([0, 5])
    whole = np.asarray(llama.attend(q, k, v, slots, first))
    monkeypatch.setattr(llama, "ATTENTION_SCORE_BYTES", 4 * 2 * 4 * 32 * 5)  # blocks of 4 queries, 6 blocks
    np.testing.assert_allclose(np.asarray(llama.attend(q, k, v, slots, first)), whole, rtol=1e-6, atol=1e-6)
    # numpy float64 reference for one query
    qq, kk, vv = (np.asarray(a, np.float64) for a in (q, k, v))
    s = kk[1, 5:3 + 10 + 1, 1] @ qq[1, 10, 3] / np.sqrt(8)  # row 1, query 10 (slot 13), head 3 -> kv head 1
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    np.testing.assert_allclose(whole[1, 10, 3], p @ vv[1, 5:14, 1], rtol=1e-5, atol=1e-6)


def test_memory_check_names_the_sizes():
    from quark_jax.models.generation import DeviceMemoryError, check_fits

    class Dev:
        device_kind = "Test GPU"

        def memory_stats(self):
            return {"bytes_limit": 8 << 30, "bytes_in_use": 7 << 30}

    check_fits(512 << 20, "a cache", Dev())
    with pytest.raises(DeviceMemoryError, match=r"a cache needs 2.00 GiB but Test GPU has 1.00 GiB free"):
        check_fits(2 << 30, "a cache", Dev())


def test_bucket_and_cache_sizes():
    assert prefill_bucket(1, 64) == 16 and prefill_bucket(16, 64) == 16 and prefill_bucket(33, 128) == 64
    assert cache_size(128, 128) == 128 and cache_size(129, 4096) == 192


# --- FP8 KV cache on a float model ---------------------------------------------------------------------------------

def test_fp8_kv_cache_matches_reference_with_kv_qdq(float_dir):
    cfg, weights, tokens, _ = fixture_float()
    mcfg = ModelConfig.from_pretrained(float_dir)
    model = nnx.eval_shape(lambda: LlamaForCausalLM(mcfg, rngs=nnx.Rngs(0), kv_fp8=True))
    from quark_jax.nn import load_weights

    load_weights(model, float_dir)  # no KV scales in the checkpoint -> 1.0 (SPEC section 6)
    assert float(model.model.layers[0].self_attn.k_scale[...]) == 1.0
    scales = {(0, "k"): 0.004, (0, "v"): 0.002, (1, "k"): 0.01, (1, "v"): 0.0005}
    for (i, which), s in scales.items():
        getattr(model.model.layers[i].self_attn, which + "_scale").set_value(jnp.float32(s))

    post_rope = {}

    def kv_qdq(i, which, x):
        post_rope[(i, which)] = x  # the reference's keys / values after RoPE, float64
        s = np.float32(scales[(i, which)])
        q = np.clip(x.astype(np.float32) / s, -448, 448).astype(ml_dtypes.float8_e4m3fn)
        return q.astype(np.float32) * s

    ref = llama_logits(weights, {**cfg, "rope_theta": 10000.0}, tokens, kv_qdq=kv_qdq)
    plain = llama_logits(weights, {**cfg, "rope_theta": 10000.0}, tokens)
    out = np.asarray(model(tokens))
    # the reference rounds k/v computed in float64, so an element near a rounding boundary may land one fp8 step
    # apart; the logits agree far better than the fp8 effect itself
    assert np.abs(out - ref).max() < 0.1 * np.abs(plain - ref).max()
    assert model.init_cache(1, 8).k[0].dtype == jnp.float8_e4m3fn
    cache = model.init_cache(1, 16)
    logits, cache = model.forward_cached(jnp.asarray(tokens), cache, 0)
    np.testing.assert_allclose(np.asarray(logits), out, atol=1e-6, rtol=0)
    # the cache holds fp8(k / k_scale) after RoPE: its codes are those of the reference's post-RoPE keys (layer 0's
    # keys do not depend on the cache's rounding), up to one fp8 step where float32 and float64 straddle a boundary
    codes = np.asarray(cache.k[0][0, :5].astype(jnp.float32)).astype(np.float64)
    want = np.clip(post_rope[(0, "k")][0] / np.float32(0.004), -448, 448).astype(ml_dtypes.float8_e4m3fn)
    want = want.astype(np.float64)
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 2.0 ** -6))) - 3)
    assert codes.shape == want.shape and np.abs(want).max() > 16  # a real range of codes, not zeros
    assert np.all(np.abs(codes - want) <= step) and np.mean(codes == want) > 0.95


# --- bad input ----------------------------------------------------------------------------------------------------

def test_token_id_out_of_range_is_a_clear_error(float_model):
    with pytest.raises(ValueError, match=r"input_ids: token id 300 at \[0, 3\] is out of range for vocab_size 256"):
        float_model(np.array([[1, 2, 3, 300]]))
    with pytest.raises(ValueError, match=r"token id -1 at \[1, 0\]"):
        float_model.generate(np.array([[1, 2], [-1, 3]]), 2)
    with pytest.raises(ValueError, match="max_position_embeddings 128"):
        float_model.generate(np.array([[1, 2]]), 200)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"config.json: model_type 'gpt2' is not supported "
                                                    r"\(supported: llama, qwen2, mistral, qwen3, mixtral, qwen3_moe\)"):
        ModelConfig.from_dict({"model_type": "gpt2", "vocab_size": 5})
    d = write_checkpoint(tmp_path / "x", small_cfg(hidden_act="gelu"), {"a": np.zeros(1, np.float32)})
    with pytest.raises(UnsupportedModelError, match="hidden_act 'gelu'"):
        from_pretrained(d)
    with pytest.raises(UnsupportedModelError, match="rope_type 'yarn'"):
        ModelConfig.from_dict(small_cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def test_checkpoint_layer_names_must_match_the_model(tmp_path):
    cfg = small_cfg()
    weights = random_llama_weights(cfg, seed=1)
    extra = dict(weights, **{"model.layers.2.mlp.gate_proj.weight": np.zeros((48, 32), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"tensor model.layers.2.mlp.gate_proj.weight has no matching "
                                                      r"layer in the model"):
        from_pretrained(write_checkpoint(tmp_path / "extra", cfg, extra))
    missing = {k: v for k, v in weights.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors: model.layers.1.self_attn.v_proj.weight"):
        from_pretrained(write_checkpoint(tmp_path / "missing", cfg, missing), fuse_projections=False)
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors: model.layers.1.self_attn.v_proj.weight "
                                                      r"\(for DenseLinear model.layers.1.self_attn.qkv_proj.kernel\)"):
        from_pretrained(tmp_path / "missing")  # the fused layout names the absent shard
    bad = dict(weights, **{"model.layers.0.mlp.up_proj.weight": np.zeros((48, 31), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"up_proj.weight has shape \[48, 31\], expected \[48, 32\]"):
        from_pretrained(write_checkpoint(tmp_path / "shape", cfg, bad), fuse_projections=False)
    with pytest.raises(CheckpointMismatchError, match=r"shards .*up_proj.weight.* have shapes \[\[48, 32\], \[48, 31\]\]"):
        from_pretrained(tmp_path / "shape")
    fp8 = dict(weights, **{"model.layers.0.mlp.up_proj.weight":
                           weights["model.layers.0.mlp.up_proj.weight"].astype(ml_dtypes.float8_e4m3fn)})
    with pytest.raises(CheckpointMismatchError, match=r"float8_e4m3fn is a quantized tensor.*quantize_model"):
        from_pretrained(write_checkpoint(tmp_path / "fp8", cfg, fp8))


def test_sharded_checkpoint_with_progress_line(tmp_path, capsys):
    cfg, weights, tokens, ref = fixture_float()
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, part in shards.items():
        save_file({n: weights[n] for n in part}, str(d / fname))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f for f, part in shards.items() for n in part}}))
    model = from_pretrained(d, progress=True)
    assert np.abs(np.asarray(model(tokens)) - ref).max() <= 1e-5
    err = capsys.readouterr().err
    assert "loading sharded [" in err and "100%" in err and "layers" in err


def test_fused_projections_on_a_float_checkpoint(float_dir):
    _, _, tokens, ref = fixture_float()
    model = from_pretrained(float_dir, fuse_projections=True)
    assert model.model.layers[0].self_attn.qkv_proj.kernel[...].shape == (64, 128)
    assert np.abs(np.asarray(model(tokens)) - ref).max() <= 1e-5


def test_layers_of_one_structure_are_traced_once(float_model, monkeypatch):
    """Decoder layers of the same structure share one traced (and lowered) layer function: the jaxpr calls one
    ``_layer_jit`` body once per layer; the logits equal tracing each layer inline bit for bit; with runtime
    checks on (messages name each layer) every layer is traced inline."""
    import jax
    from flax import nnx

    from quark_jax.models import llama
    from quark_jax.runtime_checks import checking

    layers = float_model.model.layers
    graphdef, state = nnx.split(float_model)
    ids = jnp.asarray([[1, 5, 9, 200, 17]], jnp.int32)
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)._logits(ids))(state)
    names = ("_layer_jit", "_layer_jit_static_start")  # the latter: a Python-int start (the fused prefill)
    calls = [e for e in jaxpr.eqns if e.primitive.name in ("pjit", "jit") and e.params["name"] in names]
    assert len(calls) == len(layers) >= 2
    assert len({id(e.params["jaxpr"]) for e in calls}) == 1  # one trace serves every layer
    shared = np.asarray(float_model(ids))
    monkeypatch.setattr(llama, "_shared_layer_graphs", lambda layers, mesh: None)
    inline = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)._logits(ids))(state))
    np.testing.assert_array_equal(shared, inline)
    monkeypatch.undo()
    with checking():
        assert llama._shared_layer_graphs(layers, None) is None
    assert llama._shared_layer_graphs(layers, object()) is None  # on a mesh: inline
    with jax.disable_jit():  # eager: a wrapper that records layer values must see concrete arrays
        assert llama._shared_layer_graphs(layers, None) is None


def test_a_layer_wrapped_by_a_recording_module_runs_eagerly(float_dir):
    """The notebook's pattern: a user module holding a dict (unhashable static attribute) wraps a projection and
    records its input under ``jax.disable_jit()``; the model runs (no layer-graph sharing) and the recorded input
    is the concrete array the projection saw, equal to the layer's output it produced."""
    import jax
    from flax import nnx

    from quark_jax.models import llama

    class Tap(nnx.Module):
        def __init__(self, inner, store):
            self.inner, self.store = inner, store

        def __call__(self, x):
            self.store["x"] = x
            return self.inner(x)

    model = from_pretrained(float_dir, fuse_projections=False)
    store = {}
    for layer in model.model.layers:
        layer.mlp.down_proj = Tap(layer.mlp.down_proj, store)
    assert llama._shared_layer_graphs(model.model.layers, None) is None  # unhashable: every layer inline
    _, _, tokens, ref = fixture_float()
    with jax.disable_jit():
        logits = model(tokens)
    assert isinstance(store["x"], jax.Array) and store["x"].shape[-1] == model.config.intermediate_size
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-5


def test_prefill_alone_compiles_without_xla_triton_gemm_on_gpu(monkeypatch):
    """The GPU prefill program turns XLA's Triton GEMM off (autotuning cost, benchmarks/NOTES.md "Session 8"); the
    decode chunk keeps XLA's defaults (its Triton GEMMs are faster); other backends get no GPU options."""
    from quark_jax.models import generation

    assert generation.prefill_compiler_options() == {} == generation.decode_compiler_options()  # CPU here
    monkeypatch.setattr(generation.jax, "default_backend", lambda: "gpu")
    assert generation.prefill_compiler_options() == {"xla_gpu_enable_triton_gemm": False}
    assert generation.decode_compiler_options() == {}
