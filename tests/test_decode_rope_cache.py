"""``llama.DECODE_ROPE_CACHE``: the decode step with the RoPE of q and k and the k/v cache write in one kernel
(``kernels.attention.rope_cache_update``, fed the qkv GEMM's split-K sums) gives the logits, KV cache and greedy
tokens of the step as written, bit for bit (interpret mode here); layers it does not apply to run as written."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from decode_step_helpers import fp8_pallas_model, greedy_cached_steps
import quark_jax.data
from quark_jax import kernels
from quark_jax.kernels import SplitSums
from quark_jax.models import from_pretrained, llama

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
    first, leaves, toks = greedy_cached_steps(model)
    return first, leaves, toks, seen


def check_same(got, ref):
    assert got[2] == ref[2]
    np.testing.assert_array_equal(got[0], ref[0])
    assert len(got[1]) == len(ref[1]) and all(np.array_equal(x.view(np.uint32), y.view(np.uint32))
                                              for x, y in zip(got[1], ref[1]))


def test_fp8_decode_with_rope_cache_kernel_equals_as_written(monkeypatch):
    """Static FP8, vLLM's fused layout, the GEMMs on the Pallas kernel with K split in two: the kernel takes the
    qkv GEMM's SplitSums and finishes them itself."""
    model = fp8_pallas_model(monkeypatch, split_k=2)
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
