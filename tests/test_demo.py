"""``quark-jax demo``: its numbers equal an independent float64 numpy computation of each layer the way vLLM runs it
(tests/layer_reference.py), against the float weights of the model the checkpoints were quantized from."""

import re

import numpy as np
import pytest

import layer_reference as lref
import reference_numpy as ref
from conftest import quant_config, variant_dir
from quark_jax import cli
from quark_jax.data import BUNDLED, FLOAT_CHECKPOINT
from quark_jax.demo import layer_errors
from quark_jax.errors import InvalidArgumentError
from quark_jax.io import SafetensorsFile

LAYERS = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj", "model.layers.0.self_attn.q_proj"]


def _independent(ckpt, kind, layer, rows=8, seed=0):
    """(output error, weight error) in float64 from the raw tensors."""
    model = SafetensorsFile(ckpt / "model.safetensors")
    w_float = SafetensorsFile(FLOAT_CHECKPOINT / "model.safetensors").get(f"{layer}.weight").astype(np.float64)
    x = np.random.default_rng(seed).standard_normal((rows, w_float.shape[1])).astype(np.float32)
    if f"{layer}.input_scale" in model:  # the calibrated range: amax about s * qmax
        qmax = 127.0 if kind.startswith("int8") else 448.0
        x *= np.float32(float(model.get(f"{layer}.input_scale")) * qmax / 4)
    y = lref.vllm_layer(kind, model, [layer], x)
    w, s = model.get(f"{layer}.weight"), model.get(f"{layer}.weight_scale")
    if kind.startswith("mxfp4"):
        w_deq = ref.mxfp4_dequantize(w, s).astype(np.float64)
    else:
        w_deq = w.astype(np.float64) * s.astype(np.float64).reshape(-1, 1)
    y_ref = x.astype(np.float64) @ w_float.T
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    return rel(y, y_ref), rel(w_deq, w_float)


@pytest.mark.parametrize("variant", ["w_fp8_a_fp8_pertensor_static", "w_int8_perchannel_sym_a_int8_pertensor_static_sym",
                                     "w_mxfp4_weight_only", "w_mxfp4_a_mxfp4"])
def test_demo_numbers_equal_an_independent_computation(variant, capsys):
    ckpt = variant_dir(variant)
    kind = lref.kind_of(quant_config(variant))
    rows = {r.layer: r for r in layer_errors(ckpt, reference=FLOAT_CHECKPOINT, layers=LAYERS)}
    assert len(rows) == 3
    for layer in LAYERS:
        out_err, w_err = _independent(ckpt, kind, layer)
        np.testing.assert_allclose(rows[layer].output_error, out_err, rtol=1e-4)
        np.testing.assert_allclose(rows[layer].weight_error, w_err, rtol=1e-6)
        assert 0.0 < out_err < 0.3 and rows[layer].compile_ms >= 0 and rows[layer].run_ms > 0
    if variant == "w_fp8_a_fp8_pertensor_static":  # the CLI prints the same numbers
        assert cli.main(["demo", str(ckpt), "--reference", str(FLOAT_CHECKPOINT)]) == 0
        out = capsys.readouterr().out
        for layer in LAYERS:
            line = next(li for li in out.splitlines() if li.strip().startswith(layer + " "))
            printed = [float(v) for v in re.findall(r"\d\.\d{3}e[-+]\d\d", line)]
            assert printed == pytest.approx([rows[layer].output_error, rows[layer].weight_error], rel=1e-3)


def test_demo_without_reference_measures_the_activation_error_only(capsys):
    ckpt = variant_dir("w_mxfp4_weight_only")
    rows = layer_errors(ckpt, layers=LAYERS)
    assert len(rows) == 3 and all(r.output_error is None and r.weight_error is None for r in rows)  # weight-only
    rows = layer_errors(variant_dir("w_fp8_perchannel_a_fp8_pertoken_dynamic"), layers=LAYERS)
    assert all(r.weight_error is None and 0 < r.output_error < 0.1 for r in rows)


def test_demo_bundled_uses_the_float_model_and_a_float_checkpoint_is_a_clear_error(capsys):
    assert cli.main(["demo", "tiny-llama-fp8"]) == 0
    out = capsys.readouterr().out
    assert f"reference: float weights of {FLOAT_CHECKPOINT}" in out and out.count("QuarkW8A8Fp8(") == 14
    with pytest.raises(InvalidArgumentError, match="no quantization_config in config.json, a float checkpoint"):
        layer_errors(FLOAT_CHECKPOINT)
    assert cli.main(["demo", str(FLOAT_CHECKPOINT)]) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint ")
    assert set(BUNDLED) == {"tiny-llama-fp8", "tiny-llama-mxfp4"}


def test_demo_nvfp4_inputs_lie_in_the_range_of_its_global_scale():
    """NVFP4's static global input scale (input_scale_2 = amax / (448 * 6)) sets the demo's input range: N(0, 1)
    rows would saturate the block scales of down_proj (calibrated amax 0.13: output error 0.90 before)."""
    from conftest import FIXTURES

    rows = layer_errors(FIXTURES / "issue19" / "w_nvfp4_a_nvfp4", reference=FLOAT_CHECKPOINT, layers=LAYERS)
    assert len(rows) == 3
    for r in rows:
        assert 0.0 < r.output_error < 0.2 and 0.0 < r.weight_error < 0.2, r
