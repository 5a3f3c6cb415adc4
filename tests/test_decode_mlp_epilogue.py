"""``llama.DECODE_MLP_EPILOGUE``: the decode step's SiLU-mul and down_proj's FP8 input quantizer in the fused
gate_up GEMM's epilogue (``kernels.fp8_gate_up_silu``) gives the logits, KV cache and greedy tokens of the step as
written: bit for bit in interpret mode (compiled, the SiLU may move a code by one FP8 step: SPEC 11.7); float
models run as written."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import variant_dir
import quark_jax.data
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas
from quark_jax.models import from_pretrained, llama
from quark_jax.nn import QuarkLinear

ON_GPU = jax.default_backend() == "gpu"


def decode_steps(model, flag, monkeypatch):
    """(first logits, cache leaves, greedy tokens of 3 steps, epilogue kernel traces) with the flag set."""
    entry, seen = fp8_pallas.fp8_gate_up_silu_pallas, []

    def recorder(*a, **kw):
        seen.append(a[0].shape)
        return entry(*a, **kw)

    monkeypatch.setattr(fp8_pallas, "fp8_gate_up_silu_pallas", recorder)
    monkeypatch.setattr(llama, "DECODE_MLP_EPILOGUE", flag)
    jax.clear_caches()
    graphdef, state = nnx.split(model)
    cache = model.init_cache(1, 8)
    r = np.random.default_rng(0)
    cache = jax.tree_util.tree_map(lambda a: jnp.asarray(r.standard_normal(a.shape) * 0.5).astype(a.dtype), cache)
    step = jax.jit(lambda st, ids, c, s: nnx.merge(graphdef, st).forward_cached(ids, c, s))
    tok, first, toks = jnp.asarray([[7]], jnp.int32), None, []
    for slot in range(2, 5):
        logits, cache = step(state, tok, cache, jnp.int32(slot))
        first = np.asarray(logits.astype(jnp.float32)) if first is None else first
        tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
        toks.append(int(tok[0, 0]))
    monkeypatch.setattr(fp8_pallas, "fp8_gate_up_silu_pallas", entry)
    return first, [np.asarray(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(cache)], toks, seen


def check_same(got, ref):
    assert got[2] == ref[2]
    if ON_GPU:
        np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=2.0 ** -5 * np.abs(ref[0]).max())
        return
    np.testing.assert_array_equal(got[0], ref[0])
    assert all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(got[1], ref[1]))


def test_fp8_decode_with_mlp_epilogue_equals_as_written(monkeypatch):
    model = from_pretrained(variant_dir("bf16_w_fp8_a_fp8_pertensor_static"), fuse_projections=True)
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, QuarkLinear):
            layer.scheme = layer.scheme.replace(impl="pallas")
    unsplit = fp8_pallas.Config(block_m=16, block_n=32, block_k=32, split_k=1, inner="wx")
    monkeypatch.setattr(fp8_pallas, "select", lambda m, k, n: fp8_pallas.fit(unsplit, m, k, n))
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
