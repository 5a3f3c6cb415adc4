"""The schemes of issue 19 through the whole model: checkpoints in vLLM's / Quark's format derived from the tiny
Llama fixture, loaded by ``from_pretrained`` and compared with a float64 numpy model using vLLM's formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kernel_reference as kref
import reference_numpy as ref
from checkpoint_tools import edited_copy, read_tensors
from conftest import FIXTURES, variant_dir
from quark_jax.io import SafetensorsFile
from quark_jax.models import from_pretrained
from quark_jax.schemes import QuarkW8A8Int8
from reference_llama import llama_logits

F32 = np.float32
TOKENS = SafetensorsFile(FIXTURES / "float.safetensors").get("__logit_tokens__")
INT8_SYM = "w_int8_perchannel_sym_a_int8_pertensor_static_sym"


def _logits(model):
    return np.asarray(model(TOKENS), np.float64)


def _config(src):
    cfg = json.loads((variant_dir(src) / "config.json").read_text())
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    return cfg


# ------------------------------------------------------------------------------------- INT8 dynamic per-token

@pytest.fixture(scope="module", params=[True, False], ids=["sym", "asym"])
def int8_dynamic(request, tmp_path_factory):
    """The INT8 fixture with its static input quantizer replaced by Quark's dynamic per-token spec."""
    symmetric = request.param

    def edit(cfg):
        cfg["quantization_config"]["global_quant_config"]["input_tensors"].update(
            qscheme="per_channel", ch_axis=1, is_dynamic=True, symmetric=symmetric)

    tensors = read_tensors(variant_dir(INT8_SYM))
    drop = [n for n in tensors if n.endswith((".input_scale", ".input_zero_point"))]
    path = edited_copy(variant_dir(INT8_SYM), tmp_path_factory.mktemp("int8dyn"), drop=drop, config_edit=edit)
    return symmetric, tensors, from_pretrained(path, fuse_projections=False)


def test_int8_dynamic_per_token_model_matches_vllm_reference(int8_dynamic):
    symmetric, w, model = int8_dynamic
    scheme = model.model.layers[0].mlp.down_proj.scheme
    assert isinstance(scheme, QuarkW8A8Int8) and not scheme.is_static_input_scheme
    assert scheme.input_symmetric is symmetric

    def linear(name, x):
        wq, s_w = w[name + ".weight"], w[name + ".weight_scale"].astype(F32)
        x32 = x.reshape(-1, x.shape[-1]).astype(F32)
        if symmetric:
            q, s = ref.int8_dynamic_sym(x32)
            y = kref.scaled_mm_f64(q, wq, s, s_w)
        else:
            q, s, z = ref.int8_dynamic_asym(x32)
            y = kref.scaled_mm_f64(q, wq, s, s_w, azp_adj=wq.astype(np.int64).sum(axis=1), azp=z)
        return y.astype(F32).astype(np.float64).reshape(*x.shape[:-1], -1)

    want = llama_logits(w, _config(INT8_SYM), TOKENS, linear=linear)
    got = _logits(model)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    # per-token INT8 stays close to the static-input model of the same weights (a few percent of the logit range)
    static = _logits(from_pretrained(variant_dir(INT8_SYM), fuse_projections=False))
    assert np.abs(got - static).max() <= 0.1 * np.abs(static).max()
