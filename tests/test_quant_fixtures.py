"""Quantizers against Quark's own exports (tests/fixtures/quark_tiny_llama): bytes, scales and x_qdq."""

import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy as ref
from conftest import FIXTURES, VARIANTS, quant_config, reference_layers, variant_dir
from quark_jax import quant
from quark_jax.io import SafetensorsFile

MX_VARIANTS = [v for v in VARIANTS if quant_config(v)["global_quant_config"]["weight"]["dtype"] == "fp4"]
FLOAT = SafetensorsFile(FIXTURES / "float.safetensors")


def files(variant):
    d = variant_dir(variant)
    return SafetensorsFile(d / "model.safetensors"), SafetensorsFile(d / "reference.safetensors")


@pytest.mark.parametrize("variant", MX_VARIANTS)
def test_mxfp4_dequant_equals_w_qdq_and_quantize_reproduces_export(variant):
    model, refs = files(variant)
    layers = reference_layers(variant)
    assert len(layers) == 14
    for layer in layers:
        packed, scales = model.get(layer + ".weight"), model.get(layer + ".weight_scale")
        assert packed.dtype == np.uint8 and scales.dtype == np.uint8
        deq = np.asarray(quant.dequantize_mxfp4(jnp.asarray(packed), jnp.asarray(scales), jnp.float32))
        np.testing.assert_array_equal(deq.view(np.uint32), refs.get(layer + ".w_qdq").view(np.uint32), err_msg=layer)
        p, s = quant.quantize_mxfp4(jnp.asarray(FLOAT.get(layer + ".weight")))
        np.testing.assert_array_equal(np.asarray(s), scales, err_msg=layer + " scale bytes")
        np.testing.assert_array_equal(np.asarray(p), packed, err_msg=layer + " packed bytes")


def quantize_input(spec, model, layer, x):
    """Apply the layer's input spec the vLLM way; returns (dequantized x in x's dtype, codes, scale)."""
    if spec["dtype"] == "fp8_e4m3" and not spec["is_dynamic"]:
        q, s = quant.scaled_fp8_quant(jnp.asarray(x), model.get(layer + ".input_scale"))
    elif spec["dtype"] == "fp8_e4m3" and spec["qscheme"] == "per_channel":
        q, s = quant.scaled_fp8_quant(jnp.asarray(x), per_token=True)
    elif spec["dtype"] == "int8":
        z = model.get(layer + ".input_zero_point")
        if spec["symmetric"]:
            assert int(z) == 0
            q, s, _ = quant.scaled_int8_quant(jnp.asarray(x), model.get(layer + ".input_scale"))
        else:
            q, s, zz = quant.scaled_int8_quant(jnp.asarray(x), model.get(layer + ".input_scale"), z)
            return ((np.asarray(q, np.float32) - np.asarray(zz, np.float32)) * np.asarray(s)), q, s
        return np.asarray(q, np.float32) * np.asarray(s), q, s
    elif spec["dtype"] == "fp4":
        out = quant.qdq_mxfp4(jnp.asarray(x))
        return np.asarray(out.astype(jnp.float32)), None, None
    else:
        raise AssertionError(spec)
    return np.asarray(q.astype(jnp.float32)) * np.asarray(s), q, s


QUANT_INPUT_VARIANTS = [v for v in VARIANTS if quant_config(v)["global_quant_config"]["input_tensors"] is not None]


@pytest.mark.parametrize("variant", QUANT_INPUT_VARIANTS)
def test_input_quantization_matches_x_qdq(variant):
    spec = quant_config(variant)["global_quant_config"]["input_tensors"]
    model, refs = files(variant)
    bf16 = variant.startswith("bf16")
    differing = total = 0
    for layer in reference_layers(variant):
        x = refs.get(layer + ".x")
        want = refs.get(layer + ".x_qdq").astype(np.float32)
        got, q, s = quantize_input(spec, model, layer, x)
        if bf16:
            # Quark divides x / s in bf16 (and rounds per-token scales to bf16); vLLM multiplies by an f32
            # reciprocal (or divides by an f32 scale). Check the codes bit-exactly against the vLLM numpy reference
            # and the values only loosely against Quark (SPEC section 7 item 6).
            xs = x.astype(np.float32)
            if spec["is_dynamic"]:
                rq, rs = ref.fp8_dynamic_per_token(xs)
                np.testing.assert_array_equal(np.asarray(s), rs)
            else:
                rq, _ = ref.fp8_static(xs, model.get(layer + ".input_scale").astype(np.float32))
            np.testing.assert_array_equal(np.asarray(q).view(np.uint8), rq.view(np.uint8), err_msg=layer)
            got = got.astype(x.dtype).astype(np.float32)  # Quark's x_qdq is in the model dtype
            # at most one e4m3 step (3 mantissa bits) apart, plus the bf16 rounding of the products
            step = np.maximum(np.abs(got), np.abs(want)) * 2.0**-3
            assert (np.abs(got - want) <= 1.02 * step + np.abs(np.asarray(s)) * 2.0**-9).all(), layer
            differing += int((got != want).sum())
            total += got.size
        elif spec["dtype"] == "fp8_e4m3" and spec["is_dynamic"]:
            # codes equal Quark's exactly; Quark's dequantized product may differ from ours by one float32 ulp
            quark_codes = ref.fp8_cast(want / np.asarray(s))
            np.testing.assert_array_equal(np.asarray(q).view(np.uint8), quark_codes.view(np.uint8), err_msg=layer)
            np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=0, err_msg=layer)
        else:
            if spec["dtype"] == "fp4":  # vLLM's qdq keeps -0.0 where Quark writes +0.0 (SPEC section 2)
                got, want = got + np.float32(0.0), want + np.float32(0.0)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=layer)
    if bf16:
        assert differing / total < 0.35, (differing, total)  # measured: 3% static, 30% per-token


@pytest.mark.parametrize("variant", [v for v in VARIANTS if "fp8" in quant_config(v)["global_quant_config"]["weight"]["dtype"]])
def test_fp8_weight_times_scale_equals_w_qdq(variant):
    model, refs = files(variant)
    for layer in reference_layers(variant):
        w = model.get(layer + ".weight").astype(np.float32)
        s = model.get(layer + ".weight_scale").astype(np.float32)
        deq = w * (s[:, None] if s.ndim == 1 else s)
        want = refs.get(layer + ".w_qdq")
        np.testing.assert_array_equal(deq.astype(want.dtype).astype(np.float32), want.astype(np.float32), err_msg=layer)
