"""Fused causal self-attention for a prefill: the scores never exist as a float32 [B, H, T, S] array.

``prefill_attention(q, k, v, first_slot=, impl=)`` attends T new tokens at slots 0..T-1 to each other (causal,
grouped-query heads, rows left-padded by ``first_slot``). Backends: ``"cudnn"`` (cuDNN's flash attention through
``jax.nn.dot_product_attention``, CUDA GPUs, bf16/f16, head_dim a multiple of 8 up to 128) and ``"xla"`` (the
reference of the fused numerics, in query blocks: scores from a low-precision dot accumulating in float32,
softmax in float32, the probabilities rounded to the model dtype before the probability-value product, as
vLLM's FlashAttention does; docs/SPEC.md bounds the difference to the float32 path). :func:`fused_prefill_impl`
is what ``impl="auto"`` picks (None: no fused backend applies, the caller keeps its float32 path).
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax.kernels import tuning
from quark_jax.kernels.attention.xla import in_query_blocks, prefill_attention_xla

__all__ = ["prefill_attention", "prefill_attention_xla", "in_query_blocks", "fused_prefill_impl", "ATTENTION_IMPLS"]

ATTENTION_IMPLS = ("auto", "cudnn", "xla")


def _cudnn_applies(dtype, head_dim: int) -> bool:
    kind, cc = tuning.current_device()
    return (cc is not None and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and head_dim % 8 == 0 and head_dim <= 128)


def fused_prefill_impl(impl: str, dtype, head_dim: int) -> str | None:
    """The backend ``impl`` resolves to for q/k/v of ``dtype`` and ``head_dim`` on the current device:
    ``"auto"`` -> ``"cudnn"`` on a CUDA GPU for bf16/f16 with head_dim % 8 == 0 and <= 128, else None (no fused
    backend: the caller's float32 path); ``"cudnn"`` / ``"xla"`` are returned as given (forced).

    >>> fused_prefill_impl("auto", jnp.bfloat16, 128) is None   # on the CPU: the float32 path
    True
    >>> fused_prefill_impl("xla", jnp.bfloat16, 64)
    'xla'
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl: expected one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return "cudnn" if _cudnn_applies(dtype, head_dim) else None


def prefill_attention(q, k, v, *, first_slot=None, impl: str = "auto"):
    """Causal grouped-query attention of T tokens at slots 0..T-1, fused (no float32 [B, H, T, T] scores).

    Args:
      q: [B, T, H, D] bf16/f16 (any float for ``"xla"``); k, v: [B, T, H_kv, D], q's dtype; H % H_kv == 0 (query
        head h reads KV head ``h // (H / H_kv)``).
      first_slot: optional [B] int32: row b's real tokens are slots ``first_slot[b] .. T-1`` (left padding);
        query t attends to slots ``first_slot[b] <= s <= t``. Padded queries' outputs are unspecified (finite).
      impl: "auto" (:func:`fused_prefill_impl`; the reference where no fused backend applies), "cudnn", "xla".

    Returns [B, T, H, D] in q's dtype (the float32 output rounded once).

    >>> q = jnp.ones((1, 2, 2, 8), jnp.bfloat16); k = v = jnp.arange(16.0, dtype=jnp.bfloat16).reshape(1, 2, 1, 8)
    >>> prefill_attention(q, k, v, impl="xla")[0, :, 0, 0].tolist()  # query 1: mostly slot 1 (value 8)
    [0.0, 8.0]
    """
    b, t, h, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, t) or k.shape[3] != d or h % k.shape[2]:
        raise ValueError(f"prefill_attention: expected q [B, T, H, D] and k, v [B, T, H_kv, D] with H % H_kv == 0, "
                         f"got q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"prefill_attention: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    which = fused_prefill_impl(impl, q.dtype, d) or "xla"
    if which == "cudnn":
        from quark_jax.kernels.attention import cudnn

        return cudnn.prefill_attention_cudnn(q, k, v, first_slot=first_slot)
    return prefill_attention_xla(q, k, v, first_slot=first_slot)
