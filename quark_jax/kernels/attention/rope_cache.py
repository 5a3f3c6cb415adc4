"""A decode step's RoPE and KV-cache write in one kernel: ``rope_cache_update``.

After the fused ``qkv_proj`` GEMM of a decode step (one token per row), XLA runs three kernels per layer: the
query's RoPE, the key's RoPE fused into the k-cache ``dynamic_update_slice`` and the v-cache update (each also
re-running the split-K GEMM's epilogue). :func:`rope_cache_update` does all of it in one Pallas-Triton launch
(one program per (row, head) of q, k and v): it finishes the qkv GEMM's split-K partial sums
(``kernels.tiling.SplitSums``: ``dtype(x_scale * (w_scale * ((p0 + p1) + ...)))``, as ``SplitSums.finish``), rotates
q and k (``models.rope.apply_rope``'s roundings: cos/sin, each product and the sum rounded to the model dtype) and
writes k and v into the caches at slot ``pos`` in place (``input_output_aliases``). Bit for bit the XLA
composition (:func:`rope_cache_update_xla`): every value is formed by the same float32 operations in the same
order, each rounded once as there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from quark_jax.kernels import _dispatch, tiling
from quark_jax.quant import round_to

__all__ = ["rope_cache_update", "rope_cache_update_xla", "rope_cache_supported"]

IMPLS = ("xla", "pallas")


def rope_cache_supported(qkv, k_cache, *, head_dim: int) -> bool:
    """Whether the Pallas kernel takes these operands: head_dim even with a power-of-two half, a float cache of the
    qkv output's dtype (not an FP8 cache), split-K sums with a per-tensor x scale.

    >>> rope_cache_supported(jnp.ones((1, 48), jnp.bfloat16), jnp.ones((1, 4, 1, 16), jnp.bfloat16), head_dim=16)
    True
    """
    half = head_dim // 2
    dtype = qkv.dtype
    ok = (head_dim % 2 == 0 and half & (half - 1) == 0 and jnp.dtype(k_cache.dtype) == jnp.dtype(dtype)
          and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)))
    if isinstance(qkv, tiling.SplitSums):
        ok = ok and jnp.ndim(qkv.x_scale) == 0 and jnp.ndim(qkv.w_scale) in (0, 1)
    return bool(ok)


def _rope_ref(x, cos, sin):
    """``models.rope.apply_rope`` on [B, H, D] with cos/sin [B, D] (the same ops; kernels import no models)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    c = round_to(cos[:, None, :], x.dtype).astype(jnp.float32)
    s = round_to(sin[:, None, :], x.dtype).astype(jnp.float32)
    a, b = round_to(xf * c, x.dtype), round_to(rotated * s, x.dtype)
    return round_to(a.astype(jnp.float32) + b.astype(jnp.float32), x.dtype)


def rope_cache_update_xla(qkv, cos, sin, k_cache, v_cache, pos, *, num_heads: int, num_kv_heads: int):
    """The reference composition (the decoder's decode step as written): finish, split, RoPE, write."""
    if isinstance(qkv, tiling.SplitSums):
        qkv = qkv.finish()
    b = qkv.shape[0]
    d = k_cache.shape[-1]
    nq, nkv = num_heads * d, num_kv_heads * d
    q = _rope_ref(qkv[:, :nq].reshape(b, num_heads, d), cos, sin)
    k = _rope_ref(qkv[:, nq:nq + nkv].reshape(b, num_kv_heads, d), cos, sin)
    v = qkv[:, nq + nkv:].reshape(b, num_kv_heads, d)
    idx = (0, jnp.asarray(pos, jnp.int32), 0, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k[:, None].astype(k_cache.dtype), idx)
    v_cache = jax.lax.dynamic_update_slice(v_cache, v[:, None].astype(v_cache.dtype), idx)
    return q, k_cache, v_cache


def _round(v, dtype, interpret):
    """v rounded to dtype and back to float32 (``round_to`` in interpret mode: XLA on the CPU cannot skip it)."""
    return (round_to(v, dtype) if interpret else v.astype(dtype)).astype(jnp.float32)


def _kernel(pos_ref, x_ref, xs_ref, ws_ref, cos_ref, sin_ref, kc_in, vc_in, q_ref, kc_ref, vc_ref, *, heads: int,
            kv_heads: int, d: int, slots: int, splits: int, per_channel: bool, dtype, interpret: bool):
    del kc_in, vc_in  # aliased to kc_ref / vc_ref: only the new slot is written
    row, head = pl.program_id(0), pl.program_id(1)
    half = d // 2
    col0 = head * d

    def value(c):  # qkv[row, c : c + half] as the GEMM entry returns it, in float32
        if splits == 0:
            return x_ref[row, pl.ds(c, half)].astype(jnp.float32)
        acc = x_ref[0, row, pl.ds(c, half)]
        for s in range(1, splits):
            acc = acc + x_ref[s, row, pl.ds(c, half)]
        ws = ws_ref[pl.ds(c, half)] if per_channel else ws_ref[0]
        return _round(xs_ref[0] * (ws * acc), dtype, interpret)

    def rope():
        x1, x2 = value(col0), value(col0 + half)
        c1 = _round(cos_ref[row, pl.ds(0, half)].astype(jnp.float32), dtype, interpret)
        c2 = _round(cos_ref[row, pl.ds(half, half)].astype(jnp.float32), dtype, interpret)
        s1 = _round(sin_ref[row, pl.ds(0, half)].astype(jnp.float32), dtype, interpret)
        s2 = _round(sin_ref[row, pl.ds(half, half)].astype(jnp.float32), dtype, interpret)
        o1 = _round(_round(x1 * c1, dtype, interpret) + _round(-x2 * s1, dtype, interpret), dtype, interpret)
        o2 = _round(_round(x2 * c2, dtype, interpret) + _round(x1 * s2, dtype, interpret), dtype, interpret)
        return o1.astype(dtype), o2.astype(dtype)

    slot_row = (row * slots + pos_ref[0]) * kv_heads  # the cache row of (row, pos, KV head 0), caches [B*S*H_kv, D]

    @pl.when(head < heads)
    def _():
        o1, o2 = rope()
        q_ref[row, head, pl.ds(0, half)] = o1
        q_ref[row, head, pl.ds(half, half)] = o2

    @pl.when((head >= heads) & (head < heads + kv_heads))
    def _():
        o1, o2 = rope()
        r = slot_row + head - heads
        kc_ref[r, pl.ds(0, half)] = o1
        kc_ref[r, pl.ds(half, half)] = o2

    @pl.when(head >= heads + kv_heads)
    def _():
        r = slot_row + head - heads - kv_heads
        vc_ref[r, pl.ds(0, half)] = value(col0).astype(dtype)
        vc_ref[r, pl.ds(half, half)] = value(col0 + half).astype(dtype)


def _rope_cache_pallas(qkv, cos, sin, k_cache, v_cache, pos, *, num_heads: int, num_kv_heads: int, interpret: bool):
    # not a jit of its own: traced into the caller's program, so XLA sees the caches' aliasing directly
    b, slots, kvh, d = k_cache.shape
    dtype = jnp.dtype(k_cache.dtype)
    if isinstance(qkv, tiling.SplitSums):
        x, splits = qkv.parts, qkv.parts.shape[0]
        per_channel = jnp.ndim(qkv.w_scale) == 1
        xs = jnp.asarray(qkv.x_scale, jnp.float32).reshape(1)
        ws = jnp.asarray(qkv.w_scale, jnp.float32).reshape(-1)
    else:
        x, splits, per_channel = qkv, 0, False
        xs = ws = jnp.ones((1,), jnp.float32)
    pos = jnp.asarray(pos, jnp.int32).reshape(1)
    kc, vc = k_cache.reshape(b * slots * kvh, d), v_cache.reshape(b * slots * kvh, d)  # bitcasts
    kernel = functools.partial(_kernel, heads=num_heads, kv_heads=kvh, d=d, slots=slots, splits=splits,
                               per_channel=per_channel, dtype=dtype, interpret=interpret)
    q, kc, vc = tiling.triton_call(
        kernel, cfg=_LaunchConfig(), name=f"rope_cache_h{num_heads}_kv{kvh}_d{d}_s{splits}", interpret=interpret,
        out_shape=(jax.ShapeDtypeStruct((b, num_heads, d), dtype), jax.ShapeDtypeStruct(kc.shape, kc.dtype),
                   jax.ShapeDtypeStruct(vc.shape, vc.dtype)),
        grid=(b, num_heads + 2 * kvh), input_output_aliases={6: 1, 7: 2})(pos, x, xs, ws, cos, sin, kc, vc)
    return q, kc.reshape(k_cache.shape), vc.reshape(v_cache.shape)


class _LaunchConfig:
    """One warp per program (a program moves one head: 2 x D/2 values)."""
    num_warps = 1
    num_stages = 1


def rope_cache_update(qkv, cos, sin, k_cache, v_cache, pos, *, num_heads: int, num_kv_heads: int, impl="pallas",
                      interpret=None):
    """A decode step's RoPE of q and k and the k/v cache write at slot ``pos``, from the fused qkv projection.

    Args:
      qkv: [B, (H + 2 H_kv) D] the fused q/k/v projection of one token per row (q heads, then k heads, then v
        heads, each D wide), in the model dtype; or its unfinished ``kernels.tiling.SplitSums`` (parts [S, B, N],
        per-tensor x scale, w scale () or [N]), finished here as ``SplitSums.finish`` does.
      cos, sin: [B, D] the token's RoPE cos/sin (``models.rope.rope_cos_sin``), rounded to the model dtype here.
      k_cache, v_cache: [B, S, H_kv, D] in the model dtype; donated in a decode loop (written in place).
      pos: int32 scalar, the slot every row writes.
      num_heads, num_kv_heads: H and H_kv.
      impl: "pallas" (one Pallas-Triton kernel; on the CPU in interpret mode) or "xla" (the composition).

    Returns ``(q [B, H, D], k_cache, v_cache)``: q and k rotated as ``models.rope.apply_rope`` (``x * cos +
    rotate_half(x) * sin``, each product and the sum rounded to the model dtype), k and v written at ``pos``. Both
    impls give the same bits.

    >>> qkv = jnp.arange(48, dtype=jnp.bfloat16)[None]; cos = jnp.ones((1, 16)); sin = jnp.zeros((1, 16))
    >>> kc = vc = jnp.zeros((1, 4, 1, 16), jnp.bfloat16)
    >>> q, kc, vc = rope_cache_update(qkv, cos, sin, kc, vc, 2, num_heads=1, num_kv_heads=1)
    >>> float(q[0, 0, 3]), float(kc[0, 2, 0, 3]), float(vc[0, 2, 0, 3]), float(vc[0, 1, 0, 3])
    (3.0, 19.0, 35.0, 0.0)
    """
    if impl not in IMPLS:
        raise ValueError(f"rope_cache_update impl: expected one of {IMPLS}, got {impl!r}")
    b, slots, kvh, d = k_cache.shape
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype or kvh != num_kv_heads:
        raise ValueError(f"rope_cache_update: caches [B, S, {num_kv_heads}, D] of one dtype expected, got "
                         f"{list(k_cache.shape)} {k_cache.dtype} and {list(v_cache.shape)} {v_cache.dtype}")
    n = (num_heads + 2 * num_kv_heads) * d
    if tuple(qkv.shape) != (b, n) or tuple(cos.shape) != (b, d) or tuple(sin.shape) != (b, d):
        raise ValueError(f"rope_cache_update: expected qkv [{b}, {n}] and cos/sin [{b}, {d}], got "
                         f"{list(qkv.shape)}, {list(cos.shape)}, {list(sin.shape)}")
    if impl == "xla":
        return rope_cache_update_xla(qkv, cos, sin, k_cache, v_cache, pos, num_heads=num_heads,
                                     num_kv_heads=num_kv_heads)
    if not rope_cache_supported(qkv, k_cache, head_dim=d):
        raise ValueError(f"rope_cache_update impl='pallas': needs head_dim with a power-of-two half and a cache of "
                         f"the qkv dtype (bf16/f16/f32), got head_dim {d}, qkv {qkv.dtype}, cache {k_cache.dtype}")
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    return _rope_cache_pallas(qkv, cos, sin, k_cache, v_cache, pos, num_heads=num_heads, num_kv_heads=num_kv_heads,
                              interpret=bool(interpret))
