"""``llama.DECODE_PROLOGUE_FUSION``: the decode step with the RMSNorms before the fused qkv_proj / gate_up_proj and
the SiLU-mul before down_proj formed in the static-FP8 GEMMs' prologue (``kernels.fp8_scaled_mm(transform=...)``)
gives the logits, KV cache and greedy tokens of the step as written: bit for bit in interpret mode (the kernel's
SiLU is XLA's logistic there); compiled on a GPU the SiLU may differ by rounding (SPEC 11.7). Non-FP8 layers take
the XLA path unchanged."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decode_step_helpers import fp8_pallas_model
import quark_jax.data
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas
from quark_jax.models import from_pretrained, llama

ON_GPU = jax.default_backend() == "gpu"


def decode_step(model, flag):
    """(logits, cache leaves, greedy tokens of 3 steps, the Pallas GEMMs' transforms traced) of decode tokens at
    slots 2.. of an 8-slot cache holding two earlier tokens, traced with DECODE_PROLOGUE_FUSION=flag."""
    old, entry = llama.DECODE_PROLOGUE_FUSION, fp8_pallas.fp8_scaled_mm_pallas
    transforms = []

    def recorder(*a, transform="none", **kw):
        transforms.append(transform)
        return entry(*a, transform=transform, **kw)

    try:
        llama.DECODE_PROLOGUE_FUSION, fp8_pallas.fp8_scaled_mm_pallas = flag, recorder
        jax.clear_caches()  # retrace every GEMM (the schemes' jitted apply is cached per shape)
        graphdef, state = nnx.split(model)
        cache = model.init_cache(1, 8)
        r = np.random.default_rng(0)
        cache = jax.tree_util.tree_map(lambda a: jnp.asarray(r.standard_normal(a.shape) * 0.5).astype(a.dtype),
                                       cache)  # slots 0, 1 hold earlier tokens' k/v
        step = jax.jit(lambda st, ids, c, s: nnx.merge(graphdef, st).forward_cached(ids, c, s))
        tok, first, toks = jnp.asarray([[7]], jnp.int32), None, []
        for slot in range(2, 5):  # greedy: each step's argmax is the next input
            logits, cache = step(state, tok, cache, jnp.int32(slot))
            first = np.asarray(logits.astype(jnp.float32)) if first is None else first
            tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
            toks.append(int(tok[0, 0]))
        return first, jax.tree_util.tree_leaves(cache), toks, transforms
    finally:
        llama.DECODE_PROLOGUE_FUSION, fp8_pallas.fp8_scaled_mm_pallas = old, entry


def check_same(got, ref):
    logits, cache, toks, _ = got
    ref_logits, ref_cache, ref_toks, _ = ref
    assert toks == ref_toks
    if ON_GPU:  # the compiled SiLU rounds differently now and then: logits close, tokens equal (above)
        np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=2.0 ** -5 * np.abs(ref_logits).max())
        return
    np.testing.assert_array_equal(logits, ref_logits)
    assert all(np.array_equal(np.asarray(x.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))
               for x, y in zip(cache, ref_cache))


def test_fp8_decode_with_prologue_fusion_equals_unfused(monkeypatch):
    """FP8 static per-tensor, vLLM's fused layout, the GEMMs on the Pallas kernel (interpret mode here) with K
    split in two: qkv_proj and gate_up_proj take the norm's operands, down_proj the gate_up output."""
    model = fp8_pallas_model(monkeypatch, split_k=2)
    ref = decode_step(model, False)
    got = decode_step(model, True)
    check_same(got, ref)
    assert set(ref[3]) == {"none"}
    # one trace serves both layers (shared layer graphs): qkv (norm), o_proj, gate_up (norm), down (SiLU-mul)
    assert got[3] == ["rmsnorm", "none", "rmsnorm", "silu_mul"]
    monkeypatch.setattr(llama, "DECODE_PROLOGUE_MAX_ROWS", 0)  # batches above the cap: the XLA path
    assert set(decode_step(model, True)[3]) == {"none"}


def test_bf16_decode_with_prologue_fusion_unchanged():
    """Float layers take no transform: the flag changes nothing (the XLA norm and SiLU-mul as written)."""
    model = from_pretrained(Path(quark_jax.data.__file__).parent / "tiny_llama_float", jnp.bfloat16,
                            fuse_projections=True)
    check_same(decode_step(model, True), decode_step(model, False))
