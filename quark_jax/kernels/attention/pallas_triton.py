"""Pallas (Triton lowering) decode attention over the KV cache: one query token per row, flash-decoding splits;
its ``Config`` and defaults.

Program (row b, KV head j, split s) of the grid (B * H_kv, splits) reads the cache slots of its share of row b's
valid range ``[first_slot[b], pos[b]]`` once, block by block (``block_s`` slots of k and v, [block_s, D]; FP8 codes
dequantized in the kernel as ``f32(code) * scale``, the cache's read), and keeps for each of the G = H / H_kv query
heads of KV head j an online softmax: running max m, running sum l of ``exp(score - m)`` and the running
probability-weighted sum of v, all float32 (scores ``sum_d f32(q) * f32(k)`` times ``D^-0.5``, as the XLA decode
path). The valid range is split among the ``splits`` programs of a (row, KV head) at run time (equal shares of
whole blocks), so every split works whatever the position; slots outside the range are never summed (masked) and
blocks wholly outside are not read. Each program writes its partial (m, l, acc); :func:`combine` (plain XLA,
fused into what follows) rescales them to the global max and divides once. With one split the kernel divides
itself (``acc / l`` correctly rounded, the value :func:`combine` gives for one split) and writes the output in
``out_dtype``: one kernel, no combine.

Only the query heads' loop is unrolled (G static): every tile is 1-D or 2-D ([block_s, D]), which Triton lowers
without 3-D layouts.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from quark_jax.kernels import _dispatch, prologue, tiling
from quark_jax.quant import round_to

CACHE_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float8_e4m3fn)
_NEG = float(np.finfo(np.float32).min)  # a finite "minus infinity": exp(_NEG - m) == 0, never NaN

# programs wanted per kernel: ~2 per SM of an H100/H200 (132 SMs)
TARGET_PROGRAMS = 264
MIN_SPLIT_SLOTS = 64  # a split covers at least this many cache slots (static: of S, the cache length)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One tiling of the decode attention: ``block_s`` cache slots per loop step, ``splits`` programs per
    (row, KV head) (0: :func:`auto_splits`), Triton ``num_warps`` / ``num_stages``.

    >>> Config(block_s=32, splits=4).short()
    'bs32 sp4 w4 st2'
    """

    block_s: int = 32
    splits: int = 0
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_s", "num_warps", "num_stages"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {v!r}")
        if not isinstance(self.splits, int) or self.splits < 0:
            raise ValueError(f"Config.splits: expected an int >= 0 (0: automatic), got {self.splits!r}")
        tiling.check_powers_of_two(self, ("block_s",))

    def short(self) -> str:
        return f"bs{self.block_s} sp{self.splits} w{self.num_warps} st{self.num_stages}"


DEFAULT = Config()


def auto_splits(batch: int, kv_heads: int, slots: int, block_s: int) -> int:
    """Splits per (row, KV head): a power of two giving ~:data:`TARGET_PROGRAMS` programs, at most one per
    :data:`MIN_SPLIT_SLOTS` (and per ``block_s``) cache slots, at least 1.

    >>> auto_splits(1, 8, 32768, 32), auto_splits(8, 8, 4096, 32), auto_splits(1, 8, 256, 32)
    (64, 8, 4)
    """
    want = tiling.pow2_ceil(max(1, -(-TARGET_PROGRAMS // (batch * kv_heads))))
    cap = max(1, slots // max(MIN_SPLIT_SLOTS, block_s))
    return max(1, min(want, tiling.pow2_floor(cap)))


def fit(cfg: Config, batch: int, kv_heads: int, slots: int) -> Config:
    """``cfg`` for a cache of ``slots`` slots: ``block_s`` no larger than the cache (a power of two <= S),
    ``splits`` resolved.

    >>> fit(Config(block_s=64), 1, 8, 40).short()
    'bs32 sp1 w4 st2'
    """
    bs = min(cfg.block_s, tiling.pow2_floor(slots))
    splits = cfg.splits or auto_splits(batch, kv_heads, slots, bs)
    return dataclasses.replace(cfg, block_s=bs, splits=splits)


def _kernel(q_ref, k_ref, v_ref, first_ref, pos_ref, *rest, groups: int, kv_heads: int, slots: int, cfg: Config,
            fp8: bool, scale: float, out_dtype, interpret: bool):
    sc_ref = rest[0] if fp8 else None
    outs = rest[1:] if fp8 else rest
    bs, ns = cfg.block_s, cfg.splits
    row_head = pl.program_id(0)
    split = pl.program_id(1)
    b = row_head // kv_heads
    j = row_head % kv_heads
    lo = first_ref[b]  # valid slots [lo, hi)
    hi = pos_ref[b] + 1
    blo = lo // bs
    bhi = (hi + bs - 1) // bs
    per = (bhi - blo + ns - 1) // ns
    b0 = blo + split * per
    b1 = jnp.minimum(b0 + per, bhi)
    heads = [j * groups + g for g in range(groups)]
    qs = [q_ref[b, h, :].astype(jnp.float32) for h in heads]  # [D] each
    k_scale = sc_ref[0] if fp8 else None
    v_scale = sc_ref[1] if fp8 else None

    def load(ref, s0, valid, scl):
        x = tiling.masked_load(ref.at[b, pl.ds(s0, bs), j, :], valid[:, None]).astype(jnp.float32)
        return x * scl if fp8 else x  # the FP8 cache's read, f32(code) * scale (as kv_cache.dequantize_kv)

    def body(i, carry):
        # the last block of a cache whose length is not a multiple of block_s is read as the block ending at the
        # cache's end; the slots before i * block_s (summed by the block before) are masked out
        s0 = jnp.minimum(i * bs, slots - bs)
        sl = s0 + lax.broadcasted_iota(jnp.int32, (bs,), 0)
        valid = (sl >= jnp.maximum(lo, i * bs)) & (sl < hi)
        k = load(k_ref, s0, valid, k_scale)  # [bs, D]
        v = load(v_ref, s0, valid, v_scale)
        out = []
        for g in range(groups):
            m, l, acc = carry[3 * g:3 * g + 3]
            s = jnp.sum(qs[g][None, :] * k, axis=1) * np.float32(scale)  # [bs]
            s = jnp.where(valid, s, _NEG)
            m_new = jnp.maximum(m, jnp.max(s))
            alpha = jnp.exp(m - m_new)
            p = jnp.where(valid, jnp.exp(s - m_new), 0.0)
            l = l * alpha + jnp.sum(p)
            acc = acc * alpha + jnp.sum(p[:, None] * v, axis=0)
            out += [m_new, l, acc]
        return tuple(out)

    d = q_ref.shape[-1]
    init = []
    for _ in range(groups):
        init += [jnp.float32(_NEG), jnp.float32(0.0), jnp.zeros((d,), jnp.float32)]
    res = lax.fori_loop(b0, b1, body, tuple(init))
    for g, h in enumerate(heads):
        m, l, acc = res[3 * g:3 * g + 3]
        if ns == 1:  # the whole range in this program: normalize here, round once
            [o_ref] = outs
            o_ref[b, h, :] = prologue.div_rn(acc, jnp.full((d,), l, jnp.float32), interpret=interpret).astype(
                o_ref.dtype)
            continue
        acc_ref, m_ref, l_ref = outs
        acc_ref[b, h, split, :] = acc
        m_ref[b, h, pl.ds(split, 1)] = jnp.full((1,), m, jnp.float32)
        l_ref[b, h, pl.ds(split, 1)] = jnp.full((1,), l, jnp.float32)


def combine(acc, m, l):
    """The splits' partials -> attention output: ``acc`` [B, H, S, D], ``m`` / ``l`` [B, H, S] (each split's max,
    its sum of ``exp(score - max)`` and its probability-weighted sum of v) rescaled to the global max and divided
    once: [B, H, D] float32. Splits that summed nothing (m = float32 min, l = 0, acc = 0) weigh 0.

    >>> combine(jnp.array([[[[2.0], [6.0]]]]), jnp.array([[[0.0, 0.0]]]), jnp.array([[[1.0, 3.0]]])).tolist()
    [[[2.0]]]
    """
    mx = jnp.max(m, axis=2, keepdims=True)
    w = jnp.exp(m - mx)  # [B, H, S]
    denom = jnp.sum(w * l, axis=2)
    return jnp.sum(w[..., None] * acc, axis=2) / denom[..., None]


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret"))
def decode_attention_pallas(q, k_cache, v_cache, pos, first_slot, scales=None, *, config: Config | None = None,
                            out_dtype=jnp.float32, interpret=None):
    """Decode attention of one query per row over the cache with the Pallas-Triton kernel (see the module doc).

    Args:
      q: [B, H, D] (any float; read as float32); k_cache, v_cache: [B, S, H_kv, D] (bf16/f16/f32 values, or FP8
        codes with ``scales``); H % H_kv == 0.
      pos, first_slot: [B] int32: row b attends to the slots ``first_slot[b] .. pos[b]`` (pos[b] < S,
        first_slot[b] <= pos[b]).
      scales: None, or [2] float32 (k_scale, v_scale) of an FP8 cache.
      config: a :class:`Config` (default :data:`DEFAULT`, fit to the shape); out_dtype: of the result (the
        float32 value rounded once); interpret: Pallas interpret mode (None: unless on a CUDA GPU).

    Returns [B, H, D] in ``out_dtype``.

    >>> q = jnp.ones((1, 2, 16)); kv = jnp.ones((1, 8, 1, 16))
    >>> decode_attention_pallas(q, kv, kv, jnp.array([3]), jnp.array([0]))[0, :, 0].tolist()
    [1.0, 1.0]
    """
    b, h, d = q.shape
    _, s, hkv, _ = k_cache.shape
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    cfg = fit(config or DEFAULT, b, hkv, s)
    fp8 = scales is not None
    kernel = functools.partial(_kernel, groups=h // hkv, kv_heads=hkv, slots=s, cfg=cfg, fp8=fp8,
                               scale=float(d) ** -0.5, out_dtype=out_dtype, interpret=bool(interpret))
    ns = cfg.splits
    if ns == 1:
        out_shape = (jax.ShapeDtypeStruct((b, h, d), out_dtype),)
    else:
        out_shape = (jax.ShapeDtypeStruct((b, h, ns, d), jnp.float32),
                     jax.ShapeDtypeStruct((b, h, ns), jnp.float32), jax.ShapeDtypeStruct((b, h, ns), jnp.float32))
    operands = [q, k_cache, v_cache, jnp.asarray(first_slot, jnp.int32), jnp.asarray(pos, jnp.int32)]
    if fp8:
        operands.append(jnp.asarray(scales, jnp.float32).reshape(2))
    res = tiling.triton_call(kernel, cfg=cfg, name=f"decode_attention_g{h // hkv}", interpret=bool(interpret),
                             out_shape=out_shape, grid=(b * hkv, ns))(*operands)
    return res[0] if ns == 1 else round_to(combine(*res), out_dtype)
