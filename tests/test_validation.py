"""Damaged copies of the bundled and fixture checkpoints: every problem is found at load as a CheckpointError naming
file, tensor and layer; ``validate_checkpoint`` / ``quark-jax check`` report every problem; no silent zeros."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from checkpoint_tools import edited_copy, read_tensors, truncate
from conftest import variant_dir
from quark_jax import cli, validate_checkpoint
from quark_jax.data import BUNDLED
from quark_jax.errors import CheckpointError, QuarkJaxError
from quark_jax.nn import QuarkLinear

FP8 = BUNDLED["tiny-llama-fp8"]
MXFP4 = BUNDLED["tiny-llama-mxfp4"]
Q = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.1.mlp.down_proj"


def _damaged(src, dst, **tensors):
    """A copy of ``src`` with tensors replaced: ``name=value`` (dots written as __)."""
    base = read_tensors(src)
    add = {}
    for key, fn in tensors.items():
        name = key.replace("__", ".")
        add[name] = fn(base[name].copy())
    return edited_copy(src, dst, add=add)


def _fill(value):
    def f(a):
        a[...] = value
        return a
    return f


@pytest.mark.parametrize("tensor, value, found", [
    (f"{Q}.weight_scale", 0.0, "0.0 at"),
    (f"{Q}.weight_scale", np.nan, "nan at"),
    (f"{Q}.weight_scale", np.inf, "inf at"),
    (f"{Q}.weight_scale", -0.5, "-0.5 at"),
    (f"{DOWN}.input_scale", 0.0, "0.0 at"),
])
def test_bad_scale_raises_at_load_naming_file_tensor_layer(tensor, value, found, tmp_path):
    d = _damaged(FP8, tmp_path / "d", **{tensor.replace(".", "__"): _fill(value)})
    layer = tensor.rpartition(".")[0]
    with pytest.raises(CheckpointError, match="expected finite scales > 0, found 1 of 1 values") as e:
        QuarkLinear.from_pretrained(d, layer)
    err = e.value
    assert err.tensor == tensor and err.layer == layer and err.file.endswith("model.safetensors")
    assert found in str(err) and f"layer {layer}: tensor {tensor!r}" in str(err)
    assert isinstance(err, QuarkJaxError) and isinstance(err, ValueError)


@pytest.fixture(scope="module")
def bad_e8m0(tmp_path_factory):
    def byte_255(a):
        a[3, 1] = 255
        return a
    return _damaged(MXFP4, tmp_path_factory.mktemp("e8m0"), **{f"{DOWN}.weight_scale".replace(".", "__"): byte_255})


def test_e8m0_byte_255_raises_in_every_loader(bad_e8m0):
    from flax import nnx

    from quark_jax.models import from_pretrained
    from quark_jax.nn.linen import QuarkDense

    match = r"expected E8M0 scale bytes 0..254, found 1 of 256 E8M0 bytes are 255 \(NaN\): at \[3, 1\]"
    with pytest.raises(CheckpointError, match=match) as e:
        from_pretrained(bad_e8m0)
    assert e.value.tensor == f"{DOWN}.weight_scale"
    with pytest.raises(CheckpointError, match=match):
        QuarkLinear.from_pretrained(bad_e8m0, DOWN)
    with pytest.raises(CheckpointError, match=match):  # load_weights into a user's quantized model
        from quark_jax import load_weights, quantize_model

        class Block(nnx.Module):
            def __init__(self):
                self.down_proj = nnx.Linear(128, 64, use_bias=False, rngs=nnx.Rngs(0))
        load_weights(quantize_model(Block(), bad_e8m0, prefix="model.layers.1.mlp"), bad_e8m0,
                     prefix="model.layers.1.mlp", strict=False)
    with pytest.raises(CheckpointError, match=match):
        QuarkDense(64, config=bad_e8m0, checkpoint=bad_e8m0, checkpoint_path=DOWN).init(
            jax.random.PRNGKey(0), jnp.ones((1, 128)))



def test_kv_output_scale_nan_raises(tmp_path):
    from quark_jax.checkpoint import load_kv_scales

    src = variant_dir("w_fp8_a_fp8_pertensor_static_kv_fp8")
    name = "model.layers.0.self_attn.k_proj.output_scale"
    d = _damaged(src, tmp_path / "kv", **{name.replace(".", "__"): _fill(np.nan)})
    with pytest.raises(CheckpointError, match=f"tensor '{name}'.*expected finite scales > 0"):
        load_kv_scales(d, "model.layers.0.self_attn")


def test_load_params_checks_scales_too():
    layer = QuarkLinear.from_pretrained(FP8, DOWN)
    raw = {"weight": np.zeros((64, 128), ml_dtypes.float8_e4m3fn), "weight_scale": np.float32([np.nan]),
           "input_scale": np.float32([1.0])}
    with pytest.raises(CheckpointError, match=f"tensor '{DOWN}.weight_scale'.*found 1 of 1 values that are not: nan"):
        layer.load_params(raw)


def test_layer_called_before_loading_raises_naming_it():
    from flax import nnx

    from quark_jax import quantize_model

    class Block(nnx.Module):
        def __init__(self):
            self.down_proj = nnx.Linear(128, 64, use_bias=False, rngs=nnx.Rngs(0))
    m = quantize_model(Block(), FP8, prefix="model.layers.1.mlp")
    x = jnp.ones((2, 128))
    with pytest.raises(CheckpointError, match=f"layer {DOWN} .*called before its weights were loaded"):
        m.down_proj(x)
    with pytest.raises(CheckpointError, match="called before its weights were loaded"):  # also while tracing
        nnx.jit(lambda mod, v: mod.down_proj(v))(m, x)
    from quark_jax import load_weights

    load_weights(m, FP8, prefix="model.layers.1.mlp", strict=False)
    assert np.isfinite(np.asarray(m.down_proj(x))).all() and np.abs(np.asarray(m.down_proj(x))).sum() > 0


@pytest.fixture(scope="module")
def many_problems(tmp_path_factory):
    """One fp8 copy with six independent problems in different layers and files' tensors."""
    base = read_tensors(FP8)
    add = {
        f"{Q}.weight_scale": np.float32(np.nan),
        "model.layers.0.self_attn.o_proj.input_scale": np.float32(0.0),
        "model.layers.1.mlp.down_proj.weight_scale": np.ones(3, np.float32),  # wrong shape
        "model.norm.weight": np.where(np.arange(64) == 5, np.inf, base["model.norm.weight"]).astype(np.float32),
    }
    w = base["model.layers.0.mlp.gate_proj.weight"].copy()
    w.view(np.uint8)[2, 7] = 0x7F  # an FP8 NaN code
    add["model.layers.0.mlp.gate_proj.weight"] = w
    return edited_copy(FP8, tmp_path_factory.mktemp("many"), add=add,
                       drop=("model.layers.1.mlp.up_proj.weight_scale",))


def test_validate_checkpoint_reports_every_problem(many_problems):
    problems = validate_checkpoint(many_problems)
    by_tensor = {p.tensor: p for p in problems}
    assert {f"{Q}.weight_scale", "model.layers.0.self_attn.o_proj.input_scale", "model.norm.weight",
            "model.layers.0.mlp.gate_proj.weight"} <= set(by_tensor), [str(p) for p in problems]
    assert "found 1 of 1 values that are not: nan" in str(by_tensor[f"{Q}.weight_scale"])
    assert "1 of 64 values that are not finite: inf at [5]" in str(by_tensor["model.norm.weight"])
    assert "NaN codes, first at [2, 7]" in str(by_tensor["model.layers.0.mlp.gate_proj.weight"])
    text = "\n".join(map(str, problems))
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight_scale'" in text
    assert "'model.layers.1.mlp.down_proj.weight_scale': expected shape [] (per-tensor weight scale" in text
    assert len(problems) == 6
    assert all(p.file or p.layer for p in problems)


def test_check_and_inspect_exit_1_on_problems(many_problems, capsys):
    assert cli.main(["check", str(many_problems)]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 6 and "6 problem(s)" in out
    assert cli.main(["inspect", str(many_problems)]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 4  # scales and structure; weight values (norm inf, FP8 NaN) only in check
    assert cli.main(["inspect", "--no-check", str(many_problems)]) == 0


def test_a_layer_unlike_the_others_is_a_problem(tmp_path):
    from checkpoint_tools import make_checkpoint

    tensors = {f"model.layers.{i}.mlp.down_proj.weight": np.ones((4, 8), np.float32) for i in range(3)}
    tensors["model.layers.2.mlp.down_proj.weight"] = np.ones((4, 6), np.float32)
    d = make_checkpoint(tmp_path / "c", tensors, {})  # no model_type: no model-level check
    (p,) = validate_checkpoint(d)
    assert p.tensor == "model.layers.2.mlp.down_proj.weight" and p.expected == "float32 [4, 8]"
    assert "found float32 [4, 6]" in str(p) and "like the same tensor of the other 2 layers" in str(p)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_check_bundled_is_clean(name, capsys):
    assert cli.main(["check", name]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_check_reports_broken_files(tmp_path, capsys):
    d = edited_copy(FP8, tmp_path / "sharded", shards=2)
    truncate(d / "model-00002-of-00002.safetensors", 10)
    (d / "config.json").write_text("{oops")
    problems = validate_checkpoint(d)
    assert len(problems) == 2, problems
    assert "config.json: not valid JSON" in str(problems[0])
    assert "model-00002-of-00002.safetensors" in problems[1].file and "truncated" in str(problems[1])
    assert cli.main(["check", str(d)]) == 1


def test_run_on_a_damaged_checkpoint_is_a_clear_error(bad_e8m0, capsys):
    assert cli.main(["run", str(bad_e8m0), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "E8M0 bytes are 255" in err


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.int8, np.int32, "float8_e4m3fn"])
def test_unsupported_model_dtype_is_rejected_with_the_supported_list(dtype):
    from quark_jax.errors import InvalidArgumentError
    from quark_jax.models import from_pretrained

    with pytest.raises(InvalidArgumentError, match=r"^dtype: expected one of float32, bfloat16, float16 \(or None: "
                                                   r"the checkpoint's\), got " + np.dtype(dtype).name):
        from_pretrained("tiny-llama-fp8", dtype=dtype)


def test_structure_errors_carry_the_fields(tmp_path):
    name = f"{Q}.weight_scale"
    d = edited_copy(FP8, tmp_path / "s", add={name: np.ones(2, np.float32)})
    with pytest.raises(CheckpointError) as e:
        QuarkLinear.from_pretrained(d, Q)
    err = e.value
    assert (err.tensor, err.layer, err.field, err.expected, err.found) == (name, Q, "weight_scale", "[]", "[2]")
    assert err.file.endswith("model.safetensors") and f"in {err.file}" in str(err)
    d2 = edited_copy(FP8, tmp_path / "m", drop=(name,))
    with pytest.raises(CheckpointError) as e:
        QuarkLinear.from_pretrained(d2, Q)
    assert (e.value.tensor, e.value.field, e.value.found) == (name, "weight_scale", "no such tensor")


def test_model_level_problems_from_the_headers(tmp_path):
    from quark_jax.data import FLOAT_CHECKPOINT

    d = edited_copy(FP8, tmp_path / "a", drop=("model.norm.weight",))
    (p,) = validate_checkpoint(d)
    assert "missing tensors: model.norm.weight (for RMSNorm model.norm.weight)" in str(p)
    d = edited_copy(FLOAT_CHECKPOINT, tmp_path / "b", add={"model.extra.weight": np.ones(3, np.float32)})
    (p,) = validate_checkpoint(d)
    assert "tensor model.extra.weight has no matching layer in the model" in str(p)
    d = edited_copy(FLOAT_CHECKPOINT, tmp_path / "c", config_edit=lambda c: c.update(hidden_size="x"))
    (p,) = validate_checkpoint(d)
    assert "config.json: a field has a value of the wrong type" in str(p) and p.file.endswith("config.json")
