"""Checkpoint reading: single and sharded files, per-layer loading with validation, bad checkpoints, KV scales."""

import json

import ml_dtypes
import numpy as np
import pytest

import layer_reference as lref
from checkpoint_tools import edited_copy, make_checkpoint, read_tensors, truncate
from conftest import reference_layers, variant_dir
from quark_jax import CheckpointError, QuarkConfig, QuarkConfigError, UnsupportedSchemeError
from quark_jax.checkpoint import (check_unexpected_tensors, layer_geometry, layer_tensor_names, load_kv_scales,
                                  load_layer_params, open_checkpoint)
from quark_jax.io import SafetensorsFile
from quark_jax.nn import QuarkLinear
from quark_jax.schemes import QuarkW8A8Fp8

FP8 = "w_fp8_a_fp8_pertensor_static"
DYN = "w_fp8_perchannel_a_fp8_pertoken_dynamic"
INT8 = "w_int8_perchannel_sym_a_int8_pertensor_static_asym"
KV = "w_fp8_a_fp8_pertensor_static_kv_fp8"
ATTN = "model.layers.0.self_attn"
QKV = ATTN + ".qkv_proj"


def x_for(variant, path):
    return SafetensorsFile(variant_dir(variant) / "reference.safetensors").get(path + ".x")


def test_sharded_checkpoint_reads_like_the_single_file(tmp_path):
    single = open_checkpoint(variant_dir(FP8))
    sharded_dir = edited_copy(variant_dir(FP8), tmp_path / "sharded", shards=3)
    sharded = open_checkpoint(sharded_dir)
    assert len(sharded.files) == 3 and sorted(sharded.names()) == sorted(single.names())
    for name in single.names():
        a, b = single.get(name), sharded.get(name)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    # q, k and v of layer 0 are spread over several files here; the fused layer loads them all
    files = {sharded.file_of(f"{ATTN}.{p}.weight") for p in ("q_proj", "k_proj", "v_proj")}
    assert len(files) >= 2
    x = x_for(FP8, ATTN + ".q_proj")
    y1 = QuarkLinear.from_pretrained(variant_dir(FP8), QKV, impl="xla")(x)
    y2 = QuarkLinear.from_pretrained(sharded_dir, QKV, impl="xla")(x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert sharded.config == single.config


def test_layer_params_are_placed_and_normalised():
    reader = open_checkpoint(variant_dir("bf16_w_fp8_a_fp8_pertensor_static"))
    scheme = QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static")
    p = load_layer_params(reader, QKV, scheme)
    assert p["weight"].dtype == ml_dtypes.float8_e4m3fn and p["weight"].shape == (128, 64)
    for i, (name, rows) in enumerate((("q_proj", slice(0, 64)), ("k_proj", slice(64, 96)), ("v_proj", slice(96, 128)))):
        np.testing.assert_array_equal(p["weight"][rows].view(np.uint8), reader.get(f"{ATTN}.{name}.weight").view(np.uint8))
        # bf16 scales come back as float32, exactly
        assert p["weight_scale"].dtype == np.float32
        assert p["weight_scale"][i] == reader.get(f"{ATTN}.{name}.weight_scale").astype(np.float32)
    assert layer_geometry(reader, QKV).logical_widths == (64, 32, 32)
    assert layer_tensor_names(reader, QKV) == [n for s in ("q_proj", "k_proj", "v_proj")
                                               for n in reader.tensors_of(f"{ATTN}.{s}")]


def test_missing_tensor(tmp_path):
    d = edited_copy(variant_dir(FP8), tmp_path / "c", drop=[ATTN + ".k_proj.weight_scale"])
    with pytest.raises(CheckpointError, match=r"layer model.layers.0.self_attn.qkv_proj \(QuarkW8A8Fp8.*\): missing "
                       r"tensor 'model.layers.0.self_attn.k_proj.weight_scale' \(expected float32 or bfloat16 or "
                       r"float16 shape \[\]"):
        QuarkLinear.from_pretrained(d, QKV)
    d2 = edited_copy(variant_dir(FP8), tmp_path / "c2", drop=[ATTN + ".v_proj.weight"])
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.0.self_attn.v_proj.weight'"):
        QuarkLinear.from_pretrained(d2, QKV)


def test_unexpected_tensor(tmp_path):
    # a static input scale in a checkpoint whose config says dynamic per-token input
    extra = {ATTN + ".q_proj.input_scale": np.float32(0.01)}
    d = edited_copy(variant_dir(DYN), tmp_path / "c", add=extra)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.layers.0.self_attn.q_proj.input_scale' "
                       r"\(float32 \[\]\); the scheme reads \['weight', 'weight_scale'\]"):
        QuarkLinear.from_pretrained(d, ATTN + ".q_proj")
    # a bias where the layer has none
    reader = open_checkpoint(variant_dir(FP8))
    with pytest.raises(CheckpointError, match="unexpected param"):
        layer = QuarkLinear(64, 64, scheme=QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"), name="q")
        layer.load_params({**load_layer_params(reader, ATTN + ".q_proj", layer.scheme), "bias": np.zeros(64)})
    # over a whole model: tensors no layer read
    d2 = edited_copy(variant_dir(FP8), tmp_path / "c2", add={"model.layers.0.mystery.weight": np.zeros(3, np.float32)})
    r2 = open_checkpoint(d2)
    consumed = [n for n in r2.names() if "mystery" not in n]
    check_unexpected_tensors(r2, r2.names())  # everything consumed: fine
    with pytest.raises(CheckpointError, match=r"1 unexpected tensor\(s\) that no layer of the model reads: "
                       r"'model.layers.0.mystery.weight' \(float32 \[3\]\)"):
        check_unexpected_tensors(r2, consumed)
    check_unexpected_tensors(r2, consumed, ignore=["*.mystery.*"])


def test_wrong_dtype(tmp_path):
    w = read_tensors(variant_dir(FP8))[ATTN + ".q_proj.weight"]
    d = edited_copy(variant_dir(FP8), tmp_path / "c", add={ATTN + ".q_proj.weight": w.view(np.int8)})
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.self_attn.q_proj.weight': expected dtype "
                       r"float8_e4m3fn \(fp8 weight \[N, K\]\), found int8 shape \[64, 64\]"):
        QuarkLinear.from_pretrained(d, QKV)


def test_wrong_shape(tmp_path):
    d = edited_copy(variant_dir(FP8), tmp_path / "c", add={ATTN + ".k_proj.weight_scale": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.self_attn.k_proj.weight_scale': expected shape "
                       r"\[\] \(per-tensor weight scale, one per shard\), found \[2\] \(float32\)"):
        QuarkLinear.from_pretrained(d, QKV)
    w = read_tensors(variant_dir(FP8))[ATTN + ".k_proj.weight"]
    d2 = edited_copy(variant_dir(FP8), tmp_path / "c2", add={ATTN + ".k_proj.weight": w[:, :32]})
    with pytest.raises(CheckpointError, match=r"fused shards have different input sizes \[32, 64\]"):
        QuarkLinear.from_pretrained(d2, QKV)
    # a layer built with other sizes than the checkpoint's
    layer = QuarkLinear(64, 48, scheme=QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"),
                        name=ATTN + ".q_proj")
    with pytest.raises(CheckpointError, match=r"expected output sizes \[48\] .*the checkpoint's weights have \[64\]"):
        layer.load_checkpoint(variant_dir(FP8))


def test_truncated_file(tmp_path):
    d = edited_copy(variant_dir(FP8), tmp_path / "c")
    truncate(d / "model.safetensors", 100)
    with pytest.raises(CheckpointError, match=r"model.safetensors is damaged: .*tensor '[\w.]+' ends at "
                       r"byte \d+ but the file has \d+ bytes \(truncated\?\)"):
        open_checkpoint(d)


def test_sharded_index_pointing_at_a_missing_file(tmp_path):
    d = edited_copy(variant_dir(FP8), tmp_path / "c", shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: tensor '.*' \(and \d+ more\) is mapped "
                       r"to 'model-00002-of-00002.safetensors', which does not exist"):
        open_checkpoint(d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.extra"] = "model-00001-of-00002.safetensors"
    index["weight_map"] = {k: "model-00001-of-00002.safetensors" for k in index["weight_map"]}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"is mapped to 'model-00001-of-00002.safetensors', which does not "
                       r"contain it"):
        open_checkpoint(d)
    with pytest.raises(CheckpointError, match=r"expected model.safetensors or model.safetensors.index.json"):
        open_checkpoint(tmp_path)


def _set(path, value):
    def edit(config):
        node = config["quantization_config"]
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


def test_bad_quant_method_and_missing_export(tmp_path):
    d = edited_copy(variant_dir(FP8), tmp_path / "a", config_edit=_set(["quant_method"], "fp8"))
    with pytest.raises(QuarkConfigError, match=r"quant_method: expected 'quark', got 'fp8'"):
        QuarkLinear.from_pretrained(d, QKV)
    d = edited_copy(variant_dir(FP8), tmp_path / "b", config_edit=_set(["export"], KeyError))
    with pytest.raises(QuarkConfigError, match=r"quantization_config.export: missing"):
        QuarkConfig.from_pretrained(d)


def test_unsupported_spec_combination(tmp_path):
    # int8 weights with fp8 input: no scheme
    d = edited_copy(variant_dir(FP8), tmp_path / "a",
                    config_edit=_set(["global_quant_config", "weight", "dtype"], "int8"))
    with pytest.raises(UnsupportedSchemeError, match=r"layer model.layers.0.self_attn.qkv_proj: no quark_jax scheme "
                       r"for this layer config \(global_quant_config\). Weight config: \{dtype: 'int8', qscheme: "
                       r"'per_tensor', is_dynamic: False, symmetric: True\}, input config: \{dtype: 'fp8_e4m3'"):
        QuarkLinear.from_pretrained(d, QKV)


def test_fused_shards_whose_specs_disagree(tmp_path):
    def edit(config):
        qc = config["quantization_config"]
        spec = json.loads(json.dumps(qc["global_quant_config"]))
        spec["weight"]["qscheme"] = "per_channel"
        qc["layer_quant_config"] = {"*v_proj": spec}
    d = edited_copy(variant_dir(FP8), tmp_path / "a", config_edit=edit)
    with pytest.raises(QuarkConfigError, match=r"layer model.layers.0.self_attn.qkv_proj: its fused shards resolve to "
                       r"different quantization configs \(model.layers.0.self_attn.q_proj -> global_quant_config .*; "
                       r"model.layers.0.self_attn.v_proj -> layer_quant_config\['\*v_proj'\]"):
        QuarkLinear.from_pretrained(d, QKV)
    # unfused, each shard loads with its own scheme (v_proj's per-channel spec needs [N] scales: wrong shape)
    with pytest.raises(CheckpointError, match=r"v_proj.weight_scale': expected shape \[32\]"):
        QuarkLinear.from_pretrained(d, ATTN + ".v_proj")
    QuarkLinear.from_pretrained(d, ATTN + ".q_proj")


def test_int8_nonzero_weight_zero_point(tmp_path):
    path = "model.layers.0.mlp.down_proj"
    wz = read_tensors(variant_dir(INT8))[path + ".weight_zero_point"].copy()
    wz[3] = 1
    d = edited_copy(variant_dir(INT8), tmp_path / "a", add={path + ".weight_zero_point": wz})
    with pytest.raises(CheckpointError, match=r"layer model.layers.0.mlp.down_proj: weight_zero_point must be all "
                       r"zeros \(QuarkW8A8Int8 supports symmetric weights only\), found nonzero values \[0, 1\]"):
        QuarkLinear.from_pretrained(d, path)


def test_int8_per_tensor_weights_fused_become_per_channel(tmp_path):
    """A synthetic INT8 checkpoint with per-tensor weight scales (one per shard), fused gate_up."""
    tensors = read_tensors(variant_dir(INT8))
    mlp = "model.layers.0.mlp."
    add = {}
    for i, shard in enumerate(("gate_proj", "up_proj")):
        add[mlp + shard + ".weight_scale"] = np.float32(0.001 * (i + 1))
        add[mlp + shard + ".weight_zero_point"] = np.int8(0)
    d = edited_copy(variant_dir(INT8), tmp_path / "a", add=add,
                    config_edit=_set(["global_quant_config", "weight", "qscheme"], "per_tensor"))
    layer = QuarkLinear.from_pretrained(d, mlp + "gate_up_proj", impl="xla")
    assert layer.weight_scale[...].shape == (256,)
    np.testing.assert_array_equal(np.asarray(layer.weight_scale[...]), np.repeat(np.float32([0.001, 0.002]), 128))
    x = x_for(INT8, mlp + "gate_proj")
    want = lref.vllm_layer("int8_asym", SafetensorsFile(d / "model.safetensors"),
                           [mlp + "gate_proj", mlp + "up_proj"], x)
    assert np.abs(np.asarray(layer(x)) - want).max() <= 2e-6 * np.abs(want).max()
    single = QuarkLinear.from_pretrained(d, mlp + "up_proj", impl="xla")
    assert single.weight_scale[...].shape == ()  # one shard keeps its scalar (vLLM)
    assert tensors  # the original fixture was read


def test_kv_scales_from_output_scale_and_vllm_names(tmp_path):
    reader = open_checkpoint(variant_dir(KV))
    k, v, names = load_kv_scales(reader, ATTN)
    assert k == reader.get(ATTN + ".k_proj.output_scale") and v == reader.get(ATTN + ".v_proj.output_scale")
    assert names == (ATTN + ".k_proj.output_scale", ATTN + ".v_proj.output_scale")
    # vLLM's names, and the fallbacks of SPEC section 6
    t = {n: a for n, a in read_tensors(variant_dir(KV)).items() if not n.endswith("output_scale")}
    cfg = json.loads((variant_dir(KV) / "config.json").read_text())
    both = make_checkpoint(tmp_path / "both", {**t, ATTN + ".k_scale": np.float32(0.5),
                                                ATTN + ".v_scale": np.float32([0.25])}, cfg)
    assert load_kv_scales(both, ATTN)[:2] == (0.5, 0.25)
    only_v = make_checkpoint(tmp_path / "v", {**t, ATTN + ".attn.v_scale": np.float32(0.25)}, cfg)
    assert load_kv_scales(only_v, ATTN)[:2] == (0.25, 0.25)
    assert load_kv_scales(make_checkpoint(tmp_path / "none", t, cfg), ATTN)[:2] == (1.0, 1.0)
    bad = make_checkpoint(tmp_path / "bad", {**t, ATTN + ".k_scale": np.ones(2, np.float32)}, cfg)
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.self_attn.k_scale': expected a scalar"):
        load_kv_scales(bad, ATTN)
    # the k/v linears of the KV checkpoint load with their output_scale present (it belongs to the cache)
    QuarkLinear.from_pretrained(variant_dir(KV), QKV)
    assert all(reader.tensors_of(ATTN + ".k_proj"))
    assert reference_layers(KV)


def test_from_pretrained_parses_config_once_and_builds_and_checks_each_layer_once(monkeypatch):
    """Instrumented load of a Quark checkpoint (KV variant, fused layout): config.json is read and parsed once,
    the quantization_config parsed once, and each layer's param specs built and its tensors checked once."""
    import pathlib

    from quark_jax import checkpoint, config, models, schemes

    reads, parses, builds, checks = [], [], [], []
    read_text = pathlib.Path.read_text
    monkeypatch.setattr(pathlib.Path, "read_text",
                        lambda self, *a, **k: (reads.append(self.name) if self.name == "config.json" else None)
                        or read_text(self, *a, **k))
    parse = config.QuarkConfig.parse.__func__
    monkeypatch.setattr(config.QuarkConfig, "parse", classmethod(lambda cls, *a, **k: parses.append(1)
                                                                or parse(cls, *a, **k)))
    create, check = schemes.QuarkW8A8Fp8.create_weights, schemes.QuarkW8A8Fp8.check_loaded
    monkeypatch.setattr(schemes.QuarkW8A8Fp8, "create_weights",
                        lambda self, widths, k, dtype=None: builds.append((tuple(widths), k)) or create(self, widths,
                                                                                                        k, dtype))
    monkeypatch.setattr(schemes.QuarkW8A8Fp8, "check_loaded",
                        lambda self, params, layer: checks.append(layer) or check(self, params, layer))
    checkpoint._param_specs.cache_clear()  # the spec cache: built once per distinct layer geometry
    model = models.from_pretrained(variant_dir(KV), fuse_projections=True)
    n_layers = len(model.model.layers)
    assert reads == ["config.json"] and len(parses) == 1
    assert len(builds) == len(set(builds)) == 4  # qkv, o, gate_up, down: each geometry built once
    assert sorted(checks) == sorted(f"model.layers.{i}.{p}" for i in range(n_layers)
                                    for p in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                              "mlp.down_proj"))
