"""The references in plain XLA: the fused prefill attention's numerics (query blocks, no float32 [B, H, T, T]) and
the decode attention (one query per row over the KV cache, the float32 path of ``models.llama.attend``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SCORE_BLOCK_BYTES = 1 << 28
"""Budget for one block of float32 scores [B, H, T_block, T]: longer prompts run in query blocks."""

_NEG = float(np.finfo(np.float32).min)


def _block(q, k, v, q_slots, first_slot):
    b, t, h, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, h // hkv, d)
    # products of two bf16/f16 values are exact in float32; float32 accumulation (tensor cores on a GPU)
    prec = None if q.dtype in (jnp.bfloat16, jnp.float16) else lax.Precision.HIGHEST  # float32: no TF32
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32, precision=prec)
    s = s * np.float32(d ** -0.5)
    slots = jnp.arange(k.shape[1], dtype=jnp.int32)
    mask = (slots[None, None, :] <= q_slots[None, :, None]) & (slots[None, None, :] >= first_slot[:, None, None])
    s = jnp.where(mask[:, None, None], s, _NEG)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1)  # float32, from the unrounded probabilities
    # the probabilities rounded to the model dtype before the PV product (FlashAttention's P tile in bf16)
    o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32, precision=prec)
    o = o / denom.transpose(0, 3, 1, 2)[..., None]
    return o.reshape(b, t, h, d).astype(q.dtype)


def prefill_attention_xla(q, k, v, *, first_slot=None):
    """Causal GQA attention of T tokens at slots 0..T-1 with the fused kernels' rounding (see the package doc):
    q [B, T, H, D], k/v [B, T, H_kv, D] -> [B, T, H, D] in q's dtype. Float32 scores exist one query block
    (<= :data:`SCORE_BLOCK_BYTES`) at a time.

    >>> q = k = v = jnp.ones((1, 3, 2, 8), jnp.bfloat16)
    >>> prefill_attention_xla(q, k, v).shape
    (1, 3, 2, 8)
    """
    b, t, h, d = q.shape
    first_slot = jnp.zeros((b,), jnp.int32) if first_slot is None else jnp.asarray(first_slot, jnp.int32)
    q_slots = jnp.arange(t, dtype=jnp.int32)
    block = max(1, SCORE_BLOCK_BYTES // max(1, 4 * b * h * t))
    return in_query_blocks(lambda qb, sb: _block(qb, k, v, sb, first_slot), q, q_slots, block=block, pad_slot=t - 1)


def in_query_blocks(block_fn, q, q_slots, *, block: int, pad_slot: int):
    """``block_fn(q_block, slots_block)`` (queries [B, T_b, H, D] and their slots [T_b] -> [B, T_b, H, D]) over the
    queries q [B, T, H, D] at ``q_slots`` [T] int32: one call if T <= ``block``, else ``lax.map`` over blocks of
    the largest power of two <= ``block`` queries (the last padded with zero queries at slot ``pad_slot``, their
    rows dropped). Returns [B, T, H, D].

    >>> q = jnp.arange(5.0).reshape(1, 5, 1, 1)
    >>> in_query_blocks(lambda qb, sb: qb + sb[None, :, None, None], q, jnp.arange(5), block=3, pad_slot=4).ravel()
    Array([0., 2., 4., 6., 8.], dtype=float32)
    """
    b, t, h, d = q.shape
    if t <= block:
        return block_fn(q, q_slots)
    block = 1 << (block.bit_length() - 1)
    nb = -(-t // block)
    pad = nb * block - t
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, nb, block, h, d).transpose(1, 0, 2, 3, 4)
    sp = jnp.pad(q_slots, (0, pad), constant_values=pad_slot).reshape(nb, block)
    out = lax.map(lambda a: block_fn(a[0], a[1]), (qp, sp))
    return out.transpose(1, 0, 2, 3, 4).reshape(b, nb * block, h, d)[:, :t]


def decode_attention_xla(q, k_cache, v_cache, pos, first_slot, scales=None):
    """Decode attention of one query per row, the float32 path of ``models.llama.attend`` for T = 1: the cache read
    as float32 (FP8 codes times ``scales`` = (k_scale, v_scale)), scores ``sum_d q * k`` times ``D^-0.5`` and the
    probability-value product as elementwise reductions (XLA fuses them with the cache read), ``jax.nn.softmax``
    over the slots ``first_slot[b] .. pos[b]``. q [B, H, D], caches [B, S, H_kv, D], pos / first_slot [B] int32 ->
    [B, H, D] float32.

    >>> q = jnp.ones((1, 2, 4)); kv = jnp.arange(8.0).reshape(1, 2, 1, 4)
    >>> decode_attention_xla(q, kv, kv, jnp.array([0]), jnp.array([0]))[0, :, 0].tolist()  # slot 0 only
    [0.0, 0.0]
    """
    b, h, d = q.shape
    hkv = k_cache.shape[2]
    kf, vf = k_cache.astype(jnp.float32), v_cache.astype(jnp.float32)
    if scales is not None:
        scales = jnp.asarray(scales, jnp.float32)
        kf, vf = kf * scales[0], vf * scales[1]
    qg = q.astype(jnp.float32).reshape(b, hkv, h // hkv, d)
    scores = jnp.sum(qg[:, :, :, None, :] * kf.transpose(0, 2, 1, 3)[:, :, None], axis=-1) * (d ** -0.5)
    slots = jnp.arange(k_cache.shape[1], dtype=jnp.int32)
    pos, first_slot = (jnp.asarray(a, jnp.int32).reshape(b, 1) for a in (pos, first_slot))
    mask = (slots[None, :] <= pos) & (slots[None, :] >= first_slot)  # [B, S]
    probs = jax.nn.softmax(jnp.where(mask[:, None, None, :], scores, _NEG), axis=-1)
    out = jnp.sum(probs[..., None] * vf.transpose(0, 2, 1, 3)[:, :, None], axis=-2)
    return out.reshape(b, h, d)
