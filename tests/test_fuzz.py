"""Property tests: fuzzed ``quantization_config`` dicts and fuzzed safetensors headers / bytes never raise anything
but quark_jax's documented error types (``QuarkJaxError``: QuarkConfigError, UnsupportedSchemeError,
CheckpointError, ...). Small example counts (suite time)."""

import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import quant_config, variant_dir
from quark_jax.checkpoint import open_checkpoint
from quark_jax.config import QuarkConfig
from quark_jax.errors import QuarkJaxError
from quark_jax.io import SafetensorsFile
from quark_jax.validation import validate_checkpoint

PATHS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.qkv_proj", "model.layers.1.mlp.gate_up_proj",
         "lm_head", "model.embed_tokens"]
BASE = quant_config("w_fp8_a_fp8_pertensor_static_kv_fp8")

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                      st.sampled_from(["fp8_e4m3", "int8", "fp4", "e8m0", "per_tensor", "per_channel", "per_group",
                                       "quark", "*k_proj", "*v_proj", "re:.*", "lm_head", "even", "Linear", ""]),
                      st.text(max_size=6))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=8)
SPEC_KEYS = ["dtype", "qscheme", "is_dynamic", "symmetric", "group_size", "scale_format", "ch_axis"]
spec = st.one_of(st.none(), json_value, st.fixed_dictionaries({}, optional={k: json_leaf for k in SPEC_KEYS}))
layer_cfg = st.one_of(json_value, st.fixed_dictionaries(
    {}, optional={k: spec for k in ("weight", "input_tensors", "output_tensors", "bias")}))


def _mutate(base: dict, edits) -> dict:
    """``base`` with (path of keys, value) edits applied where the path exists (or one level below)."""
    d = json.loads(json.dumps(base))
    for path, value in edits:
        node = d
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                node[path[-1]] = value
    return d


KEY_PATHS = [("quant_method",), ("export",), ("export", "kv_cache_group"), ("exclude",), ("global_quant_config",),
             ("global_quant_config", "weight"), ("global_quant_config", "input_tensors"),
             ("global_quant_config", "weight", "dtype"), ("global_quant_config", "weight", "qscheme"),
             ("global_quant_config", "input_tensors", "is_dynamic"), ("layer_quant_config",),
             ("layer_type_quant_config",), ("layer_quant_config", "*k_proj"), ("layer_quant_config", "*v_proj"),
             ("global_quant_config", "output_tensors"), ("algo_config",)]
edits = st.lists(st.tuples(st.sampled_from(KEY_PATHS), st.one_of(json_value, layer_cfg, spec)), min_size=1,
                 max_size=4)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(edits)
def test_fuzzed_quantization_config_raises_only_documented_errors(changes):
    qc = _mutate(BASE, changes)
    try:
        cfg = QuarkConfig.from_dict(qc)
        for path in PATHS:
            cfg.plan(path)
            cfg.scheme_for(path)
        cfg.kv_cache
    except QuarkJaxError:
        pass


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_value, st.dictionaries(st.text(max_size=6), layer_cfg, max_size=3)))
def test_fuzzed_whole_quantization_config_raises_only_documented_errors(qc):
    try:
        cfg = QuarkConfig.from_dict(qc)
        for path in PATHS:
            cfg.plan(path)
    except QuarkJaxError:
        pass


HEADER = SafetensorsFile(variant_dir("w_fp8_a_fp8_pertensor_static") / "model.safetensors")
ENTRY = st.fixed_dictionaries({}, optional={"dtype": st.one_of(st.sampled_from(["F32", "F8_E4M3", "U8", "BF16", "X"]),
                                                                json_leaf),
                                            "shape": st.one_of(st.lists(st.integers(-2, 70), max_size=3), json_value),
                                            "data_offsets": st.one_of(st.lists(st.integers(-5, 5000), max_size=3),
                                                                      json_value)})


def _write(path, header_bytes: bytes, data: bytes, length=None):
    n = len(header_bytes) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header_bytes + data)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(header=st.one_of(json_value, st.dictionaries(st.text(max_size=5), ENTRY, max_size=3)),
       data=st.binary(max_size=64), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_fuzzed_safetensors_header_raises_only_documented_errors(tmp_path, header, data, length):
    path = tmp_path / "model.safetensors"
    _write(path, json.dumps(header).encode(), data, length)
    try:
        f = SafetensorsFile(path)
        for name in f.names():
            f.get(name)
    except QuarkJaxError:
        pass


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzzed_safetensors_bytes_raise_only_documented_errors(tmp_path, raw):
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    try:
        SafetensorsFile(path)
    except QuarkJaxError:
        pass


SRC = (variant_dir("w_fp8_a_fp8_pertensor_static") / "model.safetensors").read_bytes()
CONFIG = (variant_dir("w_fp8_a_fp8_pertensor_static") / "config.json").read_text()


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, len(SRC) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(SRC))))
def test_damaged_checkpoint_bytes_give_documented_errors_or_problems(tmp_path, flips, cut):
    """Byte flips anywhere (header or data) and truncation of a fixture checkpoint: loading raises only documented
    errors, validation returns problems (never raises)."""
    buf = bytearray(SRC)
    for pos, value in flips:
        buf[pos] = value
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes(bytes(buf[:cut]))
    (d / "config.json").write_text(CONFIG)
    problems = validate_checkpoint(d)
    assert all(str(p) for p in problems)
    try:
        from quark_jax.nn import QuarkLinear

        r = open_checkpoint(d)
        QuarkLinear.from_pretrained(r, "model.layers.0.self_attn.qkv_proj")
    except QuarkJaxError:
        pass


MODEL_CONFIG = json.loads(CONFIG)
MODEL_KEYS = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_theta", "rope_scaling",
              "rope_parameters", "max_position_embeddings", "tie_word_embeddings", "torch_dtype", "dtype",
              "eos_token_id", "hidden_act", "attention_bias", "sliding_window"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(MODEL_KEYS), json_value), min_size=1, max_size=4))
def test_fuzzed_config_json_raises_only_documented_errors(changes):
    from quark_jax.models.config import ModelConfig

    d = dict(MODEL_CONFIG)
    d.update(dict(changes))
    try:
        ModelConfig.from_dict(d)
    except QuarkJaxError:
        pass


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(index=st.one_of(json_value, st.fixed_dictionaries({"weight_map": st.one_of(
    json_value, st.dictionaries(st.sampled_from(["model.norm.weight", "lm_head.weight", "x"]),
                                st.one_of(st.sampled_from(["model.safetensors", "../x", "a.safetensors"]),
                                          json_leaf), max_size=3))})))
def test_fuzzed_index_raises_only_documented_errors(tmp_path, index):
    d = tmp_path / "idx"
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes(SRC)
    (d / "config.json").write_text(CONFIG)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert all(str(p) for p in validate_checkpoint(d))
    try:
        open_checkpoint(d)
    except QuarkJaxError:
        pass
