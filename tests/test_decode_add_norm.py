"""``llama.DECODE_ADD_NORM``: the decode step with each residual add + RMSNorm (+ the static FP8 / INT8
quantization of the GEMM after it) in one ``kernels.add_rmsnorm`` call gives the same logits and KV cache as the
step as written (bit for bit here: interpret mode sums as XLA does; on a GPU the compiled kernel may differ in the
sum of squares' float32 order, SPEC 11.6), on tiny bf16 checkpoints (vLLM's fused layout): FP8 static per-tensor,
float, INT8 static asymmetric; the quantized steps hand the GEMMs the codes (one kernel per norm, no separate
quantizer), the FP8 one also its split-K sums."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import variant_dir
from decode_step_helpers import fp8_pallas_model
import quark_jax.data
from quark_jax.kernels.tiling import SplitSums
from quark_jax.models import from_pretrained, llama

def decode_step(model, impl):
    """(logits, cache leaves, add_rmsnorm calls traced) of one decode token at slot 2 of an 4-slot cache holding
    two earlier tokens, the step traced with DECODE_ADD_NORM=impl; each call recorded as (the residual addend:
    None, "array" or "sums" (a split-K GEMM's unfinished sums), FP8 output)."""
    old, entry = llama.DECODE_ADD_NORM, llama.add_rmsnorm
    calls = []

    def recorder(x, weight, residual=None, **kw):
        kind = None if residual is None else "sums" if isinstance(residual, SplitSums) else "array"
        calls.append((kind, kw.get("scale") is not None))
        return entry(x, weight, residual, **kw)

    try:
        llama.DECODE_ADD_NORM, llama.add_rmsnorm = impl, recorder
        graphdef, state = nnx.split(model)
        cache = model.init_cache(1, 4)
        r = np.random.default_rng(0)
        cache = jax.tree_util.tree_map(lambda a: jnp.asarray(r.standard_normal(a.shape) * 0.5).astype(a.dtype),
                                       cache)  # slots 0, 1 hold earlier tokens' k/v (values only matter here)
        step = jax.jit(lambda st, ids, c, s: nnx.merge(graphdef, st).forward_cached(ids, c, s))
        logits, cache = step(state, jnp.asarray([[7]], jnp.int32), cache, jnp.int32(2))
        return np.asarray(logits.astype(jnp.float32)), jax.tree_util.tree_leaves(cache), calls
    finally:
        llama.DECODE_ADD_NORM, llama.add_rmsnorm = old, entry


ON_GPU = jax.default_backend() == "gpu"


def check_same(got, ref, cache, ref_cache):
    """Bit for bit in interpret mode; compiled on a GPU the sum of squares' order may move a norm output by an
    ulp (SPEC 11.6): then logits within 2^-5 of their largest magnitude (and the same greedy token where that
    cannot flip it)."""
    if ON_GPU:
        atol = 2.0 ** -5 * np.abs(ref).max()
        np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
        top2 = np.sort(ref.reshape(-1, ref.shape[-1]), axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * atol  # the greedy token where no such difference can flip it
        assert np.array_equal(got.reshape(-1, got.shape[-1]).argmax(-1)[clear],
                              ref.reshape(-1, ref.shape[-1]).argmax(-1)[clear])
        return
    np.testing.assert_array_equal(got, ref)
    assert all(np.array_equal(np.asarray(x.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))
               for x, y in zip(cache, ref_cache))


def test_fp8_decode_step_equals_unfused(monkeypatch):
    """The FP8 GEMMs on the Pallas kernel with K split in two (as o_proj / down run at decode on the H200): o_proj
    and down_proj hand their unfinished sums to the next norm kernel, which runs their epilogue."""
    model = fp8_pallas_model(monkeypatch, split_k=2)
    ref, ref_cache, ref_calls = decode_step(model, None)
    got, cache, calls = decode_step(model, "pallas")
    check_same(got, ref, cache, ref_cache)
    # 2 layers (the second traced once for both): the first input norm, 3 add + norms, all with FP8 codes for
    # qkv_proj / gate_up_proj, then the final add + norm in bf16 for the float lm_head
    assert ref_calls == [] and calls == [(None, True), ("sums", True), ("sums", True), ("sums", True),
                                         ("sums", False)]


def test_bf16_decode_step_equals_unfused():
    model = from_pretrained(Path(quark_jax.data.__file__).parent / "tiny_llama_float", jnp.bfloat16, fuse_projections=True)
    ref, ref_cache, _ = decode_step(model, None)
    got, cache, calls = decode_step(model, "pallas")
    check_same(got, ref, cache, ref_cache)
    assert calls == [(None, False)] + [("array", False)] * 4  # float layers: no FP8 codes, finished outputs


def test_int8_asymmetric_decode_step_equals_unfused():
    """Static asymmetric INT8 (scale and zero point): the norm kernels write the int8 codes for qkv / gate_up."""
    model = from_pretrained(variant_dir("w_int8_perchannel_sym_a_int8_pertensor_static_asym"), jnp.bfloat16,
                            fuse_projections=True)
    ref, ref_cache, _ = decode_step(model, None)
    got, cache, calls = decode_step(model, "pallas")
    check_same(got, ref, cache, ref_cache)
    assert calls == [(None, True)] + [("array", True)] * 3 + [("array", False)]
