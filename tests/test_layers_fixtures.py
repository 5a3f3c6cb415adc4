"""Every quantized linear of every Quark fixture, loaded with QuarkLinear.from_pretrained and run, against Quark's
own outputs (y_fakeq, w_qdq) and against an independent numpy model of vLLM's computation.

Layers are called directly (their forward is a cached jitted function of the scheme); nnx.jit over whole modules
is covered in test_nn_linear.py (each module path is static metadata, so nnx.jit compiles once per layer)."""

import functools
import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import layer_reference as lref
import reference_numpy as ref
from conftest import VARIANTS, quant_config, reference_layers, variant_dir
from quark_jax import QuarkConfig
from quark_jax.checkpoint import shard_paths
from quark_jax.io import SafetensorsFile
from quark_jax.nn import QuarkLinear

BF16 = ml_dtypes.bfloat16
KV_VARIANT = "w_fp8_a_fp8_pertensor_static_kv_fp8"


def files(variant):
    d = variant_dir(variant)
    return SafetensorsFile(d / "model.safetensors"), SafetensorsFile(d / "reference.safetensors")


@functools.lru_cache(maxsize=None)
def load(variant, path, **options):
    """QuarkLinear.from_pretrained with the XLA GEMMs, shared by the tests (they do not mutate layers)."""
    return QuarkLinear.from_pretrained(variant_dir(variant), path, impl="xla", **options)


def run(layer, x):
    return np.asarray(layer(jnp.asarray(x)).astype(jnp.float32))


def rel(got, want):
    want = np.asarray(want, np.float64)
    return np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layer_matches_quark_and_vllm_reference(variant):
    model, refs = files(variant)
    kind = lref.kind_of(quant_config(variant))
    bf16 = variant.startswith("bf16")
    for path in reference_layers(variant):
        layer = load(variant, path)
        x = refs.get(path + ".x")
        assert layer.dtype == (jnp.bfloat16 if bf16 else jnp.float32)
        y = layer(jnp.asarray(x))
        assert y.shape == (3, layer.out_features) and y.dtype == x.dtype, path
        y = np.asarray(y.astype(jnp.float32))
        want_vllm = lref.vllm_layer(kind, model, [path], x)
        y_fakeq = refs.get(path + ".y_fakeq").astype(np.float32)
        if bf16:
            # vLLM-exact reference in f32 rounded once to bf16: equal up to one bf16 rounding of the accumulation
            # (on CPU every element is identical; another accumulation order may flip a rounding)
            want = np.asarray(want_vllm, np.float32).astype(BF16).astype(np.float32)
            assert rel(y, want) <= 2.0**-8, path
            assert np.mean(y == want) > 0.99, path
            # Quark divides x / s in bf16 (SPEC 7 item 6): only loosely equal to y_fakeq
            assert rel(y, y_fakeq) <= 5e-2, path
        else:
            assert rel(y, want_vllm) <= 2e-6, path
            if variant == KV_VARIANT and path.endswith(("k_proj", "v_proj")):
                continue  # y_fakeq includes Quark's output QDQ here; see test_kv_variant_linears_and_scales
            assert rel(y, y_fakeq) <= 1e-5, path


@pytest.mark.parametrize("variant", VARIANTS)
def test_dequantized_weights_equal_w_qdq(variant):
    _, refs = files(variant)
    for path in reference_layers(variant):
        layer = load(variant, path)
        w = np.asarray(layer.dequantized_weight())
        want = refs.get(path + ".w_qdq")
        np.testing.assert_array_equal(w.astype(want.dtype).astype(np.float32), want.astype(np.float32),
                                      err_msg=path)


def test_kv_variant_linears_and_scales():
    """k/v run as plain FP8 linears; Quark's y_reload is our output QDQ'd with the on-disk (merged) KV scale."""
    variant = KV_VARIANT
    model, refs = files(variant)
    cfg = QuarkConfig.from_pretrained(variant_dir(variant))
    assert cfg.kv_cache is not None and cfg.kv_cache.dtype == jnp.float8_e4m3fn and cfg.kv_cache.qscheme == "per_tensor"
    for path in [p for p in reference_layers(variant) if p.endswith(("k_proj", "v_proj"))]:
        assert cfg.kv_cache.is_kv_layer(path) and cfg.plan(path).kv_cache
        layer = QuarkLinear.from_pretrained(variant_dir(variant), path, config=cfg.with_options(impl="xla"))
        y = run(layer, refs.get(path + ".x"))
        s_disk = np.float32(model.get(path + ".output_scale"))
        s_mem = np.float32(refs.get(path + ".output_quantizer.scale_inmem"))
        for s, key in ((s_disk, ".y_reload"), (s_mem, ".y_fakeq")):
            qdq = ref.fp8_cast(y / s).astype(np.float32) * s
            want = refs.get(path + key)
            step = np.abs(want) * 2.0**-3 + s * 2.0**-9  # a rounding tie may flip by one fp8 step
            assert np.all(np.abs(qdq - want) <= step), (path, key)
            assert np.mean(qdq == want) > 0.95, (path, key)


def test_int8_asymmetric_both_azp_modes():
    variant = "w_int8_perchannel_sym_a_int8_pertensor_static_asym"
    model, refs = files(variant)
    cfg = QuarkConfig.from_pretrained(variant_dir(variant), impl="xla")
    off_by_one = 0
    for path in reference_layers(variant):
        x, y_fakeq = refs.get(path + ".x"), refs.get(path + ".y_fakeq")
        exact = QuarkLinear.from_pretrained(variant_dir(variant), path, config=cfg.with_options(azp_mode="checkpoint"))
        y_ck = run(exact, x)
        assert rel(y_ck, y_fakeq) <= 1e-5, path  # Quark-exact
        assert rel(y_ck, lref.vllm_layer("int8_asym", model, [path], x, azp="checkpoint")) <= 2e-6, path
        assert int(exact.input_zero_point[...]) == int(model.get(path + ".input_zero_point"))
        vllm = QuarkLinear.from_pretrained(variant_dir(variant), path, config=cfg)
        y_v = run(vllm, x)
        assert rel(y_v, lref.vllm_layer("int8_asym", model, [path], x)) <= 2e-6, path  # vLLM-exact
        s2, z2 = lref.reconstruct_azp(model.get(path + ".input_scale"), model.get(path + ".input_zero_point"))
        assert int(vllm.input_zero_point[...]) == z2 and np.float32(vllm.input_scale[...]) == s2
        off_by_one += z2 != int(model.get(path + ".input_zero_point"))
        # z' one off only moves where the top of the range saturates: within one int8 step of x per element
        s = np.float32(model.get(path + ".input_scale"))
        w_abs = np.abs(np.asarray(vllm.dequantized_weight(), np.float64)).sum(axis=1)
        assert np.all(np.abs(y_v - y_fakeq) <= s * w_abs + 1e-5 * np.abs(y_fakeq).max()), path
    assert off_by_one >= 1  # the fixture really exercises the vLLM off-by-one reconstruction (layer 1 gate/up)


@pytest.mark.parametrize("variant", ["w_fp8_a_fp8_pertensor_static", "bf16_w_fp8_a_fp8_pertensor_static",
                                     "w_fp8_perchannel_a_fp8_pertoken_dynamic",
                                     "w_int8_perchannel_sym_a_int8_pertensor_static_asym", "w_mxfp4_a_mxfp4",
                                     "w_mxfp4_a_fp8_pertensor_static"])
@pytest.mark.parametrize("fused", ["model.layers.1.self_attn.qkv_proj", "model.layers.0.mlp.gate_up_proj"])
def test_fused_layers_load_and_run(variant, fused):
    model, refs = files(variant)
    cfg = QuarkConfig.from_pretrained(variant_dir(variant), impl="xla")
    shards = shard_paths(fused)
    layer = QuarkLinear.from_pretrained(variant_dir(variant), fused, config=cfg)
    widths = tuple(model.get(s + ".weight").shape[0] for s in shards)
    assert layer.logical_widths == widths and layer.out_features == sum(widths)
    x = refs.get(shards[0] + ".x")  # q/k/v (gate/up) share their input in a model; use q's (gate's)
    y = run(layer, x[None])[0]  # leading batch axis: [1, 3, K] -> [1, 3, N]
    kind = lref.kind_of(quant_config(variant))
    want = lref.vllm_layer(kind, model, shards, x)
    tol = 2.0**-8 if variant.startswith("bf16") else 2e-6
    assert rel(y, want) <= tol
    if kind == "fp8_static":
        # SPEC 7 item 7: per-tensor shard scales differ on disk and become one scale, their max
        scales = [np.float32(model.get(s + ".weight_scale")) for s in shards]
        assert len(set(scales)) == len(scales)
        assert layer.weight_scale[...].shape == () and np.float32(layer.weight_scale[...]) == max(scales)
    else:
        # no re-quantization: the fused output is exactly the shards' outputs side by side
        parts = [run(QuarkLinear.from_pretrained(variant_dir(variant), s, config=cfg), x) for s in shards]
        np.testing.assert_allclose(y, np.concatenate(parts, axis=1), rtol=0, atol=1e-6 * np.abs(y).max())


def test_leading_shapes_and_eager_call():
    variant = "w_fp8_perchannel_a_fp8_pertoken_dynamic"
    _, refs = files(variant)
    path = reference_layers(variant)[3]
    layer = load(variant, path)
    x = refs.get(path + ".x")
    y2 = run(layer, x)
    x4 = np.stack([x, x[::-1]])[:, None]  # [2, 1, 3, K]
    y4 = run(layer, x4)
    assert y4.shape == (2, 1, 3, layer.out_features)
    np.testing.assert_array_equal(y4[0, 0], y2)
    np.testing.assert_array_equal(y4[1, 0], y2[::-1])
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, v: m(v))(layer, x)), y2)  # under nnx.jit
    with pytest.raises(ValueError, match=rf"{path}: x: expected shape \[..., {layer.in_features}\], got \(3, 7\)"):
        layer(np.zeros((3, 7), np.float32))


def test_mxfp4_dequantize_at_load_option_equals_packed_path():
    variant = "w_mxfp4_a_mxfp4"
    _, refs = files(variant)
    path = reference_layers(variant)[6]
    packed = load(variant, path)
    dense = load(variant, path, dequantize_mxfp4_weight=True)
    assert dense.param_names == ("weight_dequant",) and dense.weight_dequant[...].dtype == jnp.bfloat16
    x = refs.get(path + ".x")
    np.testing.assert_array_equal(run(dense, x), run(packed, x))
    np.testing.assert_array_equal(np.asarray(dense.dequantized_weight()), refs.get(path + ".w_qdq"))


def test_fp8_fnuz_mode_gives_the_same_outputs():
    variant = "w_fp8_a_fp8_pertensor_static"
    _, refs = files(variant)
    path = reference_layers(variant)[0]
    fn = load(variant, path)
    fnuz = load(variant, path, fp8_dtype="float8_e4m3fnuz")
    assert fnuz.weight[...].dtype == jnp.float8_e4m3fnuz
    assert float(fnuz.weight_scale[...]) == 2 * float(fn.weight_scale[...])
    x = refs.get(path + ".x")
    # e4m3fnuz values are e4m3fn values / 2 and the scales double: the same products (clamp 224 <-> 448)
    np.testing.assert_allclose(run(fnuz, x), run(fn, x), rtol=0, atol=1e-6 * np.abs(run(fn, x)).max())


def test_reference_json_layers_are_the_quantized_linears():
    for variant in VARIANTS:
        cfg = QuarkConfig.from_pretrained(variant_dir(variant))
        layers = reference_layers(variant)
        quantized = [p for p in cfg.layer_paths() if cfg.plan(p).status == "quantized"]
        assert sorted(quantized) == sorted(layers), variant
        assert cfg.plan("lm_head").status == "excluded"
        assert json.loads((variant_dir(variant) / "config.json").read_text())["quantization_config"]["exclude"] == ["lm_head"]
