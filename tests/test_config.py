"""QuarkConfig (SPEC section 4): resolution order, exclusion, fused shards, KV cache, and the dispatch table."""

import copy

import pytest

from conftest import VARIANTS, quant_config
from quark_jax.schemes import QuarkOCP_MX, QuarkW4A16Int4, QuarkW8A8Fp8PerBlock
from quark_jax import QuarkConfig, QuarkConfigError, UnsupportedSchemeError
from quark_jax.checkpoint import kv_scale_tensor_names, shard_paths
from quark_jax.config import KVCacheConfig, LayerQuantConfig, TensorQuantSpec
from quark_jax.schemes import (QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4, QuarkW8A8Fp8,
                               QuarkW8A8Int8)


def spec(dtype, qscheme=None, is_dynamic=False, symmetric=True, **kw):
    d = {"dtype": dtype, "qscheme": qscheme, "is_dynamic": is_dynamic, "symmetric": symmetric,
         "observer_cls": "Whatever", "round_method": "half_even"}  # ignored fields are fine
    d.update(kw)
    return d


FP8_T = spec("fp8_e4m3", "per_tensor")
FP8_C = spec("fp8_e4m3", "per_channel", ch_axis=0)
FP8_TOK = spec("fp8_e4m3", "per_channel", is_dynamic=True, ch_axis=1)
FP8_DYN_T = spec("fp8_e4m3", "per_tensor", is_dynamic=True)
I8_T = spec("int8", "per_tensor")
I8_C = spec("int8", "per_channel")
I8_TOK = spec("int8", "per_channel", is_dynamic=True, ch_axis=1)
MX = spec("fp4", "per_group", group_size=32, scale_format="e8m0", symmetric=None, scale_calculation_mode="even")
MX_DYN = dict(MX, is_dynamic=True)
FP6 = dict(MX, dtype="fp6_e2m3")
FP6_E3 = dict(MX, dtype="fp6_e3m2")
MXFP8 = dict(MX, dtype="fp8_e4m3")
BLOCK_W = spec("fp8_e4m3", "per_block", block_size=[128, 128])
BLOCK_IN = spec("fp8_e4m3", "per_group", is_dynamic=True, group_size=128)


def layer_cfg(weight, inp, **kw):
    return {"weight": weight, "input_tensors": inp, "output_tensors": kw.get("output"), "bias": kw.get("bias")}


def config(global_cfg=None, **top):
    qc = {"quant_method": "quark", "export": {"kv_cache_group": []}, "global_quant_config": global_cfg}
    qc.update(top)
    return qc


# (weight spec, input spec) -> expected scheme (class, attributes) or the error type and message
DISPATCH_TABLE = [
    (FP8_T, FP8_T, QuarkW8A8Fp8, dict(weight_qscheme="per_tensor", activation="static")),
    (FP8_C, FP8_T, QuarkW8A8Fp8, dict(weight_qscheme="per_channel", activation="static")),
    (FP8_C, FP8_TOK, QuarkW8A8Fp8, dict(weight_qscheme="per_channel", activation="dynamic_per_token")),
    (FP8_T, FP8_DYN_T, QuarkW8A8Fp8, dict(weight_qscheme="per_tensor", activation="dynamic_per_tensor")),
    (FP8_T, dict(FP8_T, is_dynamic=None), QuarkW8A8Fp8, dict(activation="static")),  # missing is_dynamic: static
    (I8_C, I8_T, QuarkW8A8Int8, dict(qscheme="per_channel", input_symmetric=True)),
    (I8_T, dict(I8_T, symmetric=False), QuarkW8A8Int8, dict(qscheme="per_tensor", input_symmetric=False)),
    (I8_C, dict(I8_T, symmetric=None), QuarkW8A8Int8, dict(input_symmetric=False)),  # missing: asymmetric
    (I8_C, I8_TOK, QuarkW8A8Int8, dict(qscheme="per_channel", input_symmetric=True, is_static_input_scheme=False)),
    (I8_T, dict(I8_TOK, symmetric=False), QuarkW8A8Int8, dict(input_symmetric=False, is_static_input_scheme=False)),
    (MX, MX_DYN, QuarkW4A4MXFP4, {}),
    (MX, dict(MX_DYN, is_dynamic=None), QuarkW4A4MXFP4, {}),  # "not explicitly static"
    (MX, FP8_T, QuarkW4A8MXFP4Fp8, {}),
    (MX, None, QuarkW4A16MXFP4, {}),
    (FP6, dict(FP6, is_dynamic=True), QuarkOCP_MX, dict(weight_dtype="fp6_e2m3", input_dtype="fp6_e2m3")),
    (FP6_E3, None, QuarkOCP_MX, dict(weight_dtype="fp6_e3m2", input_dtype=None)),
    (MX, dict(FP6, is_dynamic=True), QuarkOCP_MX, dict(weight_dtype="fp4", input_dtype="fp6_e2m3")),
    (MXFP8, dict(MXFP8, is_dynamic=True), QuarkOCP_MX, dict(weight_dtype="fp8_e4m3", input_dtype="fp8_e4m3")),
    (FP6, FP8_DYN_T, QuarkOCP_MX, dict(input_dtype="fp8_per_tensor")),
    (BLOCK_W, BLOCK_IN, QuarkW8A8Fp8PerBlock, dict(block=(128, 128), scale_format="float")),
    (dict(BLOCK_W, scale_type="float8_e8m0fnu"), BLOCK_IN, QuarkW8A8Fp8PerBlock, dict(scale_format="e8m0")),
    (spec("int4", "per_group", group_size=128), None, QuarkW4A16Int4, dict(signed=True, group_size=128)),
    (spec("uint4", "per_group", group_size=64, symmetric=False), None, QuarkW4A16Int4,
     dict(signed=False, group_size=64, pack_method="reorder")),
    (spec("int4", "per_channel", ch_axis=0), None, QuarkW4A16Int4, dict(group_size=-1)),
    # errors: each quotes the weight and input specs
    (FP8_T, dict(FP8_T, qscheme="per_channel"), UnsupportedSchemeError, "input config: {dtype: 'fp8_e4m3', qscheme: "
     "'per_channel', is_dynamic: False"),                                      # static per-channel input
    (dict(FP8_T, symmetric=False), FP8_T, UnsupportedSchemeError, "Weight config: {dtype: 'fp8_e4m3', qscheme: "
     "'per_tensor', is_dynamic: False, symmetric: False}"),                    # asymmetric FP8 weights
    (dict(FP8_T, is_dynamic=True), FP8_T, UnsupportedSchemeError, "is_dynamic: True"),  # dynamic weights
    (spec("fp8_e4m3", "per_group", group_size=128), FP8_TOK, UnsupportedSchemeError, "'per_group'"),  # block FP8
    (FP8_T, None, UnsupportedSchemeError, "input config: None"),           # FP8 weight-only
    (I8_C, dict(I8_T, is_dynamic=True), UnsupportedSchemeError, "int8"),   # dynamic per-tensor INT8 input
    (dict(I8_C, symmetric=False), I8_T, UnsupportedSchemeError, "symmetric: False"),  # asymmetric INT8 weights
    (I8_C, FP8_T, UnsupportedSchemeError, "Weight config: {dtype: 'int8'"),
    (MX, dict(MX_DYN, is_dynamic=False), UnsupportedSchemeError, "fp4"),   # static MX input scales
    (dict(MX, group_size=16), MX_DYN, UnsupportedSchemeError, "group_size: 16"),
    (dict(MX, scale_format=None), MX_DYN, UnsupportedSchemeError, "fp4"),
    (spec("int4", "per_group", group_size=128), FP8_T, UnsupportedSchemeError, "'int4'"),  # W4A8: not here
    (spec("uint4", "per_group", group_size=128, symmetric=True), None, UnsupportedSchemeError, "'uint4'"),
    (FP6, dict(FP6, is_dynamic=False), UnsupportedSchemeError, "fp6_e2m3"),  # static MX input scales
    (BLOCK_W, dict(BLOCK_IN, group_size=64), UnsupportedSchemeError, "per_block"),  # group != block cols
    (dict(MX, group_size=16, scale_format="fp8_e4m3"), dict(MX, group_size=16, scale_format="fp8_e4m3",
     is_dynamic=True), UnsupportedSchemeError, "group_size: 16"),  # fp4/16 without Quark's fp8 scale spec
    (dict(BLOCK_W, block_size=None), BLOCK_IN, UnsupportedSchemeError, "per_block"),
    (spec("uint4", "per_group", group_size=128), spec("bfloat16"), UnsupportedSchemeError, "'uint4'"),
]


@pytest.mark.parametrize("weight,inp,expected,detail", DISPATCH_TABLE)
def test_dispatch_table(weight, inp, expected, detail):
    cfg = QuarkConfig.from_dict(config(layer_cfg(weight, inp)))
    path = "model.layers.3.mlp.down_proj"
    if expected is UnsupportedSchemeError:
        with pytest.raises(UnsupportedSchemeError) as e:
            cfg.scheme_for(path)
        msg = str(e.value)
        assert msg.startswith(f"layer {path}: no quark_jax scheme") and "global_quant_config" in msg
        assert detail in msg, msg
        assert cfg.plan(path).status == "unsupported" and cfg.plan(path).reason == msg
        return
    scheme = cfg.scheme_for(path)
    assert type(scheme) is expected
    for k, v in detail.items():
        assert getattr(scheme, k) == v
    # the layer-config level entry gives the same
    lc = LayerQuantConfig.from_dict(layer_cfg(weight, inp), "x")
    assert lc.scheme(path) == scheme
    assert scheme.get_min_capability() == {QuarkW8A8Fp8: 89, QuarkW8A8Int8: 75}.get(expected, 70)


def test_fixture_configs_dispatch():
    expected = {
        "w_fp8_a_fp8_pertensor_static": QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"),
        "bf16_w_fp8_a_fp8_pertensor_static": QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"),
        "w_fp8_a_fp8_pertensor_static_kv_fp8": QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"),
        "w_fp8_perchannel_a_fp8_pertoken_dynamic": QuarkW8A8Fp8(weight_qscheme="per_channel", activation="dynamic_per_token"),
        "bf16_w_fp8_perchannel_a_fp8_pertoken_dynamic": QuarkW8A8Fp8(weight_qscheme="per_channel", activation="dynamic_per_token"),
        "w_int8_perchannel_sym_a_int8_pertensor_static_sym": QuarkW8A8Int8(qscheme="per_channel", input_symmetric=True),
        "w_int8_perchannel_sym_a_int8_pertensor_static_asym": QuarkW8A8Int8(qscheme="per_channel", input_symmetric=False),
        "w_mxfp4_a_mxfp4": QuarkW4A4MXFP4(),
        "w_mxfp4_a_fp8_pertensor_static": QuarkW4A8MXFP4Fp8(),
        "w_mxfp4_weight_only": QuarkW4A16MXFP4(),
    }
    assert sorted(expected) == sorted(VARIANTS)
    for variant, scheme in expected.items():
        cfg = QuarkConfig.from_dict(quant_config(variant))
        for path in ("model.layers.1.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj",
                     "model.layers.0.mlp.gate_up_proj", "model.layers.1.mlp.down_proj"):
            assert cfg.scheme_for(path) == scheme, (variant, path)
        assert cfg.scheme_for("lm_head") is None and cfg.scheme_for("model.embed_tokens") is None
        assert (cfg.kv_cache is not None) == variant.endswith("kv_fp8")


def test_options_reach_the_schemes():
    qc = quant_config("w_int8_perchannel_sym_a_int8_pertensor_static_asym")
    cfg = QuarkConfig.from_dict(qc, impl="xla", azp_mode="checkpoint")
    s = cfg.scheme_for("model.layers.0.mlp.up_proj")
    assert s.impl == "xla" and s.azp_mode == "checkpoint"
    assert cfg.with_options(azp_mode="vllm").scheme_for("model.layers.0.mlp.up_proj").azp_mode == "vllm"
    mx = QuarkConfig.from_dict(quant_config("w_mxfp4_a_mxfp4"), dequantize_mxfp4_weight=True)
    assert mx.scheme_for("model.layers.0.mlp.up_proj").dequantize_at_load
    fnuz = QuarkConfig.from_dict(quant_config("w_fp8_a_fp8_pertensor_static"), fp8_dtype="float8_e4m3fnuz")
    assert fnuz.scheme_for("model.layers.0.mlp.up_proj").fp8_dtype == "float8_e4m3fnuz"
    with pytest.raises(ValueError, match="azp_mode: expected 'vllm' or 'checkpoint', got 'quark'"):
        QuarkConfig.from_dict(qc, azp_mode="quark")
    with pytest.raises(ValueError, match="impl: expected one of"):
        QuarkConfig.from_dict(qc, impl="triton")


def test_resolution_order_layer_then_type_then_global():
    fp8 = layer_cfg(FP8_T, FP8_T)
    int8 = layer_cfg(I8_C, I8_T)
    mx = layer_cfg(MX, MX_DYN)
    cfg = QuarkConfig.from_dict(config(fp8,
                                       layer_quant_config={"*.mlp.*": int8, "model.layers.1.*": mx},
                                       layer_type_quant_config={"Linear": mx}))
    # first matching key in dict order wins; "*" crosses dots
    assert type(cfg.scheme_for("model.layers.1.mlp.down_proj")) is QuarkW8A8Int8
    assert type(cfg.scheme_for("model.layers.1.self_attn.o_proj")) is QuarkW4A4MXFP4
    assert cfg.plan("model.layers.1.self_attn.o_proj").source == "layer_quant_config['model.layers.1.*']"
    # then layer_type_quant_config (by the module type name), then global
    assert type(cfg.scheme_for("model.layers.0.self_attn.o_proj")) is QuarkW4A4MXFP4
    assert cfg.plan("model.layers.0.self_attn.o_proj").source == "layer_type_quant_config['Linear']"
    assert type(cfg.scheme_for("model.layers.0.self_attn.o_proj", layer_type="Conv2d")) is QuarkW8A8Fp8
    assert cfg.plan("model.layers.0.self_attn.o_proj", layer_type="Conv2d").source == "global_quant_config"
    # missing tables are empty (vLLM would crash); a missing global config leaves other layers unquantized
    bare = QuarkConfig.from_dict({"quant_method": "quark", "export": {}, "global_quant_config": fp8})
    assert type(bare.scheme_for("a.b.c")) is QuarkW8A8Fp8 and bare.exclude == () and bare.kv_cache is None
    only_layers = QuarkConfig.from_dict({"quant_method": "quark", "export": {}, "layer_quant_config": {"*up_proj": mx}})
    assert only_layers.scheme_for("m.mlp.down_proj") is None and only_layers.plan("m.mlp.down_proj").status == "unquantized"
    assert type(only_layers.scheme_for("m.mlp.up_proj")) is QuarkW4A4MXFP4
    # a layer config without any spec means unquantized
    none = QuarkConfig.from_dict(config(fp8, layer_quant_config={"*o_proj": layer_cfg(None, None)}))
    assert none.scheme_for("x.o_proj") is None


def test_exclude_exact_regex_and_wildcards():
    cfg = QuarkConfig.from_dict(config(layer_cfg(FP8_T, FP8_T), exclude=[
        "lm_head", "re:model\\.layers\\.0\\..*", "*.mlp.down_proj", "model.layers.2.self_attn.q_proj"]))
    assert cfg.scheme_for("lm_head") is None and cfg.plan("lm_head").source == "exclude 'lm_head'"
    assert cfg.scheme_for("model.layers.0.mlp.up_proj") is None                # regex, anchored at the start
    assert cfg.scheme_for("xmodel.layers.0.mlp.up_proj") is not None           # re.match: not a search
    assert cfg.scheme_for("model.layers.7.mlp.down_proj") is None              # fnmatch wildcard (ours)
    assert cfg.scheme_for("model.layers.7.mlp.up_proj") is not None
    assert cfg.scheme_for("model.layers.0.self_attn.qkv_proj") is None         # all shards excluded
    assert cfg.is_excluded("model.layers.0.mlp.gate_up_proj")
    with pytest.raises(QuarkConfigError, match=r"layer model.layers.2.self_attn.qkv_proj: its fused shards disagree "
                       r"on exclusion: \['model.layers.2.self_attn.q_proj'\] are excluded .* but "
                       r"\['model.layers.2.self_attn.k_proj', 'model.layers.2.self_attn.v_proj'\] are not"):
        cfg.scheme_for("model.layers.2.self_attn.qkv_proj")


def test_embeddings_and_lm_head_only_when_asked():
    fp8 = layer_cfg(FP8_T, FP8_T)
    cfg = QuarkConfig.from_dict(config(fp8))  # no exclude at all: still not quantized by the global config
    assert cfg.scheme_for("lm_head") is None and cfg.scheme_for("model.embed_tokens") is None
    asked = QuarkConfig.from_dict(config(fp8, layer_quant_config={"lm_head": fp8}))
    assert type(asked.scheme_for("lm_head")) is QuarkW8A8Fp8


def test_fused_names_and_disagreeing_shards():
    assert shard_paths("model.layers.0.mlp.gate_up_proj") == ("model.layers.0.mlp.gate_proj",
                                                              "model.layers.0.mlp.up_proj")
    assert shard_paths("qkv_proj") == ("q_proj", "k_proj", "v_proj")
    # vLLM replaces the fused name anywhere in the path; we replace only the last component
    assert shard_paths("blocks.qkv_proj.inner.qkv_proj")[0] == "blocks.qkv_proj.inner.q_proj"
    cfg = QuarkConfig.from_dict(config(layer_cfg(FP8_T, FP8_T), layer_quant_config={
        "*up_proj": layer_cfg(FP8_C, FP8_TOK)}))
    with pytest.raises(QuarkConfigError, match=r"layer m.mlp.gate_up_proj: its fused shards resolve to different "
                       r"quantization configs \(m.mlp.gate_proj -> global_quant_config .*; m.mlp.up_proj -> "
                       r"layer_quant_config\['\*up_proj'\]"):
        cfg.scheme_for("m.mlp.gate_up_proj")
    # equal specs from different entries agree (irrelevant fields differ)
    same = QuarkConfig.from_dict(config(layer_cfg(FP8_T, FP8_T), layer_quant_config={
        "*up_proj": layer_cfg(dict(FP8_T, observer_cls="Other"), FP8_T)}))
    assert type(same.scheme_for("m.mlp.gate_up_proj")) is QuarkW8A8Fp8


def test_output_and_bias_specs_are_unsupported_outside_the_kv_group():
    cfg = QuarkConfig.from_dict(config(layer_cfg(FP8_T, FP8_T, output=FP8_T)))
    with pytest.raises(UnsupportedSchemeError, match=r"layer a.o_proj: quantized outputs or biases are not supported "
                       r"\(config global_quant_config: output_tensors=\{dtype: 'fp8_e4m3'"):
        cfg.scheme_for("a.o_proj")
    cfg = QuarkConfig.from_dict(config(layer_cfg(FP8_T, FP8_T, bias=I8_T)))
    with pytest.raises(UnsupportedSchemeError, match=r"bias=\{dtype: 'int8'"):
        cfg.scheme_for("a.o_proj")


def test_kv_cache_config_from_the_fixture():
    qc = quant_config("w_fp8_a_fp8_pertensor_static_kv_fp8")
    cfg = QuarkConfig.from_dict(qc)
    kv = cfg.kv_cache
    assert isinstance(kv, KVCacheConfig) and kv.group == ("*k_proj", "*v_proj")
    assert kv.dtype_name == "float8_e4m3fn" and kv.fp8_max == 448.0 and kv.qscheme == "per_tensor"
    assert kv.is_kv_layer("model.layers.1.self_attn.v_proj") and not kv.is_kv_layer("model.layers.1.self_attn.o_proj")
    assert kv_scale_tensor_names("m.self_attn") == {
        "k_scale": ("m.self_attn.k_proj.output_scale", "m.self_attn.k_scale", "m.self_attn.attn.k_scale"),
        "v_scale": ("m.self_attn.v_proj.output_scale", "m.self_attn.v_scale", "m.self_attn.attn.v_scale")}
    # k/v keep running as plain FP8 linears; their output spec is the cache's, fused qkv agrees with q
    for path in ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.qkv_proj"):
        assert cfg.scheme_for(path) == QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static") and cfg.plan(path).kv_cache
    assert not cfg.plan("model.layers.0.self_attn.q_proj").kv_cache
    # q_proj's output spec is dropped too when the KV cache is quantized (vLLM)
    qc2 = copy.deepcopy(qc)
    qc2["layer_quant_config"]["*q_proj"] = copy.deepcopy(qc["layer_quant_config"]["*k_proj"])
    assert QuarkConfig.from_dict(qc2).scheme_for("model.layers.0.self_attn.qkv_proj") is not None
    assert "KV cache: float8_e4m3fn per_tensor" in cfg.describe(["model.layers.0.self_attn.k_proj"])


def test_kv_cache_config_errors():
    qc = quant_config("w_fp8_a_fp8_pertensor_static_kv_fp8")
    bad = copy.deepcopy(qc)
    bad["export"]["kv_cache_group"] = ["*k_proj", "*w_proj"]
    with pytest.raises(QuarkConfigError, match=r"export.kv_cache_group names '\*w_proj' but neither"):
        QuarkConfig.from_dict(bad)
    bad = copy.deepcopy(qc)
    bad["layer_quant_config"]["*v_proj"]["output_tensors"]["qscheme"] = "per_channel"
    with pytest.raises(QuarkConfigError, match=r"the members must share one KV-cache spec, but '\*k_proj' has "
                       r"\{dtype: 'fp8_e4m3', qscheme: 'per_tensor'.* and '\*v_proj' has \{dtype: 'fp8_e4m3', "
                       r"qscheme: 'per_channel'"):
        QuarkConfig.from_dict(bad)
    bad = copy.deepcopy(qc)
    for k in ("*k_proj", "*v_proj"):
        bad["layer_quant_config"][k]["output_tensors"]["dtype"] = "int8"
    with pytest.raises(UnsupportedSchemeError, match=r"only a static per_tensor fp8_e4m3 KV cache is supported, got "
                       r"\{dtype: 'int8'"):
        QuarkConfig.from_dict(bad)
    bad = copy.deepcopy(qc)
    bad["layer_quant_config"]["*k_proj"]["output_tensors"] = None
    with pytest.raises(QuarkConfigError, match=r"member '\*k_proj': its config .* has no output_tensors"):
        QuarkConfig.from_dict(bad)
    # Quark 0.13 also writes kv_cache_quant_config: enough on its own
    alt = copy.deepcopy(qc)
    del alt["layer_quant_config"]
    assert QuarkConfig.from_dict(alt).kv_cache.group == ("*k_proj", "*v_proj")


def test_malformed_configs():
    with pytest.raises(QuarkConfigError, match=r"quant_method: expected 'quark', got None"):
        QuarkConfig.from_dict({"export": {}})
    with pytest.raises(QuarkConfigError, match=r"export: missing .* got None"):
        QuarkConfig.from_dict({"quant_method": "quark"})
    with pytest.raises(QuarkConfigError, match=r"global_quant_config.weight: a tensor spec needs a string 'dtype', "
                       r"got None"):
        QuarkConfig.from_dict(config({"weight": {"qscheme": "per_tensor"}}))
    with pytest.raises(QuarkConfigError, match=r"layer_quant_config\['\*x'\]: expected a layer config"):
        QuarkConfig.from_dict(config(None, layer_quant_config={"*x": 3}))
    with pytest.raises(QuarkConfigError, match=r"exclude: expected a list"):
        QuarkConfig.from_dict(config(None, exclude="lm_head"))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(QuarkConfigError, match="no config.json"):
        QuarkConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(QuarkConfigError, match="no quantization_config"):
        QuarkConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(QuarkConfigError, match="not valid JSON"):
        QuarkConfig.from_pretrained(tmp_path)


def test_describe_table():
    from conftest import variant_dir

    cfg = QuarkConfig.from_pretrained(variant_dir("w_int8_perchannel_sym_a_int8_pertensor_static_asym"))
    table = cfg.describe()
    lines = table.splitlines()
    assert len(lines) == 2 + 16  # header, rule, 14 linears + lm_head + embed_tokens
    row = next(l for l in lines if l.startswith("model.layers.1.mlp.up_proj "))
    assert "quantized" in row and "QuarkW8A8Int8(weight int8 per_channel, input int8 static per_tensor asymmetric, " \
        "azp_mode=vllm)" in row and "[global_quant_config]" in row
    assert any(l.split() == ["lm_head", "excluded", "exclude", "'lm_head'"] for l in lines)
    assert any(l.startswith("model.embed_tokens ") and "unquantized  embeddings and lm_head stay unquantized" in l
               for l in lines)
    assert "lm_head" in repr(cfg) and TensorQuantSpec(dtype="int8").brief() == "{dtype: 'int8'}"
    with pytest.raises(ValueError, match="not read from a checkpoint"):
        QuarkConfig.from_dict(cfg.raw).describe()


def test_int4_pack_method_comes_from_the_export_section():
    w = layer_cfg(spec("int4", "per_group", group_size=32), None)
    assert QuarkConfig.from_dict(config(w)).scheme_for("model.layers.0.mlp.up_proj").pack_method == "reorder"
    qc = config(w)
    qc["export"] = {"kv_cache_group": [], "pack_method": "order"}
    assert QuarkConfig.from_dict(qc).scheme_for("model.layers.0.mlp.up_proj").pack_method == "order"
    qc["export"]["pack_method"] = "zigzag"
    with pytest.raises(QuarkConfigError, match=r"export.pack_method: expected 'order' or 'reorder', got 'zigzag'"):
        QuarkConfig.from_dict(qc)
