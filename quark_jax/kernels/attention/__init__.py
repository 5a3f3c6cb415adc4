"""Fused causal self-attention for a prefill (the scores never exist as a float32 [B, H, T, S] array), and decode
attention over the KV cache.

``prefill_attention(q, k, v, first_slot=, impl=)`` attends T new tokens at slots 0..T-1 to each other (causal,
grouped-query heads, rows left-padded by ``first_slot``). Backends: ``"cudnn"`` (cuDNN's flash attention through
``jax.nn.dot_product_attention``, CUDA GPUs, bf16/f16, head_dim a multiple of 8 up to 128) and ``"xla"`` (the
reference of the fused numerics, in query blocks: scores from a low-precision dot accumulating in float32,
softmax in float32, the probabilities rounded to the model dtype before the probability-value product, as
vLLM's FlashAttention does; docs/SPEC.md bounds the difference to the float32 path). :func:`fused_prefill_impl`
is what ``impl="auto"`` picks (None: no fused backend applies, the caller keeps its float32 path).

``decode_attention(q, k_cache, v_cache, pos=, first_slot=, scales=, impl=)`` attends one query per row to the
cache slots ``first_slot[b] .. pos[b]``: ``"xla"`` (``xla.decode_attention_xla``, float32 elementwise reductions,
today's decode path) or ``"pallas"`` (``pallas_triton``: a flash-decoding Pallas-Triton kernel reading the bf16
or FP8 cache once, split over slot blocks, an online softmax in float32; docs/SPEC.md 11.2 bounds its rounding).

``rope_cache_update(qkv, cos, sin, k_cache, v_cache, pos, ...)`` (``rope_cache.py``): a decode step's RoPE of q
and k and the k/v cache write in one kernel, from the fused qkv GEMM's output or its split-K sums (bit for bit).
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax.kernels import tuning
from quark_jax.quant import round_to
from quark_jax.kernels.attention.xla import decode_attention_xla, in_query_blocks, prefill_attention_xla
from quark_jax.kernels.attention.rope_cache import rope_cache_supported, rope_cache_update, rope_cache_update_xla

__all__ = ["prefill_attention", "prefill_attention_xla", "in_query_blocks", "fused_prefill_impl", "ATTENTION_IMPLS",
           "decode_attention", "decode_attention_xla", "DECODE_ATTENTION_IMPLS", "decode_attention_impl",
           "DECODE_PALLAS_MIN_SLOTS", "rope_cache_update", "rope_cache_update_xla", "rope_cache_supported"]

ATTENTION_IMPLS = ("auto", "cudnn", "xla")
DECODE_ATTENTION_IMPLS = ("auto", "xla", "pallas")

DECODE_PALLAS_MIN_SLOTS = 2048
"""``impl="auto"`` runs the Pallas decode kernel from this many cache slots on a CUDA GPU. NVIDIA H200, 2026-12-02
(benchmarks/decode_attention_bench.py, GPU kernel time, batch 1, 32 query / 8 KV heads, head_dim 128): 4096 slots
XLA 31.0 us (bf16 cache) / 29.9 us (FP8), Pallas with 64-slot blocks 16.0 / 21.0 us; 256 slots XLA 5.5 / 4.7 us,
Pallas 6.5-7.0 / 8.1 us (XLA wins); between them not measured."""


def decode_attention_impl(impl: str, slots: int, head_dim: int, cache_dtype) -> str:
    """The backend ``impl`` resolves to for a cache of ``slots`` slots: ``"auto"`` -> ``"pallas"`` on a CUDA GPU
    (compiled Pallas) with at least :data:`DECODE_PALLAS_MIN_SLOTS` slots, a power-of-two head_dim and a bf16 /
    f16 / f32 / FP8 e4m3fn cache, else ``"xla"``; ``"xla"`` / ``"pallas"`` are returned as given.

    >>> decode_attention_impl("auto", 4096, 128, jnp.bfloat16)   # on the CPU: the XLA path
    'xla'
    >>> decode_attention_impl("pallas", 256, 128, jnp.bfloat16)
    'pallas'
    """
    if impl not in DECODE_ATTENTION_IMPLS:
        raise ValueError(f"decode attention impl: expected one of {DECODE_ATTENTION_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    from quark_jax.kernels import _dispatch
    from quark_jax.kernels.attention import pallas_triton

    kind, cc = tuning.current_device()
    gpu = cc is not None and not _dispatch.pallas_interpret()
    ok = (slots >= DECODE_PALLAS_MIN_SLOTS and head_dim & (head_dim - 1) == 0
          and jnp.dtype(cache_dtype) in [jnp.dtype(t) for t in pallas_triton.CACHE_DTYPES])
    return "pallas" if gpu and ok else "xla"


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


def decode_attention(q, k_cache, v_cache, *, pos, first_slot=None, scales=None, impl: str = "auto", config=None,
                     out_dtype=jnp.float32):
    """Attention of one query per row (a decode step) over the KV cache, in float32, rounded once to ``out_dtype``.

    Args:
      q: [B, H, D] (the new tokens' queries after RoPE); k_cache, v_cache: [B, S, H_kv, D], H % H_kv == 0 (query
        head h reads KV head ``h // (H / H_kv)``): values, or FP8 codes read as ``f32(code) * scale``.
      pos: int or [B] int32, the query's slot (its own k/v already written there); first_slot: optional [B] int32
        (default 0): row b attends to the slots ``first_slot[b] <= s <= pos[b]``.
      scales: None, or the FP8 cache's (k_scale, v_scale) (float32 scalars).
      impl: "auto" (:func:`decode_attention_impl`: the kernel for long caches on a CUDA GPU, else the reference),
        "xla" (the reference: the float32 decode path) or "pallas" (the flash-decoding kernel; on the CPU in
        Pallas interpret mode); config: the Pallas backend's ``pallas_triton.Config`` (None: its default, with
        64-slot blocks under ``"auto"``).
      out_dtype: the result's dtype (default float32).

    Returns [B, H, D] in ``out_dtype``.

    >>> q = jnp.ones((1, 2, 8)); kv = jnp.arange(16.0).reshape(1, 2, 1, 8)
    >>> out = decode_attention(q, kv, kv, pos=1, impl="pallas")   # mostly slot 1 (its k.q is larger)
    >>> round(float(out[0, 0, 0]), 3), bool(jnp.allclose(out, decode_attention(q, kv, kv, pos=1), atol=1e-6))
    (8.0, True)
    """
    auto = impl == "auto"
    impl = decode_attention_impl(impl, k_cache.shape[1], q.shape[-1], k_cache.dtype)
    b, h, d = q.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != b or k_cache.shape[3] != d or h % k_cache.shape[2]:
        raise ValueError(f"decode_attention: expected q [B, H, D] and caches [B, S, H_kv, D] with H % H_kv == 0, "
                         f"got q {list(q.shape)}, k {list(k_cache.shape)}, v {list(v_cache.shape)}")
    pos = jnp.broadcast_to(jnp.asarray(pos, jnp.int32), (b,))
    first_slot = jnp.zeros((b,), jnp.int32) if first_slot is None else jnp.asarray(first_slot, jnp.int32)
    if scales is not None:
        scales = jnp.stack([jnp.asarray(s, jnp.float32).reshape(()) for s in scales])
    if impl == "pallas":
        from quark_jax.kernels.attention import pallas_triton

        if d & (d - 1) or jnp.dtype(k_cache.dtype) not in [jnp.dtype(t) for t in pallas_triton.CACHE_DTYPES]:
            raise ValueError(f"decode_attention impl='pallas': head_dim must be a power of two and the cache one of "
                             f"bf16/f16/f32/float8_e4m3fn, got head_dim {d}, cache {k_cache.dtype}")
        if config is None and auto:  # measured on the H200: 64-slot blocks at 4096 slots (bf16 16.0 vs 19.2 us)
            config = pallas_triton.Config(block_s=64)
        return pallas_triton.decode_attention_pallas(q, k_cache, v_cache, pos, first_slot, scales, config=config,
                                                     out_dtype=jnp.dtype(out_dtype))
    return round_to(decode_attention_xla(q, k_cache, v_cache, pos, first_slot, scales), out_dtype)
