"""Pallas (Triton lowering) block-scaled FP8 GEMM; its ``Config`` and tuned defaults.

``y = out(sum_g (x_q[:, g] @ w_q[:, g]^T) * x_scale[:, g] * w_scale[n // rows, g] + bias)``: each K step is one
scale group of ``cols`` elements (vLLM's ``w8a8_block_fp8_matmul`` structure): an fp8 x fp8 tensor-core dot into
f32, scaled by the token's group scale (a column of ``x_scale``) and the weight block's scale, added to the f32
accumulator. A column tile of ``block_n`` columns covers ``block_n / rows`` weight scale rows (or lies inside one),
so the weight scale is one scalar per step (or a few, selected per column). Ragged M: masked loads and stores.
``split_k`` > 1 splits the groups over programs (f32 partial sums reduced by XLA with the bias).
``Config(mma="wgmma")`` (the default above 64 rows) runs each group's dot through ``kernels.triton_fp8_dot``:
Hopper FP8 wgmma with an f32 promotion every ``promote`` K elements, instead of Pallas' native FP8 dot, which
Triton compiles to f16 ``mma.sync`` (benchmarks/NOTES.md "MoE fixes"); 2.3x faster at prefill on the H200.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax.kernels import _dispatch, tiling, triton_fp8_dot

MMAS = ("native", "wgmma")

@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiles and launch parameters (powers of two); the K step is the scale group (``cols``).

    >>> Config(block_m=128, block_n=128).num_warps
    4
    """

    block_m: int = 128  # rows of x per program (M is masked to it)
    block_n: int = 128  # weight rows (output columns) per program
    split_k: int = 1  # programs sharing one tile's groups (> 1: f32 partial sums reduced by XLA)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 4  # Triton software-pipelining depth
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)
    mma: str = "native"  # "native" (Pallas' FP8 dot: f16 mma.sync on Hopper) or "wgmma" (kernels.triton_fp8_dot:
    # FP8 wgmma, f32 promotion every `promote` K elements; experimental, a private Pallas lowering hook)
    promote: int = 32  # "wgmma": K elements per f32 promotion (32: every wgmma; >= the group: once per group)
    prefetch: bool = False  # load the next group's scales before this group's dot (else after it: the scale
    # loads' latency sits between the dot and the rescale of every K step)
    subtiles: int = 1  # column slices of block_n, one dot and one f32 accumulator each (fewer live registers: one
    # slice's fresh product at a time, so 128x256 tiles fit 8 warps' registers)
    lag: bool = False  # rescale each group's dot one loop step later, after the next group's dot is issued (the
    # FP8 wgmma of group g + 1 can then run while group g's product is scaled into the accumulator)

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_m", "block_n", "split_k", "num_warps", "group_m", "subtiles"))
        if self.mma not in MMAS:
            raise ValueError(f"Config.mma: expected one of {MMAS}, got {self.mma!r}")
        if self.promote < 32:
            raise ValueError(f"Config.promote: FP8 wgmma needs at least 32 K elements per promotion, got "
                             f"{self.promote}")
        if self.block_m < 16 or self.block_n < 16:
            raise ValueError(f"Config: block_m and block_n must be >= 16 (MMA tiles), got {self.block_m}, "
                             f"{self.block_n}")


# M bucket -> config (the fp8_scaled_mm kernel's shapes: skinny tiles with a K split at decode, 128x128 at prefill).
# Above 64 rows: FP8 wgmma, one f32 promotion per 128-K group, scales loaded one group ahead (H200, M = 2048,
# 4096x14336: 328.7 us vs 759.3 us native; benchmarks/NOTES.md "FP8 per-block on FP8 wgmma"). The "512" bucket
# takes the same config unmeasured (the native path there is the same f16 mma.sync); the native config stays
# wherever the wgmma lowering rule could not be registered (WGMMA_FALLBACK). Above 512 rows: the 128x256 tile in
# two 128-column slices (CANDIDATES "wgmma_n256_sub2": 289.3 us vs 330.9 at M = 2048, 4096x14336, exact in the GPU
# test; session 8).
PREFILL = Config(block_m=128, block_n=128, num_warps=8, num_stages=3, mma="wgmma", promote=128, prefetch=True)
_W = functools.partial(Config, num_warps=8, num_stages=3, mma="wgmma", promote=128, prefetch=True)
PREFILL_LARGE = _W(block_m=128, block_n=256, subtiles=2)
DEFAULTS = {
    "16": Config(block_m=16, block_n=64, num_warps=4, num_stages=3),
    "64": Config(block_m=64, block_n=64, num_warps=4, num_stages=3),
    "512": PREFILL,
    "max": PREFILL_LARGE,
}
# Prefill alternatives to PREFILL, timed by benchmarks/gemm_fp8block.py (benchmarks/NOTES.md "FP8 per-block on FP8
# wgmma", session 7): the rescale one group late, 64-row tiles (2-3 CTAs per SM), 256-wide tiles as column slices
# (less L2 traffic per MAC), 4 stages, 16 row blocks per column strip
CANDIDATES = {
    "wgmma_lag": _W(block_m=128, block_n=128, prefetch=False, lag=True),
    "wgmma_m64_w4": _W(block_m=64, block_n=128, num_warps=4),
    "wgmma_m64_w4_lag": _W(block_m=64, block_n=128, num_warps=4, prefetch=False, lag=True),
    "wgmma_n256_sub2": PREFILL_LARGE,
    "wgmma_n256_sub2_s4": _W(block_m=128, block_n=256, subtiles=2, num_stages=4),
    "wgmma_n256_sub4": _W(block_m=128, block_n=256, subtiles=4),
    "wgmma_m256_sub2": _W(block_m=256, block_n=128, subtiles=2),
    "wgmma_g16": _W(block_m=128, block_n=128, group_m=16),
}
WGMMA_FALLBACK = {"512": Config(block_m=128, block_n=128, num_warps=4, num_stages=4),
                  "max": Config(block_m=128, block_n=128, num_warps=8, num_stages=4)}
AUTO_SPLIT = {"decode": 264, "small": 264}


def fit(cfg: Config, m: int, groups: int, n: int, *, target_programs: int = 0) -> Config:
    """``cfg`` with ``block_n | N``, ``split_k | groups``, ``block_m`` capped at M's power of two (>= 16); with
    ``target_programs`` the K split grows (up to 8) until there are that many programs.

    >>> fit(Config(block_n=128), m=1, groups=8, n=64, target_programs=16).split_k
    8
    """
    block_m = min(cfg.block_m, max(16, tiling.pow2_ceil(m)))
    block_n = cfg.block_n
    while n % block_n:
        block_n //= 2
    if block_n < 16:
        raise ValueError(f"fp8_block_mm: cannot tile N = {n} (need N % 16 == 0)")
    tiles = (n // block_n) * -(-m // block_m)
    split_k = tiling.grow_split_k(cfg.split_k, tiles=tiles, groups=groups, target_programs=target_programs)
    subtiles = min(cfg.subtiles, block_n // 16)  # column slices stay >= 16 wide
    return dataclasses.replace(cfg, block_m=block_m, block_n=block_n, split_k=split_k, subtiles=subtiles)


def default_config(m: int, k: int, n: int, cols: int) -> Config:
    """The config for the M bucket of ``m`` fitted to the problem, with the class's K split.

    >>> default_config(2048, 4096, 4096, 128).block_m
    128
    """
    cfg, key = tiling.lookup(DEFAULTS, m, k, n)
    if cfg.mma == "wgmma" and not triton_fp8_dot.TRITON_RULE:
        cfg = WGMMA_FALLBACK.get(key, dataclasses.replace(cfg, mma="native", promote=32))
    return fit(cfg, m, k // cols, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


def _kernel(x_ref, w_ref, xs_ref, ws_ref, *rest, cfg: Config, m: int, rows: int, cols: int, groups: int,
            n_tiles_n: int, n_tiles_m: int, has_bias: bool, out_dtype):
    if has_bias:
        b_ref, o_ref = rest
    else:
        (o_ref,) = rest
    bm, bn = cfg.block_m, cfg.block_n
    m_tile, n_tile = tiling.grouped_program(pl.program_id(0), n_tiles_m, n_tiles_n, cfg.group_m)
    x_mask = s_mask = None
    if m % bm:  # ragged last row tile: rows past M load as zeros
        valid_rows = m - m_tile * bm
        x_mask = lax.broadcasted_iota(jnp.int32, (bm, cols), 0) < valid_rows
        s_mask = lax.broadcasted_iota(jnp.int32, (bm,), 0) < valid_rows
    sub = bn // cfg.subtiles  # columns per dot (the tile's column slices, each with its own accumulator)
    r = max(1, sub // rows)  # weight scale rows one column slice covers
    col_block = lax.broadcasted_iota(jnp.int32, (1, sub), 1) // rows if r > 1 else None
    dims = (((1,), (1,)), ((), ()))
    if cfg.mma == "wgmma":
        dot = functools.partial(triton_fp8_dot.fp8_dot, promote=cfg.promote)
    else:
        dot = functools.partial(lax.dot_general, dimension_numbers=dims, preferred_element_type=jnp.float32)

    def scales(g):  # the group's token scales [bm] and, per column slice, the weight scale (a scalar, or [1, sub]
        sx = tiling.masked_load(xs_ref.at[:, g], s_mask)  # over r scale rows)
        sws = []
        for j in range(cfg.subtiles):
            row0 = (n_tile * bn + j * sub) // rows
            if r == 1:
                sws.append(ws_ref[row0, g])
                continue
            sw = jnp.zeros((1, sub), jnp.float32)
            for i in range(r):
                sw = jnp.where(col_block == i, ws_ref[row0 + i, g], sw)
            sws.append(sw)
        return sx, tuple(sws)

    def group_dots(g):  # the group's products, one per column slice
        k0 = pl.multiple_of(g * cols, cols)
        xk = tiling.masked_load(x_ref.at[:, pl.ds(k0, cols)], x_mask)
        if cfg.subtiles == 1:
            return (dot(xk, w_ref[:, pl.ds(k0, cols)]),)
        return tuple(dot(xk, w_ref[pl.ds(j * sub, sub), pl.ds(k0, cols)]) for j in range(cfg.subtiles))

    def fold(accs, ds, sx, sws):  # accumulators + scaled products
        return tuple(a + d * (sx[:, None] * sw) for a, d, sw in zip(accs, ds, sws))

    zeros = tuple(jnp.zeros((bm, sub), jnp.float32) for _ in range(cfg.subtiles))
    if cfg.lag:  # step g issues group g's dots and its scale loads, then adds group g - 1's scaled products
        def body(g, carry):
            accs, d_prev, sx_prev, sw_prev = carry
            sx, sws = scales(g)
            ds = group_dots(g)
            return fold(accs, d_prev, sx_prev, sw_prev), ds, sx, sws

        sx0, sw0 = scales(jnp.int32(0))
        no_scale = (jnp.zeros_like(sx0), tuple(jnp.zeros_like(w) for w in sw0))
        accs, ds, sx, sws = lax.fori_loop(0, groups, body, (zeros, zeros, *no_scale))
        accs = fold(accs, ds, sx, sws)
    elif cfg.prefetch:  # the next group's scales load before this group's dot (their latency hidden behind it)
        def body(g, carry):
            accs, sx, sws = carry
            nxt = scales(jnp.minimum(g + 1, groups - 1))
            if cfg.subtiles == 1:
                return (fold(accs, group_dots(g), sx, sws), *nxt)
            k0 = pl.multiple_of(g * cols, cols)  # one slice's product live at a time
            xk = tiling.masked_load(x_ref.at[:, pl.ds(k0, cols)], x_mask)
            out = []
            for j in range(cfg.subtiles):
                d = dot(xk, w_ref[pl.ds(j * sub, sub), pl.ds(k0, cols)])
                out.append(accs[j] + d * (sx[:, None] * sws[j]))
            return (tuple(out), *nxt)

        accs, _, _ = lax.fori_loop(0, groups, body, (zeros, *scales(jnp.int32(0))))
    else:
        def body(g, accs):
            ds = group_dots(g)
            return fold(accs, ds, *scales(g))

        accs = lax.fori_loop(0, groups, body, zeros)
    valid = m - m_tile * bm if m % bm else None
    for j, acc in enumerate(accs):
        cs = slice(None) if cfg.subtiles == 1 else pl.ds(j * sub, sub)
        if has_bias:
            acc = acc + b_ref[cs].astype(jnp.float32)[None, :]
        tiling.store_rows(o_ref if cfg.subtiles == 1 else o_ref.at[:, cs], acc.astype(out_dtype), valid)


def fp8_block_mm_pallas(x_q, w_q, x_scale, w_scale, bias=None, *, block=(128, 128), out_dtype=jnp.bfloat16,
                        config=None, interpret=None):
    """Pallas block-scaled FP8 GEMM; same contract as ``quark_jax.kernels.fp8_block_mm`` (``block`` rows a power of
    two, cols a multiple of 32, N a multiple of 16). ``config`` (a :class:`Config`) overrides the tuned tiles.

    >>> x = jnp.ones((1, 32), jnp.float8_e4m3fn); w = jnp.ones((16, 32), jnp.float8_e4m3fn)
    >>> fp8_block_mm_pallas(x, w, jnp.ones((1, 1)), jnp.full((1, 1), 0.5), block=(16, 32),
    ...                     out_dtype=jnp.float32)[0, :2].tolist()
    [16.0, 16.0]
    """
    m, k = x_q.shape
    n = w_q.shape[0]
    rows, cols = (int(b) for b in block)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    cfg = default_config(m, k, n, cols) if config is None else fit(config, m, k // cols, n)
    return _fp8_block_mm_jit(x_q, w_q, x_scale, w_scale, bias, rows=rows, cols=cols, out_dtype=jnp.dtype(out_dtype),
                             cfg=cfg, interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("rows", "cols", "out_dtype", "cfg", "interpret"))
def _fp8_block_mm_jit(x_q, w_q, x_scale, w_scale, bias, *, rows, cols, out_dtype, cfg, interpret):
    m, k = x_q.shape
    n = w_q.shape[0]
    bm, bn, splits = cfg.block_m, cfg.block_n, cfg.split_k
    groups = k // cols
    g_split = groups // splits
    n_tiles_m = pl.cdiv(m, bm)
    n_tiles_n = n // bn
    fused_bias = bias is not None and splits == 1
    grid = (n_tiles_n * n_tiles_m, splits)

    def coords(pid):  # (m tile, n tile)
        return tiling.grouped_program(pid, n_tiles_m, n_tiles_n, cfg.group_m)

    in_specs = [
        pl.BlockSpec((bm, g_split * cols), lambda pid, s: (coords(pid)[0], s)),
        pl.BlockSpec((bn, g_split * cols), lambda pid, s: (coords(pid)[1], s)),
        pl.BlockSpec((bm, g_split), lambda pid, s: (coords(pid)[0], s)),
        pl.BlockSpec((w_scale.shape[0], g_split), lambda pid, s: (0, s)),
    ]
    args = [x_q, w_q, x_scale, w_scale]
    if fused_bias:
        in_specs.append(pl.BlockSpec((bn,), lambda pid, s: (coords(pid)[1],)))
        args.append(bias)
    out_shape, out_spec, kernel_out = tiling.split_k_output(m, n, splits=splits, block_m=bm, block_n=bn,
                                                            out_dtype=out_dtype, tile=coords)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, rows=rows, cols=cols, groups=g_split, n_tiles_n=n_tiles_n,
                               n_tiles_m=n_tiles_m, has_bias=fused_bias, out_dtype=kernel_out)
    name = (f"fp8_block_mm_{bm}x{bn}x{cols}_s{splits}" + ("_wgmma" if cfg.mma == "wgmma" else "")
            + ("_pf" if cfg.prefetch else "") + ("_lag" if cfg.lag else "")
            + (f"_sub{cfg.subtiles}" if cfg.subtiles > 1 else ""))
    out = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=grid,
                             in_specs=in_specs, out_specs=out_spec)(*args)
    if splits > 1:
        out = tiling.finish_splits(out, bias, out_dtype)
    return out


__all__ = ["fp8_block_mm_pallas", "Config", "DEFAULTS", "MMAS", "PREFILL", "PREFILL_LARGE", "CANDIDATES",
           "WGMMA_FALLBACK", "default_config", "fit"]
