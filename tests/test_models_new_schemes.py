"""The schemes of issue 19 through the whole model: checkpoints in vLLM's / Quark's format written here from the
tiny Llama fixture's float weights (amd-quark cannot export MXFP8 or FP8 per-block; its exports of the other
formats are tests/fixtures/quark_tiny_llama/issue19, tested in test_fixtures_issue19.py), loaded by ``from_pretrained`` (fused q/k/v and gate/up, the default) and
compared with a float64 numpy Llama whose linear layers decode the checkpoint bytes with tests/reference_mx.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ml_dtypes
import reference_mx as rmx
from checkpoint_tools import make_checkpoint
from conftest import FIXTURES, variant_dir
from quark_jax.io import SafetensorsFile
from quark_jax.models import from_pretrained
from quark_jax.schemes import QuarkOCP_MX, QuarkW4A16Int4, QuarkW8A8Fp8PerBlock
from reference_llama import llama_logits

F32 = np.float32
TOKENS = SafetensorsFile(FIXTURES / "float.safetensors").get("__logit_tokens__")


def _logits(model):
    return np.asarray(model(TOKENS), np.float64)


def _config(src):
    cfg = json.loads((variant_dir(src) / "config.json").read_text())
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    return cfg


# ------------------------------------------------------------------ OCP MX, FP8 per-block, INT4 (written here)

FLOAT = {k: v for k, v in SafetensorsFile(FIXTURES / "float.safetensors").load_all().items() if not k.startswith("__")}
LINEARS = [k[:-len(".weight")] for k in FLOAT if k.endswith("_proj.weight")]
BASE_CONFIG = "w_mxfp4_weight_only"  # its config.json (the tiny Llama, transformers-5 schema) is edited per variant


def _mx(dtype, dynamic):
    return {"dtype": dtype, "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0", "ch_axis": -1,
            "is_dynamic": dynamic, "scale_calculation_mode": "even", "symmetric": None, "round_method": "half_even"}


# name -> (weight spec, input spec, pack_method): what the amd-quark exports in issue19/ do not cover (MXFP8 and
# FP8 per-block, which amd-quark cannot export; FP6 weight-only; the "order" INT4 packing; fused loading)
VARIANTS = {
    "mxfp6_e3m2_weight_only": (_mx("fp6_e3m2", False), None, None),
    "mxfp8": (_mx("fp8_e4m3", False), _mx("fp8_e4m3", True), None),
    "fp8_per_block_float": ({"dtype": "fp8_e4m3", "qscheme": "per_block", "block_size": [32, 32], "is_dynamic": False,
                             "symmetric": True, "scale_type": "float32"},
                            {"dtype": "fp8_e4m3", "qscheme": "per_group", "group_size": 32, "is_dynamic": True,
                             "symmetric": True}, None),
    "fp8_per_block_e8m0": ({"dtype": "fp8_e4m3", "qscheme": "per_block", "block_size": [32, 32], "is_dynamic": False,
                            "symmetric": True, "scale_type": "float8_e8m0fnu"},
                           {"dtype": "fp8_e4m3", "qscheme": "per_group", "group_size": 32, "is_dynamic": True,
                            "symmetric": True}, None),
    "uint4_wo_64_order": ({"dtype": "uint4", "qscheme": "per_group", "group_size": 64, "ch_axis": 1,
                           "is_dynamic": False, "symmetric": False}, None, "order"),
}


def _quantize(name, w, wspec, pack):
    """The tensors a checkpoint of this variant stores for one Linear (vLLM's / Quark's names and layouts)."""
    d = wspec["dtype"]
    if wspec["qscheme"] == "per_block":
        from quark_jax import quant

        fmt = "e8m0" if wspec["scale_type"] == "float8_e8m0fnu" else "float"
        q, s = (np.asarray(a) for a in quant.quantize_fp8_per_block(w, tuple(wspec["block_size"]), scale_format=fmt))
        return {"weight": q, "weight_scale": s.view(ml_dtypes.float8_e8m0fnu) if fmt == "e8m0" else s}
    if d in ("int4", "uint4"):
        if wspec["qscheme"] == "per_channel":
            q, s, z = rmx.int4_quantize_weight_per_channel(w, pack, d == "int4")
        else:
            q, s, z = rmx.int4_quantize_weight(w, wspec["group_size"], pack, d == "int4")
        out = {"weight": q, "weight_scale": s}
        if z is not None:
            out["weight_zero_point"] = z
        return out
    q, s = rmx.mx_quantize_weight(w, d)
    return {"weight": q, "weight_scale": s}


def _reference_linear(tensors, wspec, ispec, pack):
    d = wspec["dtype"]

    def linear(name, x):
        t = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if wspec["qscheme"] == "per_block":
            w = rmx.fp8_block_dequantize(t["weight"], t["weight_scale"], tuple(wspec["block_size"]))
        elif d in ("int4", "uint4") and wspec["qscheme"] == "per_channel":
            w = rmx.int4_dequantize_per_channel(t["weight"], t["weight_scale"], t.get("weight_zero_point"), pack,
                                                d == "int4")
        elif d in ("int4", "uint4"):
            w = rmx.int4_dequantize(t["weight"], t["weight_scale"], t.get("weight_zero_point"), wspec["group_size"],
                                    pack, d == "int4")
        else:
            w = rmx.mx_dequantize(t["weight"], t["weight_scale"], d)
        x32 = x.reshape(-1, x.shape[-1]).astype(F32)
        if ispec is None:
            xq = x32.astype(np.float64)
        elif ispec["qscheme"] == "per_group" and ispec["dtype"] == "fp8_e4m3" and "scale_format" not in ispec:
            xq = rmx.fp8_group_qdq(x32, ispec["group_size"])
        else:
            xq = rmx.mx_qdq(x32, ispec["dtype"])
        return (xq @ w.T).astype(F32).astype(np.float64).reshape(*x.shape[:-1], -1)

    return linear


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def written(request, tmp_path_factory):
    name = request.param
    wspec, ispec, pack = VARIANTS[name]
    tensors = {k: v for k, v in FLOAT.items() if not k.endswith("_proj.weight")}
    for lin in LINEARS:
        tensors.update({f"{lin}.{k}": v for k, v in _quantize(name, FLOAT[lin + ".weight"], wspec, pack).items()})
    cfg = json.loads((variant_dir(BASE_CONFIG) / "config.json").read_text())
    qc = cfg["quantization_config"]
    qc["global_quant_config"].update(weight=wspec, input_tensors=ispec)
    if pack is not None:
        qc["export"]["pack_method"] = pack
    path = make_checkpoint(tmp_path_factory.mktemp(name), tensors, cfg)
    return name, tensors, path, from_pretrained(path)


def test_written_variant_logits_match_a_float64_reference(written):
    name, tensors, path, model = written
    wspec, ispec, pack = VARIANTS[name]
    scheme = model.model.layers[0].self_attn.qkv_proj.scheme
    want_type = {"fp8_e4m3": QuarkW8A8Fp8PerBlock if wspec["qscheme"] == "per_block" else QuarkOCP_MX,
                 "int4": QuarkW4A16Int4, "uint4": QuarkW4A16Int4}.get(wspec["dtype"], QuarkOCP_MX)
    assert type(scheme) is want_type, scheme
    cfg = _config(BASE_CONFIG)
    want = llama_logits(tensors, cfg, TOKENS, linear=_reference_linear(tensors, wspec, ispec, pack))
    got = _logits(model)
    # measured 1.2e-7 .. 2.3e-7 (|logits| <= 0.52): float32 rounding of the model against float64
    assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()
    # and the quantized model stays near the float model (the format works, not just agrees with itself)
    float_logits = SafetensorsFile(FIXTURES / "float.safetensors").get("__logits_float__").astype(np.float64)
    assert np.abs(got - float_logits).max() <= 0.25 * np.abs(float_logits).max()


def test_inspect_lists_the_written_variants_schemes(written, capsys):
    from quark_jax import cli

    name, _, path, model = written
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quantized: 14 layer(s)" in out and "unsupported" not in out
    summary = model.model.layers[1].mlp.down_proj.scheme.summary()
    row = next(line for line in out.splitlines() if line.startswith("model.layers.1.mlp.down_proj"))
    assert summary.split("(")[0] in row, (row, summary)
    if name in ("mxfp8", "mxfp6_e3m2_weight_only", "fp8_per_block_e8m0"):  # the demo's per-layer error (generic)
        from quark_jax.demo import layer_errors

        (err,) = layer_errors(path, layers=["model.layers.0.mlp.down_proj"], rows=4)
        weight_only = VARIANTS[name][1] is None
        assert (err.output_error is None) == weight_only
        if not weight_only:  # the activation quantizer's error alone: a few percent at most
            assert 0 < err.output_error < 0.1, err

