"""Pallas (Triton lowering) grouped GEMM over rows sorted by expert; bf16, FP8 (W8A8) and packed MXFP4 experts;
its ``Config`` and defaults.

``y[rows of e] = out(x_scale * (w_scale[e] * x_rows @ dequant(w[e]).T))`` (scales for FP8 only), f32
accumulation, one rounding to ``out_dtype``. The expert weights are read as stored: [E, N, K] bf16 / fp8, or
packed MXFP4 uint8 [E, N, K/2] with E8M0 bytes [E, N, K/32], decoded in registers
(``kernels.mxfp4_mm.decode``); nothing is dequantized in HBM.

Work list (computed by XLA from ``group_sizes``, :func:`work_items`): each group's rows are cut into windows of
``block_m`` rows starting at the group's first row (only its last window is partial), and the rows past
``sum(group_sizes)`` form one more group whose windows store zeros. At most ``T = cdiv(M, block_m) +
min(E + 1, M) - 1`` items (each non-empty group adds at most one partial window); the unused slots are idle. A
program is (item, N tile[, K split]): it reads the item's expert id, first row and end row from three int32 vectors,
loads only the item's rows of x (masked), streams ``block_n`` rows of that expert's weight over its K range and
stores only the item's rows (masked). Experts no row was routed to have no item, so their weights are never
read: at decode (M = tokens x top-k rows) the kernel reads exactly the selected experts' weights.

Program order: items fastest, then N tiles, so the items of one expert (consecutive row windows) reuse the same
weight tile from L2 at prefill. With ``split_k > 1`` the kernel writes raw f32 partial sums [S, M, N] and one
XLA fusion sums them and applies the scales (the same operation order as the reference).

MXFP4: x is split once (XLA) into its even and odd K columns and the kernel computes ``xe @ lo^T + xo @ hi^T``
on the two decoded nibble planes (as ``mxfp4_mm``); bf16 x runs bf16 MMAs (exact weights), f16 x f16, f32 x an
f32 (HIGHEST) dot.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import _dispatch, tiling, tuning
from quark_jax.kernels.grouped_mm.xla import row_weight_scale
from quark_jax.kernels.mxfp4_mm import decode

DECODES = ("asm", "asm_scaled", "asm_fold", "jnp")
MMAS = ("native", "bf16", "wgmma", "wgmma_acc")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One tiling of the grouped GEMM; block sizes are powers of two.

    >>> Config(block_m=16, block_n=64, block_k=256).w_major
    True
    """

    block_m: int = 16  # sorted rows per window (windows start at each expert's first row; the last is masked)
    block_n: int = 64  # weight rows (output columns) per program
    block_k: int = 256  # K elements per loop step (MXFP4: a multiple of 32, one MX block)
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums reduced by XLA)
    w_major: bool = True  # acc[bn, bm] = w @ x^T (the weight is the tall MMA operand; decode) or acc[bm, bn]
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    decode: str = "asm"  # MXFP4 weight decode: "asm" / "asm_scaled" (PTX, sm90+) or "jnp" (portable, interpret);
    # "asm_fold": one multiply per element by the scale with 2**126 folded in (decode.scale_bf16_folded) in the
    # programs whose scale bytes are all <= decode.FOLD_MAX_SCALE_BYTE (a first pass over the strip's scales
    # checks), "asm" in the others: exact everywhere
    pack: int = 2  # MXFP4: packed bytes per asm instance (2 or 4)
    mma: str = "native"  # FP8: "native" (Pallas' FP8 dot: f16 mma.sync), "bf16" (x as bf16, weight tiles upcast:
    # bf16 wgmma), "wgmma" (kernels.triton_fp8_dot: FP8 wgmma, each K step's product from zero, promoted to the
    # f32 accumulator every `promote` K elements; experimental) or "wgmma_acc" (FP8 wgmma accumulating into the
    # f32 accumulator register itself: no promotion, Triton's FP8 tl.dot default; experimental)
    promote: int = 32  # "wgmma": K elements per f32 promotion (>= block_k: once per K step)
    subtiles: int = 1  # column slices of block_n (x-major only), one dot and one accumulator each: one slice's
    # fresh product live at a time, so 128x256 "wgmma" tiles fit 8 warps' registers (fp8_block_mm's option)

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {v!r}")
        for name in ("block_m", "block_n", "block_k", "split_k"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"Config.{name}: expected a power of two, got {v}")
        if self.block_m < 16 or self.block_n < 16 or self.block_k < 32:
            raise ValueError(f"Config: tensor-core tiles need block_m, block_n >= 16 and block_k >= 32, got "
                             f"{self.block_m}x{self.block_n}x{self.block_k}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")
        if self.pack not in (2, 4):
            raise ValueError(f"Config.pack: expected 2 or 4 bytes per asm instance, got {self.pack}")
        if self.mma not in MMAS:
            raise ValueError(f"Config.mma: expected one of {MMAS}, got {self.mma!r}")
        if self.promote < 32:
            raise ValueError(f"Config.promote: FP8 wgmma needs at least 32 K elements per promotion, got "
                             f"{self.promote}")
        if not isinstance(self.subtiles, int) or self.subtiles < 1 or self.subtiles & (self.subtiles - 1):
            raise ValueError(f"Config.subtiles: expected a power of two, got {self.subtiles!r}")
        if self.subtiles > 1 and self.w_major:
            raise ValueError("Config.subtiles: column slices need the x-major layout (w_major=False)")


# Defaults per scheme and M bucket (M = routed rows = tokens x top-k), not tuned on a GPU yet: the dense kernels'
# tilings (fp8_scaled_mm and mxfp4_mm sweeps, benchmarks/NOTES.md) carried over. Decode streams narrow weight
# strips over K with the weight as the tall MMA operand; prefill uses 128-row windows (each expert's last window is
# partial, so larger windows waste more).
_DECODE = {
    "16": Config(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3),
    "64": Config(block_m=32, block_n=64, block_k=256, num_warps=4, num_stages=3),
}
DEFAULTS = {
    "bf16": {**_DECODE,
             "512": Config(block_m=64, block_n=128, block_k=64, w_major=False, num_warps=4, num_stages=3),
             "max": Config(block_m=128, block_n=128, block_k=64, w_major=False, num_warps=4, num_stages=4)},
    "fp8": {**_DECODE,
            "512": Config(block_m=64, block_n=128, block_k=128, w_major=False, num_warps=4, num_stages=3),
            "max": Config(block_m=128, block_n=128, block_k=128, w_major=False, num_warps=4, num_stages=4)},
    "mxfp4": {"16": Config(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3),  # MXFP4_DECODE: k256_p512
              "64": _DECODE["64"],
              "512": Config(block_m=64, block_n=128, block_k=128, w_major=False, num_warps=4, num_stages=3),
              "max": Config(block_m=128, block_n=128, block_k=128, w_major=False, num_warps=8, num_stages=3)},
}
# Programs a decode launch should have (~1.7 per SM of an H100/H200): the K split doubles (up to 8) below it.
MIN_PROGRAMS = 224

FP8_PREFILL_MMA = "wgmma_acc_n256"
"""FP8 experts above the decode / small buckets (M > 64 routed rows): the default "wgmma_acc_n256" (``CANDIDATES``:
128x256 tiles, FP8 wgmma accumulating into the f32 accumulator, Hopper's FP8 accumulator numerics: measured on
the H200 (session 9, Mixtral gate_up at 2048 tokens) 439 us vs 1206 native and 1041 for bf16 experts, equal to
XLA's own FP8 GEMM bit for bit on the bench data; Mixtral-shaped prefill 2048 18.2 ms vs 36.9 native and 33.9
bf16), "native" (``DEFAULTS``: FP8 MMAs, the
128x128x128 tile measured at ~393 TFLOP/s on the H200, below the bf16 tile's ~471) or "bf16" (``FP8_BF16_PREFILL``:
x handed over as bf16 and each FP8 weight tile upcast in registers, bf16 MMAs with the weight as the register
operand; e4m3 values and their products are exact there, so only the f32 summation order changes) or "wgmma"
(``FP8_WGMMA_PREFILL``: FP8 wgmma through ``kernels.triton_fp8_dot``, experimental) or a name of
``CANDIDATES`` (FP8 wgmma tilings after ``fp8_block_mm``'s measured best). Read when a call is traced (set it
before the first ``generate``); where the Pallas FP8 wgmma lowering hook is missing the wgmma choices fall back to
"native". A/B: ``benchmarks/bench_grouped_mm.py --fp8-prefill``, ``bench_moe.py --fp8-prefill``."""
FP8_BF16_PREFILL = Config(block_m=128, block_n=128, block_k=64, w_major=True, num_warps=8, num_stages=4, mma="bf16")
FP8_WGMMA_PREFILL = Config(block_m=128, block_n=128, block_k=128, w_major=False, num_warps=8, num_stages=3,
                           mma="wgmma")
# FP8 prefill candidates (session 8, helper moefp8pf; benchmarks/NOTES.md "Session 8, helper moefp8pf"), all
# x-major, block_k 128, 8 warps, 3 stages unless named: fp8_block_mm's measured best wgmma settings (promotion
# once per 128-K step, 128x256 tiles as two 128-column slices: 289 us vs 331 for 128x128 there, = bf16's 288)
# without its per-group scales (per-tensor / per-channel scales apply once, after the K loop, so there is no
# scale load to prefetch), and the accumulator-in-the-wgmma form ("wgmma_acc": no promotion FADDs, so Triton
# may keep consecutive K steps' wgmmas in flight; Hopper's FP8 accumulator numerics, as vLLM's fused_moe).
_W = functools.partial(Config, block_m=128, block_k=128, w_major=False, num_warps=8, num_stages=3)
CANDIDATES = {
    "wgmma_p128": _W(block_n=128, mma="wgmma", promote=128),
    "wgmma_n256_sub2": _W(block_n=256, mma="wgmma", promote=128, subtiles=2),
    "wgmma_n256_sub2_s4": _W(block_n=256, mma="wgmma", promote=128, subtiles=2, num_stages=4),
    "wgmma_acc": _W(block_n=128, mma="wgmma_acc"),
    "wgmma_acc_n256": _W(block_n=256, mma="wgmma_acc"),
    "wgmma_acc_n256_sub2": _W(block_n=256, mma="wgmma_acc", subtiles=2),
}
MXFP4_DECODE_CFG = "default"
"""MXFP4 experts at decode (M <= 16 routed rows): "default" (``DEFAULTS["mxfp4"]["16"]``, 16x64x256, 4 warps, 3
stages, the K split to 512 programs = the measured best "k256_p512": H200, session 10, Mixtral-shaped decode 1.453 vs
1.480 ms/step for the earlier 16x64x512 default, now "k512") or a name of ``MXFP4_DECODE`` (session 9, helper moemx4: tilings,
warps, stages, the asm decode's packing and scale placement, the x-major form; benchmarks/NOTES.md "Session 9,
helper moemx4"). Every candidate computes the same f32 sums in the same K order per (row, column) except for the
K split (f32 partial sums added by XLA), so all are exact where the default is. Read when a call is traced. A/B:
``benchmarks/bench_grouped_mm.py --mxfp4-decode``, ``bench_moe.py --mxfp4-decode``."""
_D = functools.partial(Config, block_m=16, block_n=64, block_k=512, num_warps=4, num_stages=3)
MXFP4_DECODE = {  # SASS per candidate (pip Triton 3.9, sm_90): benchmarks/NOTES.md "Session 9, helper moemx4"
    "default": DEFAULTS["mxfp4"]["16"],  # = "k256_p512" (measured best, session 10)
    "k512": _D(),  # the default until session 10: 236 registers, 84 KB shared memory: 2 CTAs (8 warps) per SM
    "k256": _D(block_k=256),  # 8 KB steps: 113 registers, 44 KB: 4 CTAs per SM
    "k256_st4": _D(block_k=256, num_stages=4),  # 59 KB: 3 CTAs per SM
    "k128_st4": _D(block_k=128, num_stages=4),  # 4 KB steps, the most CTAs per SM
    "n128_k128_st4": _D(block_n=128, block_k=128, num_stages=4),  # 128-row strips in 8 KB steps
    "k256_p512": _D(block_k=256),  # k256 with the K split grown to 512 programs (down: 4 CTAs on every SM)
    "w8_n128_k256": _D(block_n=128, block_k=256, num_warps=8),  # two 64-row warpgroups, 16 KB steps
    "k256_p512_fold": _D(block_k=256, decode="asm_fold"),  # k256_p512, one multiply per pair where scales allow
}
MXFP4_DECODE_PROGRAMS = {"default": 512, "k256_p512": 512, "k256_p512_fold": 512}  # the K split's program target where it is not MIN_PROGRAMS
FP8_PREFILL = {"bf16": FP8_BF16_PREFILL, "wgmma": FP8_WGMMA_PREFILL, **CANDIDATES}
FP8_PREFILL_CHOICES = ("native", *FP8_PREFILL)  # the values FP8_PREFILL_MMA takes


def max_items(m: int, e: int, block_m: int) -> int:
    """Static bound on the work items, ``sum_g cdiv(size_g, block_m)`` over the non-empty groups (the experts and
    the rows past the sum, at most M of them): full windows plus at most one partial window per group.

    >>> max_items(2, 8, 16), max_items(4096, 8, 128)
    (2, 40)
    """
    return -(-m // block_m) + min(e + 1, m) - 1


def fit(cfg: Config, m: int, k: int, n: int, *, scheme: str, e: int = 1, target_programs: int = 0) -> Config:
    """``cfg`` with tiles that divide the problem (block_n | N, block_k * split_k | K; N a multiple of 16, K of
    32), block_m no larger than M needs; with ``target_programs`` the K split grows (powers of two, up to 8) until
    the work items times N tiles reach it.

    >>> fit(Config(block_m=128, block_n=128, block_k=256, split_k=4), m=3, k=96, n=48, scheme="bf16").block_k
    32
    """
    if n % 16 or k % 32:
        raise ValueError(f"grouped_mm Pallas kernel: N = {n} must be a multiple of 16 and K = {k} of 32")
    bm = max(16, min(cfg.block_m, tiling.pow2_ceil(max(m, 1))))
    bn = cfg.block_n
    while n % bn:
        bn //= 2
    bn = max(bn, 16)
    splits = cfg.split_k
    programs = max_items(max(m, 1), e, bm) * (n // bn)
    while programs * splits < target_programs and splits < 8 and k // (2 * splits) >= cfg.block_k:
        splits *= 2
    while (k // 32) % splits:
        splits //= 2
    bk = min(cfg.block_k, tiling.pow2_floor(k // splits))
    while (k // splits) % bk:
        bk //= 2
    subtiles = 1 if scheme == "mxfp4" else min(cfg.subtiles, bn // 16)  # slices stay >= 16 columns wide
    return dataclasses.replace(cfg, block_m=bm, block_n=bn, block_k=bk, split_k=splits, subtiles=subtiles)


def default_config(m: int, k: int, n: int, *, scheme: str, e: int) -> Config:
    """``DEFAULTS`` for M's bucket, fitted, with the K split for decode and small M.

    >>> default_config(2, 14336, 4096, scheme="fp8", e=8).split_k
    2
    """
    cfg, bucket = tiling.lookup(DEFAULTS[scheme], m, k, n)
    target = MIN_PROGRAMS if tiling.shape_class(m) in ("decode", "small") else 0
    if scheme == "mxfp4" and bucket == "16":
        if MXFP4_DECODE_CFG not in MXFP4_DECODE:
            raise ValueError(f"MXFP4_DECODE_CFG: expected one of {tuple(MXFP4_DECODE)}, got {MXFP4_DECODE_CFG!r}")
        cfg = MXFP4_DECODE[MXFP4_DECODE_CFG]
        target = MXFP4_DECODE_PROGRAMS.get(MXFP4_DECODE_CFG, target)
    if scheme == "fp8" and FP8_PREFILL_MMA != "native" and m > 64:
        if FP8_PREFILL_MMA not in FP8_PREFILL:
            raise ValueError(f"FP8_PREFILL_MMA: expected one of {FP8_PREFILL_CHOICES}, got {FP8_PREFILL_MMA!r}")
        from quark_jax.kernels import triton_fp8_dot

        if not FP8_PREFILL[FP8_PREFILL_MMA].mma.startswith("wgmma") or triton_fp8_dot.TRITON_RULE:
            cfg = FP8_PREFILL[FP8_PREFILL_MMA]  # (FP8 wgmma needs the Pallas lowering hook: else native)
    return fit(cfg, m, k, n, scheme=scheme, e=e, target_programs=target)


def _inclusive_sum(v):
    """Inclusive prefix sum of a short int32 vector as one masked reduction (a [n, n] compare), which XLA fuses
    with its producers; ``jnp.cumsum`` / ``searchsorted`` cost separate kernels (and a loop) on the GPU."""
    i = jnp.arange(v.shape[0], dtype=jnp.int32)
    return jnp.sum(jnp.where(i[None, :] <= i[:, None], v[None, :], 0), axis=1, dtype=jnp.int32)


def work_items(group_sizes, m: int, block_m: int):
    """The work list for rows sorted by group: int32 vectors [T] (``T = max_items``) of each item's group (E =
    the rows past the groups: store zeros; E + 1 = unused slot), first row and the end row of its group. Item j of
    group g covers rows ``[start_g + j * block_m, min(start_g + (j + 1) * block_m, end_g))``: windows start at each
    group's first row, so only a group's last window is partial (sum of cdiv(size, block_m) items). Group ends are
    clamped to M. Built from compares and masked sums only (a few small fusions on the GPU; cumsum / searchsorted /
    concatenate cost ~22 us per call on the H200).

    >>> g, r0, hi = work_items(jnp.array([3, 0, 14], jnp.int32), 20, 16)  # 3 rows past the groups
    >>> g.tolist(), r0.tolist(), hi.tolist()
    ([0, 2, 3, 4, 4], [0, 3, 17, 0, 0], [3, 17, 20, 0, 0])
    """
    e = group_sizes.shape[0]
    g = jnp.arange(e + 1, dtype=jnp.int32)
    sizes = jnp.where(g < e, group_sizes.astype(jnp.int32)[jnp.minimum(g, e - 1)], 0)  # group e: no sized rows
    ends = jnp.where(g < e, jnp.minimum(_inclusive_sum(sizes), m), m)  # group e runs to M
    starts = jnp.minimum(_inclusive_sum(sizes) - sizes, m)
    count = jnp.where(ends > starts, (ends - starts + block_m - 1) // block_m, 0)
    cum = _inclusive_sum(count)
    t = jnp.arange(max_items(m, e, block_m), dtype=jnp.int32)
    grp = jnp.sum(cum[None, :] <= t[:, None], axis=1, dtype=jnp.int32)  # e + 1 past the last item
    pick = (g[None, :] == grp[:, None])  # [T, e + 1] one-hot of each item's group (none for unused slots)

    def take(v):
        return jnp.sum(jnp.where(pick, v[None, :], 0), axis=1, dtype=jnp.int32)

    row0 = take(starts) + (t - take(cum) + take(count)) * block_m
    return grp, jnp.where(grp <= e, row0, 0), take(ends)


FUSED_DECODE = True
"""MXFP4 experts at decode (every routed row in one window: M <= block_m), E a power of two (<= 256): each
program finds its item's expert and rows from the group sizes itself (``_decode_item``: two prefix sums over E
in the kernel's prologue), so no XLA work list (``work_items``: a chain of small reductions) runs before the
kernel; False: the work list, as at prefill. Same products and sums. (Splitting x's even / odd columns in the
kernel instead of XLA was tried: +131 SASS instructions per 512-K step in the loop, 12%: not taken.)"""


def fused_decode(scheme: str, m: int, e: int, block_m: int) -> bool:
    """Whether ``_grouped_jit`` takes the fused decode path (see ``FUSED_DECODE``).

    >>> fused_decode("mxfp4", 2, 8, 16), fused_decode("mxfp4", 32, 8, 16), fused_decode("mxfp4", 2, 6, 16)
    (True, False, False)
    """
    return FUSED_DECODE and scheme == "mxfp4" and m <= block_m and e & (e - 1) == 0 and e <= 256


def _ptx_decode_ok() -> bool:
    _, cc = tuning.current_device()
    return cc is not None and tuning.capability(cc) >= (9, 0)


def _dot(a, b, precision):
    """``a[p, k] @ b[q, k]^T`` -> f32 [p, q] (both K-major)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)


def _mma_fn(scheme: str, cfg: Config, precision):
    """``(acc, a, b) -> acc + a @ b^T`` (f32) for the config's MMA: Pallas' dot, or ``kernels.triton_fp8_dot``'s
    FP8 wgmma for FP8 tiles (promoting every ``cfg.promote`` K elements, or into ``acc`` itself)."""
    if scheme == "fp8" and cfg.mma == "wgmma":
        from quark_jax.kernels.triton_fp8_dot import fp8_dot

        return lambda acc, a, b: acc + fp8_dot(a, b, promote=cfg.promote)
    if scheme == "fp8" and cfg.mma == "wgmma_acc":
        from quark_jax.kernels.triton_fp8_dot import fp8_dot_acc

        return lambda acc, a, b: fp8_dot_acc(a, b, acc)
    return lambda acc, a, b: acc + _dot(a, b, precision)


def _decode_item(gs_ref, item, m: int, e: int):
    """``(group, first row, end row)`` of work item ``item`` when every row fits one window (M <= block_m): item t
    is the t-th non-empty group (rows ``[start, end)`` of the sorted rows, clamped to M); after them one item for
    the rows past ``sum(group_sizes)`` (group E: zeros) when the sum is below M; the other items get E + 1 (idle).
    Computed by each program from the E group sizes (two prefix sums), so no XLA work list precedes the kernel."""
    sizes = gs_ref[...]
    ends = jnp.minimum(jnp.cumsum(sizes), m)
    starts = jnp.minimum(ends, jnp.cumsum(sizes) - sizes)
    nonempty = (ends > starts).astype(jnp.int32)
    sel = (nonempty == 1) & (jnp.cumsum(nonempty) == item + 1)
    found = jnp.sum(sel.astype(jnp.int32))  # 1 or 0 (int arithmetic: Triton lowers scalar selects poorly)
    total = jnp.max(ends)
    past = ((item == jnp.sum(nonempty)) & (total < m)).astype(jnp.int32)

    def pick(v):
        return jnp.sum(jnp.where(sel, v, 0))

    g = found * pick(jnp.arange(e, dtype=jnp.int32)) + (1 - found) * (e + 1 - past)
    lo = found * pick(starts) + (1 - found) * total
    hi = found * pick(ends) + (1 - found) * m
    return g, lo, hi


def _kernel(*refs, scheme: str, cfg: Config, n: int, e: int, m: int, items: int, k_len: int, per_channel: bool,
            partial: bool, w_dtype, precision, fused: bool):
    from jax.experimental.pallas import triton as plgpu

    o_ref = refs[-1]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    pid = pl.program_id(0)
    split = pl.program_id(1)
    item = pid % items
    c0 = pl.multiple_of((pid // items) * bn, bn)
    if fused:  # decode: one window holds every row; the item's group from the group sizes
        gs_ref, refs = refs[0], refs[1:]
        g, lo, hi = _decode_item(gs_ref, item, m, e)
        r0 = 0
        rows = jnp.arange(bm, dtype=jnp.int32)
        row_ok = (rows >= lo) & (rows < hi)
    else:
        grp_ref, row0_ref, hi_ref, refs = refs[0], refs[1], refs[2], refs[3:]
        g = grp_ref[item]
        r0 = row0_ref[item]  # the item's rows are r0 .. min(r0 + bm, hi), all in its group
        hi = hi_ref[item]
        rows = r0 + jnp.arange(bm, dtype=jnp.int32)
        row_ok = rows < hi
    if scheme == "mxfp4":
        xe_ref, xo_ref, w_ref, s_ref = refs[:4]
    else:
        x_ref, w_ref = refs[:2]
    sub = bn // cfg.subtiles  # columns per dot / accumulator / store (the tile's column slices)
    out_mask = jnp.broadcast_to(row_ok[:, None], (bm, sub))

    def o_view(j):  # column slice j of the program's output tile
        cols = pl.ds(c0 + j * sub, sub)
        return o_ref.at[split, pl.ds(r0, bm), cols] if partial else o_ref.at[pl.ds(r0, bm), cols]
    # Column offsets are products of the split index and static strides (no division): Triton's alignment
    # analysis then proves them multiples of the step without the ``multiple_of`` hint, which the pipeliner's
    # peeled first iteration loses (``kh + 0 * bkh`` folds away with its hint). A ``(split * k_len) // 2`` here
    # (a floor division: a select Triton cannot see through) made the MXFP4 packed-weight copy 1-byte aligned
    # and Triton 3.x failed to compile it ("cp.async does not support transfers smaller than 4 bytes").
    k_first = split * k_len

    @pl.when(g < e)
    def _compute():
        w0 = g * n + c0  # first weight row of this program: expert g's rows c0 .. c0 + bn of the [E * N, .] view

        def load_x(ref, k0, width):
            mask = jnp.broadcast_to(row_ok[:, None], (bm, width))
            return tiling.masked_load(ref.at[pl.ds(r0, bm), pl.ds(k0, width)], mask)

        mma_fn = _mma_fn(scheme, cfg, precision)

        def mma(acc, w, x):
            return mma_fn(acc, w, x) if cfg.w_major else mma_fn(acc, x, w)

        if scheme == "mxfp4":
            bkh = bk // 2  # packed bytes = x columns of one parity per step
            bks = bk // formats.MX_BLOCK_SIZE

            kh_first = split * (k_len // 2)  # static strides (k_len is a multiple of 32): no floor division
            ks_first = split * (k_len // formats.MX_BLOCK_SIZE)

            def make_body(fold):
                def body(i, accs):
                    (acc,) = accs
                    kh = pl.multiple_of(kh_first + i * bkh, bkh)
                    packed = w_ref[pl.ds(w0, bn), pl.ds(kh, bkh)]
                    sbytes = s_ref[pl.ds(w0, bn), pl.ds(ks_first + i * bks, bks)]
                    if cfg.decode == "jnp":
                        wlo, whi = decode.decode_jnp(packed, sbytes, w_dtype)
                    else:
                        wlo, whi = decode.decode_asm(packed, sbytes, w_dtype, pack=cfg.pack,
                                                     scale_in_asm=cfg.decode == "asm_scaled", fold=fold)
                    acc = mma(acc, wlo, load_x(xe_ref, kh, bkh))
                    return (mma(acc, whi, load_x(xo_ref, kh, bkh)),)
                return body

            def max_scale_byte():  # the largest scale byte of the program's strip and K range: one masked load
                ns = k_len // formats.MX_BLOCK_SIZE  # (a loop of per-step loads would wait ~1 us per step)
                width = tiling.pow2_ceil(ns)
                mask = jnp.broadcast_to((jnp.arange(width, dtype=jnp.int32) < ns)[None, :], (bn, width))
                sb = tiling.masked_load(s_ref.at[pl.ds(w0, bn), pl.ds(ks_first, width)], mask)
                return jnp.max(sb.astype(jnp.int32))

            body = make_body(False)
        else:
            def body(i, accs):
                k0 = pl.multiple_of(k_first + i * bk, bk)
                xk = load_x(x_ref, k0, bk)
                out = []
                for j, acc in enumerate(accs):  # one column slice at a time (its product consumed before the next)
                    w = w_ref[pl.ds(w0 + j * sub, sub), pl.ds(k0, bk)]
                    if cfg.mma == "bf16" and scheme == "fp8":  # x came as bf16: exact e4m3 values, bf16 MMAs
                        w = w.astype(jnp.bfloat16)
                    out.append(mma(acc, w, xk))
                return tuple(out)

        def _store(accs):
            for j, acc in enumerate(accs):
                if cfg.w_major:
                    acc = acc.T
                if scheme == "fp8" and not partial:
                    xs_ref, ws_ref = refs[2], refs[3]
                    xs = plgpu.load(xs_ref.at[pl.ds(r0, bm)], mask=row_ok, other=0.0)
                    ws = ws_ref[pl.ds(w0 + j * sub, sub)] if per_channel else jnp.broadcast_to(ws_ref[g], (sub,))
                    acc = xs[:, None] * (ws[None, :] * acc)
                plgpu.store(o_view(j), acc.astype(o_view(j).dtype), mask=out_mask)

        shape = (sub, bm) if cfg.w_major else (bm, sub)
        zeros = tuple(jnp.zeros(shape, jnp.float32) for _ in range(cfg.subtiles))
        if scheme == "mxfp4" and cfg.decode == "asm_fold":
            foldable = max_scale_byte() <= decode.FOLD_MAX_SCALE_BYTE

            @pl.when(foldable)
            def _folded():
                _store(lax.fori_loop(0, k_len // bk, make_body(True), zeros))

            @pl.when(jnp.logical_not(foldable))
            def _plain():
                _store(lax.fori_loop(0, k_len // bk, body, zeros))
        else:
            _store(lax.fori_loop(0, k_len // bk, body, zeros))

    @pl.when(g == e)
    def _zeros():  # rows past the groups
        for j in range(cfg.subtiles):
            plgpu.store(o_view(j), jnp.zeros((bm, sub), o_view(j).dtype), mask=out_mask)


def grouped_mm_pallas(x, w, group_sizes, *, w_scale=None, x_scale=None, scheme="bf16", out_dtype=jnp.bfloat16,
                      config=None, interpret=None):
    """Pallas grouped GEMM; same contract as ``quark_jax.kernels.grouped_mm`` (operands normalized by the entry:
    fp8 w_scale f32 [E] or [E, N], x_scale f32 () or [M, 1]). ``config`` (a :class:`Config`) overrides the
    defaults; ``interpret`` defaults to "unless on a CUDA GPU".

    >>> x = jnp.ones((3, 32), jnp.bfloat16); w = jnp.stack([jnp.ones((16, 32)), 2 * jnp.ones((16, 32))])
    >>> y = grouped_mm_pallas(x, w.astype(jnp.bfloat16), jnp.array([1, 1], jnp.int32))
    >>> y[:, 0].tolist()
    [32.0, 64.0, 0.0]
    """
    m, k = x.shape
    e, n = w.shape[:2]
    interpret = _dispatch.pallas_interpret() if interpret is None else bool(interpret)
    cfg = (default_config(m, k, n, scheme=scheme, e=e) if config is None
           else fit(config, m, k, n, scheme=scheme, e=e))
    if scheme == "mxfp4" and cfg.decode != "jnp" and (interpret or not _ptx_decode_ok()
                                                      or jnp.dtype(x.dtype) != jnp.bfloat16):
        cfg = dataclasses.replace(cfg, decode="jnp")  # the inline PTX needs sm90 and makes bf16
    if scheme == "fp8" and x.dtype != jnp.float8_e4m3fn:
        raise TypeError(f"x: the Pallas grouped FP8 kernel takes float8_e4m3fn, got {x.dtype} (use impl='xla')")
    if m == 0:
        return jnp.zeros((0, n), out_dtype)
    return _grouped_jit(x, w, group_sizes, w_scale, x_scale, scheme=scheme, out_dtype=jnp.dtype(out_dtype),
                        cfg=cfg, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("scheme", "out_dtype", "cfg", "interpret"))
def _grouped_jit(x, w, group_sizes, w_scale, x_scale, *, scheme, out_dtype, cfg, interpret):
    m, k = x.shape
    e, n = w.shape[:2]
    splits = cfg.split_k
    partial = splits > 1
    items = max_items(m, e, cfg.block_m)
    fused = fused_decode(scheme, m, e, cfg.block_m)
    meta = [group_sizes] if fused else list(work_items(group_sizes, m, cfg.block_m))
    if scheme == "mxfp4":
        pairs = x.reshape(m, k // 2, 2)
        operands = [pairs[:, :, 0], pairs[:, :, 1], w.reshape(e * n, k // 2),
                    w_scale.reshape(e * n, k // formats.MX_BLOCK_SIZE)]
    elif scheme == "fp8" and cfg.mma == "bf16":
        operands = [x.astype(jnp.bfloat16), w.reshape(e * n, k)]  # e4m3 -> bf16 is exact (XLA fuses it upstream)
    else:
        operands = [x, w.reshape(e * n, k)]
    per_channel = scheme == "fp8" and w_scale.ndim == 2
    if scheme == "fp8" and not partial:
        operands += [jnp.broadcast_to(x_scale.reshape(-1), (m,)),
                     w_scale.reshape(e * n) if per_channel else w_scale.reshape(e)]
    precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    kernel = functools.partial(_kernel, scheme=scheme, cfg=cfg, n=n, e=e, m=m, items=items, k_len=k // splits,
                               per_channel=per_channel, partial=partial, w_dtype=x.dtype, precision=precision,
                               fused=fused)
    out_shape = (jax.ShapeDtypeStruct((splits, m, n), jnp.float32) if partial
                 else jax.ShapeDtypeStruct((m, n), out_dtype))
    name = (f"grouped_mm_{scheme}_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{splits}"
            + (f"_{cfg.mma}" if scheme == "fp8" and cfg.mma != "native" else "")
            + (f"_p{cfg.promote}" if scheme == "fp8" and cfg.mma == "wgmma" else "")
            + (f"_sub{cfg.subtiles}" if cfg.subtiles > 1 else ""))
    name += "_fused" if fused else ""
    y = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape,
                           grid=(items * (n // cfg.block_n), splits))(*meta, *operands)
    if not partial:
        return y
    y = jnp.sum(y, axis=0)
    if scheme == "fp8":
        y = x_scale * (row_weight_scale(w_scale, group_sizes, m) * y)
    return y.astype(out_dtype)


__all__ = ["grouped_mm_pallas", "Config", "DEFAULTS", "CANDIDATES", "FP8_PREFILL", "FP8_PREFILL_CHOICES",
           "MXFP4_DECODE", "FUSED_DECODE", "fused_decode",
           "default_config", "fit", "work_items", "max_items"]
