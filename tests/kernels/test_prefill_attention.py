"""The fused prefill attention (kernels/attention): its XLA reference against float64 numpy, the difference to
the float32 path (``models.llama.attend``) within docs/SPEC.md's bound, the cuDNN backend's row rotation for
left padding (checked on CPU with XLA's attention standing in for cuDNN), and the model choosing it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax.kernels import attention as attn_pkg
from quark_jax.kernels import fused_prefill_impl, prefill_attention, prefill_attention_xla
from quark_jax.kernels.attention import cudnn as cudnn_backend
from quark_jax.kernels.attention import xla as xla_backend
from quark_jax.models import llama
from tests.kernels.base import ON_GPU, rng

B, T, H, HKV, D = 2, 24, 4, 2, 16
FIRST = np.array([0, 5], np.int32)  # row 1 left-padded by 5 slots
BOUND = 2.0 ** -6  # SPEC 11.2: |fused - float32 path| <= 2^-6 * max |v|


def _qkv(dtype=jnp.bfloat16, *, t=T, seed="qkv"):
    g = rng(seed, t)
    mk = lambda h: jnp.asarray(g.standard_normal((B, t, h, D)) * 2.0, dtype)  # noqa: E731
    return mk(H), mk(HKV), mk(HKV)


def _f64_attention(q, k, v, first, *, round_p=None):
    """Float64 causal GQA attention over slots first[b] <= s <= t; ``round_p``: a dtype the probabilities are
    rounded to before the PV product (the fused kernels' rounding), normalized by the unrounded sum."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) * d ** -0.5
    slots = np.arange(t)
    mask = (slots[None, None, :] <= slots[None, :, None]) & (slots[None, None, :] >= first[:, None, None])
    s = np.where(mask[:, None], s, -1e300)  # padded queries: uniform (unused)
    p = np.exp(s - s.max(-1, keepdims=True))
    denom = p.sum(-1, keepdims=True)
    if round_p is not None:
        p = np.asarray(jnp.asarray(p.astype(np.float32), round_p).astype(jnp.float32), np.float64)
    return np.einsum("bhts,bshd->bthd", p / denom, v)


def _real(x):
    """Only the real queries (row b's slots first[b]..T-1): padded queries' outputs are unspecified."""
    keep = np.arange(x.shape[1])[None, :] >= FIRST[:, None]
    return np.asarray(x, np.float64)[keep]


def test_xla_reference_against_float64_with_bf16_probabilities():
    q, k, v = _qkv()
    got = prefill_attention_xla(q, k, v, first_slot=FIRST)
    assert got.dtype == jnp.bfloat16 and got.shape == (B, T, H, D)
    want = _f64_attention(q, k, v, FIRST, round_p=jnp.bfloat16)
    # only the float32 scores' summation order and the output's bf16 rounding differ: half an ulp of bf16
    np.testing.assert_allclose(_real(got), _real(want), rtol=2 ** -8, atol=1e-5)
    assert np.isfinite(np.asarray(got, np.float32)).all()  # padded queries too


def test_fused_numerics_differ_from_the_float32_path_within_the_spec_bound():
    q, k, v = _qkv()
    fused = _real(prefill_attention_xla(q, k, v, first_slot=FIRST))
    f32 = _real(llama.round_to(llama.attend(q, k, v, jnp.arange(T, dtype=jnp.int32), FIRST), jnp.bfloat16))
    vmax = float(jnp.max(jnp.abs(v.astype(jnp.float32))))
    diff = np.abs(fused - f32)
    assert diff.max() <= BOUND * vmax, (diff.max(), BOUND * vmax)
    assert diff.max() > 0  # the rounding of P is real (the bound is not vacuous)


def test_query_blocks_equal_one_block(monkeypatch):
    q, k, v = _qkv(t=40, seed="blocks")
    whole = np.asarray(prefill_attention_xla(q, k, v, first_slot=FIRST), np.float32)
    monkeypatch.setattr(xla_backend, "SCORE_BLOCK_BYTES", 4 * B * H * 40 * 16)  # blocks of 16 queries, 3 blocks
    blocked = np.asarray(prefill_attention_xla(q, k, v, first_slot=FIRST), np.float32)
    np.testing.assert_array_equal(blocked, whole)


def test_cudnn_backend_rotation_handles_left_padding(monkeypatch):
    """The cuDNN backend on CPU with XLA's dot_product_attention in cuDNN's place: the row rotation + plain
    causal mask gives the left-padded attention of the reference (to the fp rounding of XLA's bf16 P)."""
    q, k, v = _qkv(seed="rot")
    real = jax.nn.dot_product_attention

    def xla_instead(*a, implementation=None, **kw):
        assert implementation == "cudnn" and kw["is_causal"]
        return real(*a, implementation="xla", **kw)

    monkeypatch.setattr(cudnn_backend.jax.nn, "dot_product_attention", xla_instead)
    got = cudnn_backend.prefill_attention_cudnn(q, k, v, first_slot=jnp.asarray(FIRST))
    want = _f64_attention(q, k, v, FIRST, round_p=jnp.bfloat16)
    vmax = float(jnp.max(jnp.abs(v.astype(jnp.float32))))
    assert np.abs(_real(got) - _real(want)).max() <= BOUND * vmax


def test_auto_and_errors():
    assert fused_prefill_impl("auto", jnp.float32, 128) is None  # float32 models keep the float32 path
    assert fused_prefill_impl("auto", jnp.bfloat16, 128) == ("cudnn" if ON_GPU else None)
    assert fused_prefill_impl("auto", jnp.bfloat16, 12) is None  # head_dim not a multiple of 8
    with pytest.raises(ValueError, match="attention impl"):
        fused_prefill_impl("flash", jnp.bfloat16, 128)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="H % H_kv"):
        prefill_attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2), impl="xla")
    with pytest.raises(ValueError, match="share a dtype"):
        prefill_attention(q, k.astype(jnp.float32), v, impl="xla")


@pytest.mark.skipif(not ON_GPU, reason="cuDNN: CUDA GPU only")
def test_cudnn_on_gpu_within_the_bound_of_the_float32_path():
    q, k, v = _qkv(t=256, seed="gpu")
    got = _real(prefill_attention(q, k, v, first_slot=FIRST, impl="cudnn"))
    f32 = _real(llama.round_to(llama.attend(q, k, v, jnp.arange(256, dtype=jnp.int32), FIRST), jnp.bfloat16))
    vmax = float(jnp.max(jnp.abs(v.astype(jnp.float32))))
    assert np.abs(got - f32).max() <= BOUND * vmax


def test_model_prefill_takes_the_fused_path_and_stays_close(monkeypatch):
    """A bf16 model with attention_impl="xla" (the fused numerics) runs its prefill through prefill_attention
    (the prompt's own k/v, not the cache) and gives the float32 path's greedy token; on the CPU "auto" does not
    call it."""
    from flax import nnx

    from quark_jax.models.config import ModelConfig

    cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "max_position_embeddings": 64})
    model = llama.LlamaForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ids = [[5, 6, 7, 8, 9, 10, 11], [3, 4, 5]]
    calls = []
    real = llama.prefill_attention
    monkeypatch.setattr(llama, "prefill_attention", lambda *a, **kw: calls.append(a[1].shape) or real(*a, **kw))
    if ON_GPU:  # "auto" would take cuDNN there
        for layer in model.model.layers:
            layer.self_attn.attention_impl = "float32"
    base = np.asarray(model.generate(ids, 1))
    assert not calls  # CPU auto: the float32 path
    for layer in model.model.layers:
        layer.self_attn.attention_impl = "xla"
    fused = np.asarray(model.generate(ids, 1))
    assert calls and calls[0][1] == 16  # the prompt bucket's own k/v [B, 16, H_kv, D], not the 64-slot cache
    np.testing.assert_array_equal(fused, base)
