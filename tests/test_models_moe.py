"""Mixture-of-experts decoders (Mixtral, Qwen3-MoE) and dense Qwen3 on amd-quark 0.13 exports
(tests/fixtures/quark_tiny_moe): logits vs HF / Quark / independent numpy references with vLLM's rules, routing
(ties, experts no token chose, batch > 1), the FP8 KV cache and generation, and the loader's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax.errors import CheckpointError, InvalidArgumentError, UnsupportedModelError
from quark_jax.io import SafetensorsFile
from quark_jax.models import from_pretrained
from quark_jax.models.config import ModelConfig
from quark_jax.models.moe import MoEBlock, route
from quark_jax.nn import QuarkExperts
from reference_llama import fp8_kv_qdq, llama_logits, vllm_fp8_linear, vllm_fused_fp8_linear
from reference_moe import (float_expert, moe_numpy, quark_ptpc_moe_reference, route_numpy, silu,
                           vllm_fp8_static_expert)

MOE = Path(__file__).parent / "fixtures" / "quark_tiny_moe"
MODELS = ("mixtral", "qwen3_moe", "qwen3")
VARIANTS = sorted(f"{m}/{v.name}" for m in MODELS for v in (MOE / m).iterdir()
                  if v.name != "float" and (v / "model.safetensors").exists())
KV = "mixtral/w_fp8_a_fp8_pertensor_static_kv_fp8"
PTPC = "w_fp8_perchannel_a_fp8_pertoken_dynamic"
W4A4 = "w_mxfp4_a_mxfp4"
EXACT = [v for v in VARIANTS if v != KV and not v.endswith((PTPC, W4A4))]

_models = {}


def model_of(variant, **options):
    key = (variant, tuple(sorted(options.items())))
    if key not in _models:
        _models[key] = from_pretrained(MOE / variant, **options)
    return _models[key]


def quark_exact(variant):
    """Quark's reference semantics: unfused projections and every expert's own scales."""
    return model_of(variant, fuse_projections=False, expert_scales="checkpoint")


def ref(variant, key):
    return SafetensorsFile(MOE / variant / "reference.safetensors").get(key).astype(np.float64)


TOKENS = SafetensorsFile(MOE / "mixtral" / "float" / "reference.safetensors").get("tokens")  # [2, 7]


def test_fixture_list():
    assert len(VARIANTS) == 13 and len(EXACT) == 6


@pytest.mark.parametrize("model", MODELS)
def test_float_models_match_hf(model):
    """HF's float32 eager logits (batch 2); Mixtral's float checkpoint uses block_sparse_moe.experts.{i}.w1/w2/w3."""
    m = model_of(f"{model}/float")
    out = np.asarray(m(TOKENS), np.float64)
    assert np.abs(out - ref(f"{model}/float", "logits")).max() <= 1e-5
    if model == "mixtral":
        assert m.model.layers[0].ffn_name == "block_sparse_moe"
    if model == "qwen3_moe":  # mlp_only_layers [1]: layer 1 dense, 0 and 2 sparse
        assert [type(l.mlp).__name__ for l in m.model.layers] == ["MoEBlock", "MLP", "MoEBlock"]


@pytest.mark.parametrize("variant", EXACT)
def test_static_and_mxfp4_fp8_variants_match_quark(variant):
    """FP8 per-tensor static and MXFP4 weights with a static FP8 input: Quark's logits (batch 2) within 1e-4 with
    Quark's semantics (expert_scales="checkpoint"); measured 1.2e-7 .. 2.7e-7."""
    out = np.asarray(quark_exact(variant)(TOKENS), np.float64)
    assert np.abs(out - ref(variant, "logits_reload")).max() <= 1e-4


def _numpy_logits(variant, linear, expert_of, kv_qdq=None):
    w = SafetensorsFile(MOE / variant / "model.safetensors").load_all()
    cfg = json.loads((MOE / variant / "config.json").read_text())
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    c = ModelConfig.from_dict(cfg)

    def mlp(i, h):
        if i not in c.moe_layers:
            return None
        prefix = f"model.layers.{i}.mlp"
        return moe_numpy(h, w[f"{prefix}.gate.weight"], c.num_experts_per_tok, c.norm_topk_prob,
                         expert_of(w, f"{prefix}.experts", c.num_experts))
    return llama_logits(w, cfg, TOKENS, linear=linear, mlp=mlp, kv_qdq=kv_qdq)


@pytest.mark.parametrize("model", ["mixtral", "qwen3_moe", "qwen3"])
def test_ptpc_variants_equal_vllm_per_token_reference(model):
    """FP8 per-channel weights, dynamic per-token input: vLLM's per-token quantization (numpy reference). Quark's
    reference is not per token in two places: its per-token quantizer (per_channel, ch_axis=1) on a [B, T, K]
    input takes one scale per position over the batch (hence logits_reload_rows, each row alone), and on an
    expert's 2-D [tokens, K] input one scale per input channel over the expert's tokens (shown by the next test).
    So the dense Qwen3 matches Quark's rows at 1e-4, the MoE models only within 0.03 (measured 1.1e-2 Mixtral,
    1.5e-2 Qwen3-MoE)."""
    variant = f"{model}/{PTPC}"
    out = np.asarray(model_of(variant)(TOKENS), np.float64)
    w = SafetensorsFile(MOE / variant / "model.safetensors").load_all()

    def linear(name, x):
        return vllm_fp8_linear(x, w[name + ".weight"], w[name + ".weight_scale"])

    def expert_of(w, prefix, n):
        def expert(e, x):
            p = f"{prefix}.{e}."
            g = linear(p + "gate_proj", x).astype(np.float32).astype(np.float64)
            u = linear(p + "up_proj", x).astype(np.float32).astype(np.float64)
            return linear(p + "down_proj", (silu(g) * u).astype(np.float32))
        return expert

    assert np.abs(out - _numpy_logits(variant, linear, expert_of)).max() <= 1e-4
    quark = np.abs(out - ref(variant, "logits_reload_rows")).max()
    assert quark <= (1e-4 if model == "qwen3" else 0.03)


@pytest.mark.parametrize("model", ["mixtral", "qwen3_moe"])
def test_quark_ptpc_moe_reference_is_per_channel_in_the_experts(model):
    """What the 0.03 above is: a numpy model of Quark's forward with its per-channel expert input quantization
    (and per-token attention inputs, rows alone) reproduces Quark's logits_reload_rows (measured 1.9e-7)."""
    variant = f"{model}/{PTPC}"
    w = SafetensorsFile(MOE / variant / "model.safetensors").load_all()
    cfg = json.loads((MOE / variant / "config.json").read_text())
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    c = ModelConfig.from_dict(cfg)
    got = quark_ptpc_moe_reference(w, cfg, TOKENS, c.moe_layers, c.num_experts_per_tok, c.norm_topk_prob,
                                   c.num_experts, llama_logits)
    assert np.abs(got - ref(variant, "logits_reload_rows")).max() <= 1e-5


@pytest.mark.parametrize("model", ["mixtral", "qwen3_moe", "qwen3"])
def test_w4a4_variants_close_to_quark(model):
    """W4A4 MXFP4: every layer is exact given Quark's inputs (checked with the layer inputs Quark's model computes
    for the Qwen3 fixture: max difference 0.0 on all 14 layers; the inputs themselves agree to 5e-7, f32
    summation order), but a 1-ulp difference in an activation may move an MXFP4 rounding (one E2M1 step is up to a
    third of the value), which the next layers amplify: measured 1.2e-7 (Qwen3-MoE), 8.2e-3 (Mixtral), 5.1e-2
    (Qwen3, |logits| <= 1.0) from Quark's logits. The bound is 0.06 of the logit range."""
    variant = f"{model}/{W4A4}"
    out = np.asarray(quark_exact(variant)(TOKENS), np.float64)
    want = ref(variant, "logits_reload")
    assert np.abs(out - want).max() <= 0.06 * np.abs(want).max()


def test_vllm_scales_fp8_kv_cache_and_generation():
    """The default (vLLM) rules on the FP8-KV Mixtral: q/k/v fused and requantized to their max scale, gate/up
    requantized per expert to their max, static input scales the max over experts, k/v written to an FP8 cache
    after RoPE -- equal to an independent numpy model with those rules (float64) within 1e-4; then generation
    (batch 2) through the cache."""
    model = model_of(KV)
    assert model.kv_fp8 and model.kv_cache_dtype == jnp.float8_e4m3fn
    out = np.asarray(model(TOKENS), np.float64)
    w = SafetensorsFile(MOE / KV / "model.safetensors").load_all()
    fused = vllm_fused_fp8_linear(w)

    def linear(name, x):
        if name.endswith(("q_proj", "k_proj", "v_proj")):
            return fused(name, x)
        return vllm_fp8_linear(x, w[name + ".weight"], w[name + ".weight_scale"], w[name + ".input_scale"])

    want = _numpy_logits(KV, linear, vllm_fp8_static_expert, kv_qdq=fp8_kv_qdq(w))
    assert np.abs(out - want).max() <= 1e-4
    # Quark QDQs k/v before RoPE and keeps per-expert scales: its logits are further away (measured 0.024)
    assert np.abs(out - ref(KV, "logits_reload")).max() > 1e-3
    gen = np.asarray(model.generate(TOKENS[:, :4], 4))
    full = np.asarray(model(gen[:, :-1]))
    np.testing.assert_array_equal(full[:, 3:].argmax(-1), gen[:, 4:])  # greedy: batch 2 through the FP8 cache


def test_expert_weights_are_stacked_per_scheme():
    fp8 = model_of("mixtral/w_fp8_a_fp8_pertensor_static").model.layers[0].mlp.experts
    gu = fp8.gate_up_proj.weight[...]
    assert gu.shape == (4, 128, 64) and gu.dtype == jnp.float8_e4m3fn
    assert fp8.gate_up_proj.weight_scale[...].shape == (4,) and fp8.gate_up_proj.input_scale[...].shape == ()
    exact = quark_exact("mixtral/w_fp8_a_fp8_pertensor_static").model.layers[0].mlp.experts
    assert exact.gate_up_proj.weight_scale[...].shape == (4, 128) and exact.down_proj.input_scale[...].shape == (4,)
    mx = quark_exact("qwen3_moe/w_mxfp4_a_mxfp4").model.layers[0].mlp.experts
    assert mx.gate_up_proj.weight[...].shape == (8, 64, 32) and mx.gate_up_proj.weight[...].dtype == jnp.uint8
    assert mx.down_proj.weight_scale[...].shape == (8, 64, 1)
    w = SafetensorsFile(MOE / "qwen3_moe" / W4A4 / "model.safetensors")
    np.testing.assert_array_equal(np.asarray(mx.gate_up_proj.weight[...][5, 32:]),
                                  w.get("model.layers.0.mlp.experts.5.up_proj.weight"))


# --- routing on a hand-built block ---------------------------------------------------------------------------------

def _block(seed=0):
    cfg = ModelConfig.from_dict({"model_type": "mixtral", "vocab_size": 16, "hidden_size": 32,
                                 "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "num_local_experts": 4, "num_experts_per_tok": 2})
    block = MoEBlock(cfg, "model.layers.0.mlp", dtype=jnp.float32)
    rng = np.random.default_rng(seed)
    w = {}
    for e in range(4):
        for proj, shape in (("gate_proj", (16, 32)), ("up_proj", (16, 32)), ("down_proj", (32, 16))):
            w[f"x.{e}.{proj}.weight"] = rng.normal(size=shape).astype(np.float32) * 0.3
    gu = np.stack([np.concatenate([w[f"x.{e}.gate_proj.weight"], w[f"x.{e}.up_proj.weight"]]) for e in range(4)])
    block.experts.gate_up_proj.weight.set_value(jnp.asarray(gu))
    block.experts.down_proj.weight.set_value(jnp.asarray(np.stack([w[f"x.{e}.down_proj.weight"] for e in range(4)])))
    block.experts.gate_up_proj.mark_loaded()
    block.experts.down_proj.mark_loaded()
    # router: expert 0 follows the sum of x, experts 1 and 2 tie (identical rows), expert 3 the opposite of 0
    r = np.stack([np.ones(32), 0.5 * np.ones(32), 0.5 * np.ones(32), -np.ones(32)]).astype(np.float32) * 0.2
    block.gate.weight.set_value(jnp.asarray(r))
    return block, w, r


def test_routing_ties_unchosen_experts_and_batch():
    block, w, r = _block()
    x = np.abs(np.random.default_rng(1).normal(size=(2, 3, 32))).astype(np.float32)
    x[1, 1:] *= -1  # two tokens route the other way
    weights, chosen = route(jnp.asarray(x.reshape(-1, 32) @ r.T), 2, normalize=True)
    # ties go to the lower index: expert 2 is never chosen (it ties with 1); positive tokens take 0 then 1,
    # negative ones 3 then 1
    assert np.asarray(chosen).tolist() == [[0, 1]] * 4 + [[3, 1]] * 2
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)
    ref_w, ref_e = route_numpy(x.reshape(-1, 32) @ r.T, 2, True)
    np.testing.assert_array_equal(np.asarray(chosen), ref_e)
    np.testing.assert_allclose(np.asarray(weights), ref_w, rtol=1e-6)  # the routing weights, not only their sum
    run = nnx.jit(lambda b, a: b(a))  # one compile for both calls
    out = np.asarray(run(block, jnp.asarray(x)), np.float64)
    want = moe_numpy(x, r, 2, True, float_expert(w, "x"))
    np.testing.assert_allclose(out, want, atol=2e-6, rtol=0)
    # only experts 0 and 1 run when every token is positive (two empty groups)
    out1 = np.asarray(run(block, jnp.asarray(np.abs(x))), np.float64)
    np.testing.assert_allclose(out1, moe_numpy(np.abs(x), r, 2, True, float_expert(w, "x")), atol=2e-6, rtol=0)


def test_route_without_renormalization():
    w, e = route(jnp.log(jnp.array([[0.1, 0.6, 0.3]])), 2, normalize=False)
    assert np.asarray(e).tolist() == [[1, 2]]
    np.testing.assert_allclose(np.asarray(w), [[0.6, 0.3]], rtol=1e-6)


# --- configs and errors ----------------------------------------------------------------------------------------------

def test_qwen3_moe_sparse_layers_from_config():
    base = {"model_type": "qwen3_moe", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 6, "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 8}
    assert ModelConfig.from_dict(dict(base, decoder_sparse_step=2)).moe_layers == (1, 3, 5)
    assert ModelConfig.from_dict(dict(base, mlp_only_layers=[0, 5])).moe_layers == (1, 2, 3, 4)
    assert ModelConfig.from_dict(dict(base, num_experts=0)).moe_layers == ()
    with pytest.raises(UnsupportedModelError, match="num_experts_per_tok"):
        ModelConfig.from_dict(dict(base, num_experts_per_tok=5))
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        ModelConfig.from_dict(dict(base, model_type="mixtral", sliding_window=4096))


def _copy_without(tmp_path, variant, drop=(), change=None):
    from safetensors.numpy import save_file

    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(MOE / variant / "config.json", d / "config.json")
    w = SafetensorsFile(MOE / variant / "model.safetensors").load_all()
    for k in drop:
        w.pop(k)
    if change:
        w.update(change)
    save_file(w, str(d / "model.safetensors"))
    return d


def test_quantized_experts_in_mixtral_original_spelling(tmp_path):
    """An FP8 export renamed to block_sparse_moe.experts.{i}.w1 / w3 / w2 (gate / up / down) and
    block_sparse_moe.gate loads into the same stacked params (no forward pass: the params decide the logits)."""
    v = "mixtral/w_fp8_a_fp8_pertensor_static"
    w = SafetensorsFile(MOE / v / "model.safetensors").load_all()
    names = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    renamed = {}
    for k, a in w.items():
        k2 = k.replace(".mlp.", ".block_sparse_moe.")
        for hf, old in names.items():
            k2 = k2.replace(f".{hf}.", f".{old}.")
        renamed[k2] = a
    d = _copy_without(tmp_path, v, drop=list(w), change=renamed)
    legacy = from_pretrained(d, expert_scales="checkpoint")
    ref_model = model_of(v, expert_scales="checkpoint")
    for i in range(2):
        a, b = legacy.model.layers[i].block_sparse_moe, ref_model.model.layers[i].mlp
        for x, y in ((a.gate.weight, b.gate.weight),) + tuple(
                (getattr(getattr(a.experts, p), n), getattr(getattr(b.experts, p), n))
                for p in ("gate_up_proj", "down_proj") for n in ("weight", "weight_scale", "input_scale")):
            np.testing.assert_array_equal(np.asarray(x[...]).astype(np.float32), np.asarray(y[...]).astype(np.float32))


def test_missing_expert_tensor_is_named(tmp_path):
    v = "mixtral/w_fp8_a_fp8_pertensor_static"
    p = "model.layers.1.mlp.experts.3.up_proj"
    d = _copy_without(tmp_path, v, drop=[f"{p}.weight", f"{p}.weight_scale", f"{p}.input_scale"])
    with pytest.raises(CheckpointError, match=f"{p}.weight"):
        from_pretrained(d)


def test_mismatched_expert_tensor_is_named(tmp_path):
    v = "qwen3_moe/w_fp8_perchannel_a_fp8_pertoken_dynamic"
    p = "model.layers.2.mlp.experts.6.gate_proj"
    w = SafetensorsFile(MOE / v / "model.safetensors")
    d = _copy_without(tmp_path, v, change={f"{p}.weight_scale": w.get(f"{p}.weight_scale")[:-1]})
    with pytest.raises(CheckpointError, match=f"{p}.weight_scale"):
        from_pretrained(d)


def test_experts_of_one_layer_with_different_schemes_are_an_error(tmp_path):
    v = "mixtral/w_fp8_a_fp8_pertensor_static"
    d = _copy_without(tmp_path, v)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["exclude"].append("model.layers.1.mlp.experts.2.*")  # one expert left float
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgumentError,
                       match=r"must share one scheme.*model.layers.1.mlp.experts.2.\w+_proj has none"):
        from_pretrained(d)


def test_moe_under_a_mesh_and_unknown_options_are_clear_errors():
    with pytest.raises(InvalidArgumentError, match="expert_scales: expected one of vllm, checkpoint"):
        from_pretrained(MOE / "mixtral" / "float", expert_scales="max")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with pytest.raises(InvalidArgumentError, match="mixture-of-experts"):
        from_pretrained(MOE / "mixtral" / "float", mesh=mesh)


def test_router_is_never_quantized_and_check_reads_both_spellings():
    from quark_jax import QuarkConfig, validate_checkpoint

    cfg = QuarkConfig.from_pretrained(MOE / "mixtral" / "w_fp8_a_fp8_pertensor_static")
    assert cfg.scheme_for("model.layers.0.mlp.gate") is None  # Quark's global FP8 config, but a router
    assert cfg.scheme_for("model.layers.0.mlp.experts.0.gate_proj") is not None
    assert validate_checkpoint(MOE / "mixtral" / "float") == []  # block_sparse_moe.experts.{i}.w1/w2/w3


def test_experts_module_rejects_unsupported_scheme():
    from quark_jax.errors import UnsupportedSchemeError
    from quark_jax.schemes import QuarkW8A8Int8

    with pytest.raises(UnsupportedSchemeError, match="m.experts.down_proj"):
        QuarkExperts(2, 32, (16,), scheme=QuarkW8A8Int8(), dtype=jnp.float32, name="m.experts.down_proj")


@pytest.mark.parametrize("rows,e", [(1, 8), (2, 8), (16, 8), (64, 128), (37, 4)])
def test_small_sort_is_the_stable_argsort(rows, e):
    """``moe.small_sort`` (the decode-sized routing sort by compares) gives numpy's stable argsort, its inverse and
    the expert counts, with ties (repeated experts) and experts no row chose; ``moe_experts`` takes it up to
    ``SMALL_SORT_ROWS`` rows and the argsort path above, with the same result bit for bit."""
    from quark_jax.models import moe

    rng = np.random.default_rng(rows + e)
    flat = rng.integers(0, min(e, max(2, rows // 3)), rows).astype(np.int32)  # repeats; high experts unused
    order, rank, sizes = (np.asarray(a) for a in jax.jit(moe.small_sort, static_argnums=1)(jnp.asarray(flat), e))
    want = np.argsort(flat, kind="stable")
    np.testing.assert_array_equal(order, want)
    np.testing.assert_array_equal(rank[want], np.arange(rows))
    np.testing.assert_array_equal(sizes, np.bincount(flat, minlength=e))
    assert order.dtype == rank.dtype == sizes.dtype == np.int32
    if rows % 2:
        return
    chosen = jnp.asarray(flat.reshape(rows // 2, 2) if rows > 1 else flat.reshape(1, 1))
    tok = jnp.asarray(rng.normal(size=(chosen.shape[0], 4)), jnp.float32)
    wts = jnp.asarray(rng.uniform(size=chosen.shape), jnp.float32)
    gate_up = lambda x, sizes, ex: jnp.concatenate([x * (ex[:, None] + 1.0), x - ex[:, None]], axis=1)
    down = lambda a, sizes, ex: a * (1.0 + 0.5 * ex[:, None]) + jnp.cumsum(sizes)[ex][:, None]
    small = moe.moe_experts(tok, wts, chosen, gate_up, down, e, 4)
    big = moe.SMALL_SORT_ROWS
    try:
        moe.SMALL_SORT_ROWS = 0
        sorted_path = moe.moe_experts(tok, wts, chosen, gate_up, down, e, 4)
    finally:
        moe.SMALL_SORT_ROWS = big
    np.testing.assert_array_equal(np.asarray(small), np.asarray(sorted_path))
