"""QuarkLinear as a Flax NNX module: jit, split/merge, state, optimizers, abstract construction, bias, dtypes,
unquantized layers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from checkpoint_tools import edited_copy
from conftest import variant_dir
from quark_jax import CheckpointError, QuarkConfig
from quark_jax.checkpoint import load_layer_params, open_checkpoint
from quark_jax.io import SafetensorsFile
from quark_jax.nn import QuarkLinear, QuarkParam
from quark_jax.schemes import QuarkW4A4MXFP4, QuarkW8A8Fp8, UnquantizedLinearMethod

FP8 = "w_fp8_a_fp8_pertensor_static"
QKV = "model.layers.0.self_attn.qkv_proj"


def x_for(variant, path="model.layers.0.self_attn.q_proj"):
    return SafetensorsFile(variant_dir(variant) / "reference.safetensors").get(path + ".x")


def test_nnx_jit_split_merge_and_state():
    layer = QuarkLinear.from_pretrained(variant_dir(FP8), QKV, impl="xla")
    x = x_for(FP8)
    y = np.asarray(layer(x))
    y_jit = np.asarray(nnx.jit(lambda m, v: m(v))(layer, x))
    np.testing.assert_array_equal(y_jit, y)
    graphdef, state = nnx.split(layer)
    leaves = jax.tree.leaves(state)
    assert {str(a.dtype) for a in leaves} == {"float8_e4m3fn", "float32"}
    merged = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(np.asarray(merged(x)), y)
    # a pure function of the state, jitted with jax.jit, gives the same result
    f = jax.jit(lambda st, v: nnx.merge(graphdef, st)(v))
    np.testing.assert_array_equal(np.asarray(f(state, x)), y)
    # the params are QuarkParam variables, not trainable nnx.Param
    qstate = nnx.state(layer, QuarkParam)
    assert set(qstate.keys()) == {"weight", "weight_scale", "input_scale", "input_scale_reciprocal"}
    assert len(jax.tree.leaves(nnx.state(layer, nnx.Param))) == 0
    opt = nnx.Optimizer(layer, optax.sgd(0.1), wrt=nnx.Param)
    assert jax.tree.leaves(opt.opt_state) == []  # nothing to train: only the step counter
    assert layer.scheme == QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static", impl="xla") and layer.name == QKV


def test_abstract_construction_then_load():
    """Build without allocating (nnx.eval_shape), then fill from the checkpoint."""
    scheme = QuarkConfig.from_pretrained(variant_dir("w_mxfp4_a_mxfp4"), impl="xla").scheme_for(QKV)
    abstract = nnx.eval_shape(lambda: QuarkLinear(64, 128, scheme=scheme, logical_widths=(64, 32, 32), name=QKV))
    w = abstract.weight.get_value()
    assert isinstance(w, jax.ShapeDtypeStruct) and w.shape == (128, 32)
    abstract.load_checkpoint(variant_dir("w_mxfp4_a_mxfp4"))
    assert isinstance(abstract.weight[...], jax.Array)
    ref = QuarkLinear.from_pretrained(variant_dir("w_mxfp4_a_mxfp4"), QKV, impl="xla")
    x = x_for("w_mxfp4_a_mxfp4")
    np.testing.assert_array_equal(np.asarray(abstract(x)), np.asarray(ref(x)))


def test_load_params_validation():
    scheme = QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static", impl="xla")
    layer = QuarkLinear(64, 128, scheme=scheme, logical_widths=(64, 32, 32), name="blk.qkv_proj")
    raw = load_layer_params(open_checkpoint(variant_dir(FP8)), QKV, scheme)
    layer.load_params(raw)
    with pytest.raises(CheckpointError, match=r"layer blk.qkv_proj \(QuarkW8A8Fp8.*\): missing param 'input_scale' "
                       r"\(expected float32 \[3\], static per-tensor input scale\)"):
        layer.load_params({k: v for k, v in raw.items() if k != "input_scale"})
    with pytest.raises(CheckpointError, match=r"param 'weight_scale': expected float32 \[3\], found float32 \[2\]"):
        layer.load_params({**raw, "weight_scale": raw["weight_scale"][:2]})
    with pytest.raises(CheckpointError, match=r"unexpected params \['zero'\]"):
        layer.load_params({**raw, "zero": raw["weight_scale"]})
    with pytest.raises(ValueError, match=r"logical_widths: expected positive shard sizes summing to 128 rows"):
        QuarkLinear(64, 128, scheme=scheme, logical_widths=(64, 32), name="x")
    with pytest.raises(ValueError, match=r"layer l\.down_proj \(.*MXFP4.*\): input_size: MXFP4 needs K to be a "
                                         r"multiple of 32, got 48"):
        QuarkLinear(48, 16, scheme=QuarkW4A4MXFP4(), name="l.down_proj")
    with pytest.raises(TypeError, match=r"scheme: expected a QuarkScheme or None, got dict"):
        QuarkLinear(48, 16, scheme={})


def test_model_dtype_casts_input_and_output():
    layer = QuarkLinear.from_pretrained(variant_dir(FP8), QKV, dtype=jnp.bfloat16, impl="xla")
    x = x_for(FP8)
    y = layer(x)  # f32 input, bf16 model
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y), np.asarray(layer(jnp.asarray(x, jnp.bfloat16))))
    free = QuarkLinear(64, 128, scheme=layer.scheme, logical_widths=(64, 32, 32), dtype=None)
    free.load_params(load_layer_params(variant_dir(FP8), QKV, layer.scheme))
    assert free(jnp.asarray(x, jnp.float16)).dtype == jnp.float16  # dtype None: x's dtype


def test_unquantized_layers_and_bias(tmp_path):
    # lm_head is excluded: an unquantized float linear
    head = QuarkLinear.from_pretrained(variant_dir(FP8), "lm_head")
    assert isinstance(head.scheme, UnquantizedLinearMethod) and head.weight[...].dtype == jnp.float32
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    w = SafetensorsFile(variant_dir(FP8) / "model.safetensors").get("lm_head.weight")
    np.testing.assert_allclose(np.asarray(head(x)), x.astype(np.float64) @ w.T, rtol=0, atol=1e-5)
    # Qwen2-style q/k/v biases: loaded per shard, concatenated, added in f32
    rng = np.random.default_rng(1)
    biases = {f"model.layers.0.self_attn.{p}.bias": rng.standard_normal(n).astype(np.float32)
              for p, n in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32))}
    d = edited_copy(variant_dir(FP8), tmp_path / "bias", add=biases)
    with_bias = QuarkLinear.from_pretrained(d, QKV, impl="xla")
    plain = QuarkLinear.from_pretrained(variant_dir(FP8), QKV, impl="xla")
    assert with_bias.use_bias and not plain.use_bias
    xq = x_for(FP8)
    np.testing.assert_allclose(np.asarray(with_bias(xq)), np.asarray(plain(xq)) + np.concatenate(list(biases.values())),
                               rtol=0, atol=1e-6)
    # one shard without a bias: an error naming the shards
    d2 = edited_copy(variant_dir(FP8), tmp_path / "partial",
                     add={k: v for k, v in biases.items() if "v_proj" not in k})
    with pytest.raises(CheckpointError, match=r"some fused shards have a bias and some do not"):
        QuarkLinear.from_pretrained(d2, QKV)
    # a float checkpoint (no quantization_config): every layer unquantized
    d3 = edited_copy(variant_dir(FP8), tmp_path / "float", config_edit=lambda c: c.pop("quantization_config"),
                     add={"model.layers.0.mlp.up_proj.weight": rng.standard_normal((128, 64)).astype(np.float32)},
                     drop=["model.layers.0.mlp.up_proj.weight_scale", "model.layers.0.mlp.up_proj.input_scale"])
    up = QuarkLinear.from_pretrained(d3, "model.layers.0.mlp.up_proj")
    assert isinstance(up.scheme, UnquantizedLinearMethod)
