"""Pallas (Triton lowering) INT8 W8A8 GEMM with the fused scale / azp / bias epilogue.

Layout: x_q [M, K] int8 row-major, w_q [N, K] int8 (the checkpoint layout, K contiguous), both read in place; the
output is [M, N]. Accumulation is int32 (exact for K < 2**17). The epilogue is, in this order and in f32,
``out(x_scale * (w_scale * f32(acc - azp term)) + bias)`` — the operation order of the XLA reference
(``xla.int8_scaled_mm_xla``), so results agree up to one rounding of the output (an FMA may fuse the bias add).

Variants (:class:`Config`; tuned tables ``TUNED``, else :func:`heuristic`): tensor-core tiles (``kind="mma"``,
optionally with the weight tile as the MMA's M side, and optionally split over K, the int32 partial sums then being
reduced exactly and scaled by XLA in one fusion) and a CUDA-core GEMV for M == 1. Ragged M, N and K are masked (loads read 0 outside the arrays, stores are
masked). Off a CUDA GPU the kernels run in Pallas interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from quark_jax.kernels import _dispatch, prologue, tiling
from quark_jax.kernels.int8_scaled_mm.xla import apply_azp

KINDS = ("mma", "gemv")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One kernel variant.

    * ``kind="mma"``: tensor-core tiles. Each program computes a ``[block_m, block_n]`` output tile over its share
      of K (``split_k`` programs share one tile's K range; with ``split_k > 1`` the programs write int32 partial
      sums and the epilogue runs in XLA after the exact int32 reduction). ``swap_ab`` computes the tile as
      ``w_tile @ x_tile.T`` so the weight tile is the MMA's M side (Hopper wgmma wants M >= 64). ``group_m``
      orders programs so that ``group_m`` row blocks share a weight column block (L2 reuse for prefill).
    * ``kind="gemv"``: M == 1 only; CUDA-core multiply-accumulate of int8 widened to int32 (no tensor cores),
      ``block_m`` is ignored.

    >>> Config(block_m=16, block_n=64, block_k=512, split_k=2).name
    'mma_m16n64k512_s2_w4_st3'
    """

    block_m: int  # output rows per program (ignored by "gemv")
    block_n: int  # output columns per program
    block_k: int  # K step of a program's loop
    split_k: int = 1  # programs sharing one tile's K range (> 1: int32 partial sums, epilogue in XLA)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    swap_ab: bool = False  # w_tile @ x_tile.T: the weight tile is the MMA's M side
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)
    kind: str = "mma"  # "mma" tensor cores, "gemv" CUDA-core multiply-add (M == 1)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Config.kind: expected one of {KINDS}, got {self.kind!r}")
        tiling.check_powers_of_two(self, ("block_m", "block_n", "block_k", "split_k", "num_warps", "group_m"))
        if self.kind == "mma" and (self.block_m < 16 or self.block_n < 16 or self.block_k < 32):
            raise ValueError(f"Config: int8 MMA tiles need block_m, block_n >= 16 and block_k >= 32, got {self}")
        if self.num_stages < 1:
            raise ValueError(f"Config.num_stages: expected >= 1, got {self.num_stages}")

    @property
    def name(self) -> str:
        m = "" if self.kind == "gemv" else f"m{self.block_m}"
        s = f"{self.kind}{'T' if self.swap_ab else ''}_{m}n{self.block_n}k{self.block_k}_s{self.split_k}"
        return f"{s}_w{self.num_warps}_st{self.num_stages}"


# Tuned on an NVIDIA H100 80GB HBM3, 2026-11-25 (benchmarks/NOTES.md section "INT8 W8A8"; the sweep
# scripts and their results are in git history, see NOTES.md), keyed as in quark_jax.kernels.tiling ("max"
# rows were measured at M = 2048). "swept": fastest correct candidate for that shape; "from": the winner of the
# swept shape with the nearest N carried over (same tiles, split re-chosen to keep the program count). Decode rows
# were re-tuned by GPU kernel time (profiler trace; "retuned", with that time and the one before).
_SM90: dict[str, Config] = {
    "1@4096x4096": Config(block_m=16, block_n=16, block_k=512, num_warps=2, num_stages=4),  # retuned (8.4 us)
    # retuned (22.3 us)
    "1@4096x14336": Config(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=4, swap_ab=True),
    # retuned (24.4 us)
    "1@8192x8192": Config(block_m=16, block_n=64, block_k=512, num_warps=4, num_stages=3, swap_ab=True),
    "1@14336x4096": Config(block_m=16, block_n=16, block_k=512, num_warps=2, num_stages=4),  # retuned (22.1 us)
    # retuned (8.5 us; was 12.6)
    "16@4096x4096": Config(block_m=16, block_n=16, block_k=512, num_warps=2, num_stages=4),
    # retuned (22.7; was 27.4)
    "16@4096x14336": Config(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=4, swap_ab=True),
    # retuned (25.0; was 26.0)
    "16@8192x8192": Config(block_m=16, block_n=64, block_k=512, num_warps=4, num_stages=3, swap_ab=True),
    # retuned (22.3 us; was 36.4)
    "16@14336x4096": Config(block_m=16, block_n=16, block_k=512, num_warps=2, num_stages=4),
    # from (64, 4096, 14336)
    "64@4096x4096": Config(block_m=64, block_n=256, block_k=128, split_k=4, num_warps=8, num_stages=3),
    "64@4096x14336": Config(block_m=64, block_n=256, block_k=128, num_warps=8, num_stages=3),  # swept
    # from (64, 4096, 14336)
    "64@8192x8192": Config(block_m=64, block_n=256, block_k=128, split_k=2, num_warps=8, num_stages=3),
    # from (64, 4096, 14336)
    "64@14336x4096": Config(block_m=64, block_n=256, block_k=128, split_k=4, num_warps=8, num_stages=3),
    # from (256, 4096, 14336)
    "256@4096x4096": Config(block_m=64, block_n=128, block_k=128, split_k=4, num_warps=4, num_stages=4),
    "256@4096x14336": Config(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=4),  # swept
    "256@8192x8192": Config(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=4),  # from (256, 4096, 14336)
    # from (256, 4096, 14336)
    "256@14336x4096": Config(block_m=64, block_n=128, block_k=128, split_k=4, num_warps=4, num_stages=4),
    # from (2048, 4096, 14336)
    "max@4096x4096": Config(block_m=128, block_n=256, block_k=128, num_warps=8, num_stages=3),
    "max@4096x14336": Config(block_m=128, block_n=256, block_k=128, num_warps=8, num_stages=3),  # swept
    # from (2048, 4096, 14336)
    "max@8192x8192": Config(block_m=128, block_n=256, block_k=128, num_warps=8, num_stages=3),
    # from (2048, 4096, 14336)
    "max@14336x4096": Config(block_m=128, block_n=256, block_k=128, num_warps=8, num_stages=3),
}


TUNED: dict[str, dict[str, Config]] = {"sm90": _SM90}


def _pow2_at_most(v: int, cap: int) -> int:
    p = 1
    while p * 2 <= min(v, cap):
        p *= 2
    return p


def heuristic(m: int, k: int, n: int) -> Config:
    """A reasonable config for any shape (N, K multiples of 16), following the H100 sweep: decode tiles without a
    K split unless the N blocks alone leave SMs idle, 64-row tiles for M <= 256, 128x256 tiles for prefill."""
    bk_cap = _pow2_at_most(k, 512)
    bk128 = min(bk_cap, 128)
    if m <= 16:
        bn = 32
        n_blocks = -(-n // bn)
        split = 1
        # at least one program per SM of a 132-SM H100, while each split keeps >= 4 K iterations
        while n_blocks * split < 132 and k // (bk_cap * split * 2) >= 4:
            split *= 2
        return Config(block_m=16, block_n=bn, block_k=bk_cap, split_k=split, num_warps=4, num_stages=4)
    if m <= 64:
        return Config(block_m=64, block_n=256, block_k=bk128, num_warps=8, num_stages=3)
    if m <= 256:
        return Config(block_m=64, block_n=128, block_k=bk128, num_warps=4, num_stages=4)
    return Config(block_m=128, block_n=256, block_k=bk128, num_warps=8, num_stages=3)


def select(m: int, k: int, n: int, table: dict | None = None) -> Config:
    """The config for shape (m, k, n): the entry of ``table`` (default: this device's entry of ``TUNED``) if any,
    else :func:`heuristic`; already ``fit``.

    >>> select(16, 4096, 4096, table={}).block_m
    16
    """
    cfg, _ = tiling.lookup(_dispatch.device_table(TUNED) if table is None else table, m, k, n)
    if cfg is None or (cfg.kind == "gemv" and m != 1):
        cfg = heuristic(m, k, n)
    return fit(cfg, m, k, n)


def fit(cfg: Config, m: int, k: int, n: int) -> Config:
    """Shrink ``cfg`` where it is larger than the problem (block_k > K, more splits than K blocks)."""
    bk = min(cfg.block_k, max(32, _pow2_at_most(k, cfg.block_k)))
    k_blocks = -(-k // bk)
    split = min(cfg.split_k, _pow2_at_most(k_blocks, cfg.split_k))
    return dataclasses.replace(cfg, block_k=bk, split_k=split)


_NT = (((1,), (1,)), ((), ()))  # contract dim 1 of both operands: a [P, K] x b [Q, K] -> [P, Q]


def _iota(shape, dim):
    return lax.broadcasted_iota(jnp.int32, shape, dim)


def _load(ref, mask):
    """Load a (sub)ref, reading 0 where ``mask`` is False (no mask: plain load)."""
    if mask is None:
        return plgpu.load(ref)
    return plgpu.load(ref, mask=mask, other=0)


def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _vector(ref, start, size, limit, bound):
    """``ref[start:start+size]`` of a 1-D ref as a [size] vector; entries past ``limit`` read 0 when ``bound``."""
    idx = start + _iota((size,), 0)
    return _load(ref.at[pl.ds(start, size)], (idx < limit) if bound else None)


def _epilogue_tile(acc, *, m0, n0, bm, bn, m, n, opt, refs):
    """Apply the azp correction (int32) and, unless ``opt['int32_out']``, the scales and bias (f32) to one
    [bm, bn] int32 tile; returns the value to store."""
    mask_m, mask_n = m % bm != 0, n % bn != 0
    if opt["azp_mode"] != "none":
        adj = _vector(refs["azp_adj"], n0, bn, n, mask_n)[None, :]
        if opt["azp_mode"] == "tensor":
            acc = acc - adj
        else:
            azp = _vector(refs["azp"], m0, bm, m, mask_m)[:, None]
            acc = acc - azp * adj
    if opt["int32_out"]:
        return acc
    y = acc.astype(jnp.float32)
    ws = refs["w_scale"][()] if opt["ws_scalar"] else _vector(refs["w_scale"], n0, bn, n, mask_n)[None, :]
    y = ws * y
    xs = refs["x_scale"][()] if opt["xs_scalar"] else _vector(refs["x_scale"], m0, bm, m, mask_m)[:, None]
    y = xs * y
    if opt["has_bias"]:
        y = y + _vector(refs["bias"], n0, bn, n, mask_n).astype(jnp.float32)[None, :]
    return y.astype(opt["out_dtype"])


def _program_tile(cfg: Config, m: int, n: int):
    """(pid_m, pid_n, split) of this program; grid = (m_blocks * n_blocks, split_k), grouped along M."""
    pid_m, pid_n = tiling.grouped_program(pl.program_id(0), pl.cdiv(m, cfg.block_m), pl.cdiv(n, cfg.block_n),
                                          cfg.group_m)
    return pid_m, pid_n, pl.program_id(1)


def _kernel(*args, cfg: Config, m: int, k: int, n: int, names: tuple, opt: dict):
    refs = dict(zip(names, args[:-1]))
    out_ref = args[-1]
    x_ref, w_ref = refs["x_q"], refs["w_q"]
    gemv = cfg.kind == "gemv"
    bm, bn, bk = (1 if gemv else cfg.block_m), cfg.block_n, cfg.block_k
    pid_m, pid_n, split = _program_tile(cfg, m, n) if not gemv else (0, pl.program_id(0), pl.program_id(1))
    m0 = pl.multiple_of(pid_m * bm, bm) if not gemv else 0
    n0 = pl.multiple_of(pid_n * bn, bn)
    iters = pl.cdiv(pl.cdiv(k, bk), cfg.split_k)
    k_start = split * (iters * bk)

    rows_x = (m0 + _iota((bm, 1), 0) < m) if m % bm else None
    rows_w = (n0 + _iota((bn, 1), 0) < n) if n % bn else None
    k_masked = cfg.split_k * iters * bk != k
    # fused prologue (float x, static per-tensor scale): quantized here as quant.scaled_int8_quant does it
    # (quark_jax.kernels.prologue: correctly rounded division, cvt.rni.sat), bit for bit the same codes
    quantize, interpret = opt.get("quantize", False), opt.get("interpret", False)
    if quantize:
        x_scale = refs["x_scale"][()]
        zp = refs["x_zp"][()] if "x_zp" in refs else None
        inv = prologue.static_inverse(x_scale, (1, bk), interpret=interpret) if zp is not None else None

    def tiles(t):
        k0 = pl.multiple_of(k_start + t * bk, bk)
        cols = (k0 + _iota((1, bk), 1) < k) if k_masked else None
        x = _load(x_ref.at[pl.ds(m0, bm), pl.ds(k0, bk)], _and(rows_x, cols))
        if quantize:  # masked (zero) elements quantize to 0 (symmetric) or to the zero point, which the
            # padded weight columns (also 0) cancel
            x = prologue.int8_static_tile(x, x_scale, inv, zp, interpret=interpret)
        w = _load(w_ref.at[pl.ds(n0, bn), pl.ds(k0, bk)], _and(rows_w, cols))
        return x, w

    if gemv:
        def body(t, acc):
            x, w = tiles(t)
            return acc + w.astype(jnp.int32) * x.astype(jnp.int32)

        acc = lax.fori_loop(0, iters, body, jnp.zeros((bn, bk), jnp.int32))
        acc = jnp.sum(acc, axis=1)[None, :]
    elif cfg.swap_ab:
        def body(t, acc):
            x, w = tiles(t)
            return acc + lax.dot_general(w, x, _NT, preferred_element_type=jnp.int32)

        acc = lax.fori_loop(0, iters, body, jnp.zeros((bn, bm), jnp.int32)).T
    else:
        def body(t, acc):
            x, w = tiles(t)
            return acc + lax.dot_general(x, w, _NT, preferred_element_type=jnp.int32)

        acc = lax.fori_loop(0, iters, body, jnp.zeros((bm, bn), jnp.int32))

    rows = m0 + _iota((bm, 1), 0)
    cols = n0 + _iota((1, bn), 1)
    store_mask = _and((rows < m) if m % bm else None, (cols < n) if n % bn else None)
    if cfg.split_k > 1:  # int32 partial sums [split_k * M, N]; scaled after the exact reduction
        out = acc
        row0 = split * m + m0
    else:
        out = _epilogue_tile(acc, m0=m0, n0=n0, bm=bm, bn=bn, m=m, n=n, opt=opt, refs=refs)
        row0 = m0
    if store_mask is None:
        plgpu.store(out_ref.at[pl.ds(row0, bm), pl.ds(n0, bn)], out)
    else:
        plgpu.store(out_ref.at[pl.ds(row0, bm), pl.ds(n0, bn)], out, mask=store_mask)


@functools.partial(jax.jit, static_argnames=("out_dtype", "int32_out", "config", "interpret"))
def _call(x_q, w_q, x_scale, w_scale, bias, azp_adj, azp, x_zp=None, *, out_dtype, int32_out, config, interpret):
    m, k = x_q.shape
    n = w_q.shape[0]
    cfg = config
    if cfg.kind == "gemv" and m != 1:
        raise ValueError(f"config: the gemv kernel needs M == 1, got M = {m}")
    quantize = x_q.dtype != jnp.int8
    if quantize and x_scale.ndim:
        raise ValueError(f"x_scale: float activations are quantized in the kernel with a static per-tensor scale "
                         f"(shape ()), got shape {tuple(x_scale.shape)}")
    azp_mode = "none" if azp_adj is None else ("tensor" if azp is None else "token")
    operands = {"x_q": x_q, "w_q": w_q, "x_scale": x_scale.reshape(-1) if x_scale.ndim else x_scale,
                "w_scale": w_scale}
    if quantize and x_zp is not None:
        operands["x_zp"] = jnp.asarray(x_zp, jnp.int32).reshape(())
    if bias is not None:
        operands["bias"] = bias
    if azp_adj is not None:
        operands["azp_adj"] = azp_adj
    if azp is not None:
        operands["azp"] = azp.reshape(-1)
    opt = dict(azp_mode=azp_mode, int32_out=int32_out, out_dtype=jnp.dtype(out_dtype), has_bias=bias is not None,
               xs_scalar=x_scale.ndim == 0, ws_scalar=w_scale.ndim == 0, quantize=quantize,
               interpret=bool(interpret))
    names = tuple(operands)
    if cfg.kind == "gemv":
        grid = (pl.cdiv(n, cfg.block_n), cfg.split_k)
    else:
        grid = (pl.cdiv(m, cfg.block_m) * pl.cdiv(n, cfg.block_n), cfg.split_k)
    split = cfg.split_k > 1
    out_shape = jax.ShapeDtypeStruct((cfg.split_k * m, n) if split else (m, n),
                                     jnp.int32 if (split or int32_out) else out_dtype)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, k=k, n=n, names=names, opt=opt)
    out = tiling.triton_call(kernel, cfg=cfg, name=f"int8_scaled_mm_{cfg.name}" + ("_q" if quantize else ""),
                             interpret=interpret,
                             out_shape=out_shape, grid=grid)(*operands.values())
    if not split:
        return out
    acc = apply_azp(tiling.sum_splits(out.reshape(cfg.split_k, m, n)), azp_adj, azp)
    if int32_out:
        return acc
    y = x_scale * (w_scale * acc.astype(jnp.float32))
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


def _resolve(x_q, w_q, config, interpret):
    m, k = x_q.shape
    n = w_q.shape[0]
    cfg = select(m, k, n) if config is None else fit(config, m, k, n)
    return cfg, _dispatch.pallas_interpret() if interpret is None else interpret


def int8_scaled_mm_pallas(x_q, w_q, x_scale, w_scale, bias=None, *, azp_adj=None, azp=None, out_dtype=jnp.bfloat16,
                          config: Config | None = None, interpret: bool | None = None, x_zero_point=None):
    """The Pallas INT8 scaled GEMM (arguments as validated by ``int8_scaled_mm``: x_scale f32 () or [M, 1],
    w_scale f32 () or [N], bias [N] or None, azp_adj int32 [N] or None, azp int32 [M, 1] or None).

    ``x_q`` may be float activations (bf16, f16, f32) with a static per-tensor ``x_scale`` (and, asymmetric, the
    static ``x_zero_point``): the kernel quantizes them in its prologue exactly as
    ``quant.scaled_int8_quant(x, x_scale, x_zero_point)`` does (x read once, no quantize kernel).

    ``config`` picks a variant (default: :func:`select`); ``interpret`` defaults to True off GPU.

    >>> x = jnp.full((3, 64), 2, jnp.int8); w = jnp.ones((16, 64), jnp.int8)
    >>> y = int8_scaled_mm_pallas(x, w, jnp.float32(0.5), jnp.full((16,), 0.25, jnp.float32),
    ...                           azp_adj=jnp.full((16,), 64, jnp.int32), out_dtype=jnp.float32)
    >>> y[2, 15].item()  # 0.5 * 0.25 * (2 * 64 - 64)
    8.0
    """
    cfg, interpret = _resolve(x_q, w_q, config, interpret)
    return _call(x_q, w_q, jnp.asarray(x_scale, jnp.float32), jnp.asarray(w_scale, jnp.float32), bias, azp_adj,
                 azp, x_zero_point, out_dtype=jnp.dtype(out_dtype), int32_out=False, config=cfg, interpret=interpret)


def int8_accumulate_pallas(x_q, w_q, *, azp_adj=None, azp=None, config: Config | None = None,
                           interpret: bool | None = None):
    """The kernel's int32 accumulator with the azp term applied, ``x_q @ w_q.T - azp term`` [M, N] int32, before
    any scaling: the same kernel as :func:`int8_scaled_mm_pallas` with the f32 epilogue switched off (for exact
    tests against ``lax.dot_general``).

    >>> int8_accumulate_pallas(jnp.ones((2, 64), jnp.int8), jnp.full((16, 64), -3, jnp.int8))[1, 0].item()
    -192
    """
    cfg, interpret = _resolve(x_q, w_q, config, interpret)
    one = jnp.ones((), jnp.float32)
    return _call(x_q, w_q, one, one, None, azp_adj, azp, out_dtype=jnp.dtype(jnp.int32), int32_out=True,
                 config=cfg, interpret=interpret)
