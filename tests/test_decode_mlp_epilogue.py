"""``llama.DECODE_MLP_EPILOGUE``: the decode step's SiLU-mul and down_proj's FP8 input quantizer in the fused
gate_up GEMM's epilogue (``kernels.fp8_gate_up_silu``) gives the logits, KV cache and greedy tokens of the step as
written: bit for bit in interpret mode (compiled, the SiLU may move a code by one FP8 step: SPEC 11.7); float
models run as written."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from decode_step_helpers import fp8_pallas_model, greedy_cached_steps
import quark_jax.data
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas
from quark_jax.models import from_pretrained, llama

ON_GPU = jax.default_backend() == "gpu"


def decode_steps(model, flag, monkeypatch):
    """(first logits, cache leaves, greedy tokens of 3 steps, epilogue kernel traces) with the flag set."""
    entry, seen = fp8_pallas.fp8_gate_up_silu_pallas, []

    def recorder(*a, **kw):
        seen.append(a[0].shape)
        return entry(*a, **kw)

    monkeypatch.setattr(fp8_pallas, "fp8_gate_up_silu_pallas", recorder)
    monkeypatch.setattr(llama, "DECODE_MLP_EPILOGUE", flag)
    first, leaves, toks = greedy_cached_steps(model)
    monkeypatch.setattr(fp8_pallas, "fp8_gate_up_silu_pallas", entry)
    return first, leaves, toks, seen


def check_same(got, ref):
    assert got[2] == ref[2]
    if ON_GPU:
        np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=2.0 ** -5 * np.abs(ref[0]).max())
        return
    np.testing.assert_array_equal(got[0], ref[0])
    assert all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(got[1], ref[1]))


def test_fp8_decode_with_mlp_epilogue_equals_as_written(monkeypatch):
    model = fp8_pallas_model(monkeypatch, split_k=1)
    ref = decode_steps(model, False, monkeypatch)
    got = decode_steps(model, True, monkeypatch)
    assert ref[3] == [] and len(got[3]) == 1  # one trace serves both layers
    check_same(got, ref)
    # with the fused add + RMSNorm, gate_up gets the norm's FP8 codes
    monkeypatch.setattr(llama, "DECODE_ADD_NORM", "pallas")
    both = decode_steps(model, True, monkeypatch)
    assert both[3]
    check_same(both, decode_steps(model, False, monkeypatch))


def test_bf16_decode_with_mlp_epilogue_unchanged(monkeypatch):
    model = from_pretrained(Path(quark_jax.data.__file__).parent / "tiny_llama_float", jnp.bfloat16,
                            fuse_projections=True)
    got = decode_steps(model, True, monkeypatch)
    assert got[3] == []
    check_same(got, decode_steps(model, False, monkeypatch))
