"""``llama.DECODE_ROPE_CACHE``: the decode step with the RoPE of q and k and the k/v cache write in one kernel
(``kernels.attention.rope_cache_update``, fed the qkv GEMM's split-K sums) gives the logits, KV cache and greedy
tokens of the step as written, bit for bit (interpret mode here); layers it does not apply to run as written."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import variant_dir
import quark_jax.data
from quark_jax import kernels
from quark_jax.kernels import SplitSums
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas
from quark_jax.models import from_pretrained, llama
from quark_jax.nn import QuarkLinear

ON_GPU = jax.default_backend() == "gpu"


def decode_steps(model, flag, monkeypatch):
    """(first logits, cache leaves, greedy tokens of 3 steps, the kernel's qkv inputs traced) of decode tokens at
    slots 2.. of an 8-slot cache holding two earlier tokens, traced with DECODE_ROPE_CACHE=flag."""
    entry, seen = kernels.rope_cache_update, []

    def recorder(qkv, *a, **kw):
        seen.append(("SplitSums" if isinstance(qkv, SplitSums) else "array", kw["impl"]))
        return entry(qkv, *a, **kw)

    monkeypatch.setattr(llama, "rope_cache_update", recorder)
    monkeypatch.setattr(llama, "DECODE_ROPE_CACHE", flag)
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
    return first, [np.asarray(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(cache)], toks, seen


def check_same(got, ref):
    assert got[2] == ref[2]
    np.testing.assert_array_equal(got[0], ref[0])
    assert len(got[1]) == len(ref[1]) and all(np.array_equal(x.view(np.uint32), y.view(np.uint32))
                                              for x, y in zip(got[1], ref[1]))


def test_fp8_decode_with_rope_cache_kernel_equals_as_written(monkeypatch):
    """Static FP8, vLLM's fused layout, the GEMMs on the Pallas kernel with K split in two: the kernel takes the
    qkv GEMM's SplitSums and finishes them itself."""
    model = from_pretrained(variant_dir("bf16_w_fp8_a_fp8_pertensor_static"), fuse_projections=True)
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, QuarkLinear):
            layer.scheme = layer.scheme.replace(impl="pallas")
    split = fp8_pallas.Config(block_m=16, block_n=32, block_k=32, split_k=2, inner="wx")
    monkeypatch.setattr(fp8_pallas, "select", lambda m, k, n: fp8_pallas.fit(split, m, k, n))
    ref = decode_steps(model, None, monkeypatch)
    got = decode_steps(model, "pallas", monkeypatch)
    assert ref[3] == [] and got[3] == [("SplitSums", "pallas")]  # one trace serves both layers
    check_same(got, ref)
    check_same(decode_steps(model, "xla", monkeypatch), ref)
    if ON_GPU:  # "auto": the kernel on a CUDA GPU; elsewhere the path as written (ref's trace, not re-run here)
        auto = decode_steps(model, "auto", monkeypatch)
        assert auto[3] == [("SplitSums", "pallas")]
        check_same(auto, ref)
    else:
        monkeypatch.setattr(llama, "DECODE_ROPE_CACHE", "auto")
        assert llama._rope_cache_impl() is None
    # with the fused add + RMSNorm (DECODE_ADD_NORM) qkv_proj gets FP8 codes: the kernel still gets its split sums
    monkeypatch.setattr(llama, "DECODE_ADD_NORM", "pallas")
    ref_norm = decode_steps(model, None, monkeypatch)
    both = decode_steps(model, "pallas", monkeypatch)
    assert both[3] and set(both[3]) == {("SplitSums", "pallas")}  # the first layer has its own trace
    check_same(both, ref_norm)


def test_bf16_decode_with_rope_cache_kernel_equals_as_written(monkeypatch):
    """A float model: the kernel takes the finished qkv output."""
    model = from_pretrained(Path(quark_jax.data.__file__).parent / "tiny_llama_float", jnp.bfloat16,
                            fuse_projections=True)
    ref = decode_steps(model, None, monkeypatch)
    got = decode_steps(model, "pallas", monkeypatch)
    assert got[3] == [("array", "pallas")]
    check_same(got, ref)
