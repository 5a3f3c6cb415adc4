"""Block configurations for the Pallas-Triton INT8 GEMM: the config type, the tuned table and the fallback heuristic.

A :class:`Config` fixes everything the kernel specialises on besides the shapes: tile sizes, the number of K
splits, the MMA orientation, the CUDA-core GEMV variant, warps and pipeline stages. :func:`get_config` returns the
tuned config for a shape when the table has one (measured on an H100, see benchmarks/NOTES.md, section INT8) and a
heuristic otherwise; :func:`candidates` lists the configs a sweep tries for a shape.
"""

from __future__ import annotations

import dataclasses

KINDS = ("mma", "gemv")


@dataclasses.dataclass(frozen=True)
class Config:
    """One kernel variant.

    * ``kind="mma"``: tensor-core tiles. Each program computes a ``[block_m, block_n]`` output tile over its share
      of K (``split_k`` programs share one tile's K range; with ``split_k > 1`` the programs write int32 partial
      sums and the epilogue runs in XLA after the exact int32 reduction). ``swap_ab`` computes the tile as
      ``w_tile @ x_tile.T`` so the weight tile is the MMA's M side (Hopper wgmma wants M >= 64). ``group_m``
      orders programs so that ``group_m`` row blocks share a weight column block (L2 reuse for prefill).
    * ``kind="gemv"``: M == 1 only; CUDA-core multiply-accumulate of int8 widened to int32 (no tensor cores),
      ``block_m`` is ignored.

    >>> Config(16, 64, 512, split_k=2).name
    'mma_m16n64k512_s2_w4_st3'
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    swap_ab: bool = False
    group_m: int = 8
    kind: str = "mma"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Config.kind: expected one of {KINDS}, got {self.kind!r}")
        for f in ("block_m", "block_n", "block_k", "split_k", "num_warps", "group_m"):
            v = getattr(self, f)
            if v < 1 or v & (v - 1):
                raise ValueError(f"Config.{f}: expected a power of two, got {v}")
        if self.kind == "mma" and (self.block_m < 16 or self.block_n < 16 or self.block_k < 32):
            raise ValueError(f"Config: int8 MMA tiles need block_m, block_n >= 16 and block_k >= 32, got {self}")
        if self.num_stages < 1:
            raise ValueError(f"Config.num_stages: expected >= 1, got {self.num_stages}")

    @property
    def name(self) -> str:
        m = "" if self.kind == "gemv" else f"m{self.block_m}"
        s = f"{self.kind}{'T' if self.swap_ab else ''}_{m}n{self.block_n}k{self.block_k}_s{self.split_k}"
        return f"{s}_w{self.num_warps}_st{self.num_stages}"


# Tuned on an NVIDIA H100 80GB HBM3, 2026-11-25 (benchmarks/int8_device_run.py; results in
# benchmarks/results/int8_h100_2026-11-25_*; NOTES.md section "INT8 W8A8"), keyed by (M bucket, K, N); the M bucket
# is the smallest of _M_BUCKETS >= M. "swept": fastest correct candidate for that shape; "from": the winner of the
# swept shape with the nearest N carried over by transfer(). Caveat: decode timings on that machine sat at the
# host-dispatch floor (~50 us per jitted call), so decode winners are chosen within measurement noise.
_M_BUCKETS = (1, 16, 64, 256, 2048)
TUNED: dict[tuple[int, int, int], Config] = {
    # decode rows re-tuned 2026-11-25 by GPU kernel time (profiler; benchmarks/decode_retune.py, "retuned")
    (1, 4096, 4096): Config(16, 16, 512, num_warps=2, num_stages=4),  # retuned (8.4 us)
    (1, 4096, 14336): Config(16, 64, 256, num_warps=4, num_stages=4, swap_ab=True),  # retuned (22.3 us)
    (1, 8192, 8192): Config(16, 64, 512, num_warps=4, num_stages=3, swap_ab=True),  # retuned (24.4 us)
    (1, 14336, 4096): Config(16, 16, 512, num_warps=2, num_stages=4),  # retuned (22.1 us)
    (16, 4096, 4096): Config(16, 16, 512, num_warps=2, num_stages=4),  # retuned (8.5 us; was 12.6)
    (16, 4096, 14336): Config(16, 64, 256, num_warps=4, num_stages=4, swap_ab=True),  # retuned (22.7; was 27.4)
    (16, 8192, 8192): Config(16, 64, 512, num_warps=4, num_stages=3, swap_ab=True),  # retuned (25.0; was 26.0)
    (16, 14336, 4096): Config(16, 16, 512, num_warps=2, num_stages=4),  # retuned (22.3 us; was 36.4)
    (64, 4096, 4096): Config(64, 256, 128, split_k=4, num_warps=8, num_stages=3),  # from (64, 4096, 14336)
    (64, 4096, 14336): Config(64, 256, 128, num_warps=8, num_stages=3),  # swept
    (64, 8192, 8192): Config(64, 256, 128, split_k=2, num_warps=8, num_stages=3),  # from (64, 4096, 14336)
    (64, 14336, 4096): Config(64, 256, 128, split_k=4, num_warps=8, num_stages=3),  # from (64, 4096, 14336)
    (256, 4096, 4096): Config(64, 128, 128, split_k=4, num_warps=4, num_stages=4),  # from (256, 4096, 14336)
    (256, 4096, 14336): Config(64, 128, 128, num_warps=4, num_stages=4),  # swept
    (256, 8192, 8192): Config(64, 128, 128, num_warps=4, num_stages=4),  # from (256, 4096, 14336)
    (256, 14336, 4096): Config(64, 128, 128, split_k=4, num_warps=4, num_stages=4),  # from (256, 4096, 14336)
    (2048, 4096, 4096): Config(128, 256, 128, num_warps=8, num_stages=3),  # from (2048, 4096, 14336)
    (2048, 4096, 14336): Config(128, 256, 128, num_warps=8, num_stages=3),  # swept
    (2048, 8192, 8192): Config(128, 256, 128, num_warps=8, num_stages=3),  # from (2048, 4096, 14336)
    (2048, 14336, 4096): Config(128, 256, 128, num_warps=8, num_stages=3),  # from (2048, 4096, 14336)
}


def m_bucket(m: int) -> int:
    """The tuned-table row for ``m``: the smallest bucket >= m (the largest bucket beyond it)."""
    return next((b for b in _M_BUCKETS if m <= b), _M_BUCKETS[-1])


def _pow2_at_most(v: int, cap: int) -> int:
    p = 1
    while p * 2 <= min(v, cap):
        p *= 2
    return p


def heuristic(m: int, k: int, n: int) -> Config:
    """A reasonable config for any shape (N, K multiples of 16), following the H100 sweep: decode tiles without a
    K split unless the N blocks alone leave SMs idle, 64-row tiles for M <= 256, 128x256 tiles for prefill."""
    bk_cap = _pow2_at_most(k, 512)
    if m <= 16:
        bn = 32
        n_blocks = -(-n // bn)
        split = 1
        # at least one program per SM of a 132-SM H100, while each split keeps >= 4 K iterations
        while n_blocks * split < 132 and k // (bk_cap * split * 2) >= 4:
            split *= 2
        return Config(16, bn, bk_cap, split_k=split, num_warps=4, num_stages=4)
    if m <= 64:
        return Config(64, 256, min(bk_cap, 128), num_warps=8, num_stages=3)
    if m <= 256:
        return Config(64, 128, min(bk_cap, 128), num_warps=4, num_stages=4)
    return Config(128, 256, min(bk_cap, 128), num_warps=8, num_stages=3)


def get_config(m: int, k: int, n: int) -> Config:
    """The config for shape (m, k, n): tuned entry if any, else :func:`heuristic`.

    >>> get_config(16, 4096, 4096).block_m
    16
    """
    cfg = TUNED.get((m_bucket(m), k, n))
    if cfg is not None and (cfg.kind != "gemv" or m == 1):
        return cfg
    return heuristic(m, k, n)


def candidates(m: int, k: int, n: int) -> list[Config]:
    """Configs a sweep tries for shape (m, k, n) (all valid for it); the heuristic one first."""
    out = [heuristic(m, k, n)]
    if m <= 16:
        for bn, bk, split, warps, stages in [
            (16, 512, 1, 2, 4), (16, 1024, 1, 4, 3), (16, 256, 1, 2, 6), (32, 256, 1, 4, 4), (32, 512, 1, 4, 4),
            (32, 512, 2, 4, 4), (32, 512, 4, 4, 3), (32, 1024, 1, 4, 3), (64, 256, 1, 4, 4), (64, 256, 2, 4, 4),
            (64, 512, 1, 4, 3), (64, 512, 2, 8, 3), (64, 128, 4, 4, 6), (128, 256, 2, 8, 3),
        ]:
            out.append(Config(16, bn, bk, split_k=split, num_warps=warps, num_stages=stages))
        for bn, bk, split, warps, stages in [(64, 256, 1, 4, 4), (128, 256, 1, 4, 3), (128, 128, 2, 4, 4),
                                             (64, 512, 1, 4, 3)]:
            out.append(Config(16, bn, bk, split_k=split, num_warps=warps, num_stages=stages, swap_ab=True))
        if m == 1:
            for bn, bk, warps, split in [(16, 512, 4, 1), (32, 256, 4, 1), (64, 256, 8, 1), (32, 256, 4, 2)]:
                out.append(Config(1, bn, bk, split_k=split, num_warps=warps, num_stages=3, kind="gemv"))
    elif m <= 256:
        bm = 64 if m <= 64 else 128
        for bn, bk, split, warps, stages in [(64, 256, 1, 4, 4), (128, 128, 1, 4, 4), (128, 256, 1, 4, 3),
                                             (64, 128, 2, 4, 4), (256, 128, 1, 8, 3)]:
            out.append(Config(64 if bn == 256 else bm, bn, bk, split_k=split, num_warps=warps, num_stages=stages))
    else:
        for bm, bn, bk, warps, stages in [(128, 128, 128, 8, 4), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
                                          (128, 256, 64, 8, 4), (128, 128, 256, 8, 3)]:
            out.append(Config(bm, bn, bk, num_warps=warps, num_stages=stages))
    seen, valid = set(), []
    for c in out:
        c = fit(c, m, k, n)
        if c.name not in seen:
            seen.add(c.name)
            valid.append(c)
    return valid


def transfer(cfg: Config, src: tuple[int, int, int], dst: tuple[int, int, int]) -> Config:
    """Carry a config tuned for shape ``src`` = (m, k, n) over to ``dst``: same tiles, warps and stages; for split-K
    decode configs the split is re-chosen so the number of programs stays close to the tuned one.

    >>> transfer(Config(16, 64, 512, split_k=2), (16, 4096, 14336), (16, 4096, 4096)).split_k
    4
    """
    m, k, n = dst
    if cfg.kind == "gemv" and m != 1:
        return heuristic(m, k, n)
    programs = -(-src[2] // cfg.block_n) * cfg.split_k * -(-src[0] // cfg.block_m)
    base = -(-n // cfg.block_n) * -(-m // cfg.block_m)
    split = 1
    while base * split * 2 <= programs * 1.5 and k // (cfg.block_k * split * 2) >= 2:
        split *= 2
    if cfg.split_k == 1 and base >= 132:  # tuned without a split and the grid still fills an H100
        split = 1
    return fit(dataclasses.replace(cfg, split_k=split), m, k, n)


def fit(cfg: Config, m: int, k: int, n: int) -> Config:
    """Shrink ``cfg`` where it is larger than the problem (block_k > K, more splits than K blocks)."""
    bk = min(cfg.block_k, max(32, _pow2_at_most(k, cfg.block_k)))
    k_blocks = -(-k // bk)
    split = min(cfg.split_k, _pow2_at_most(k_blocks, cfg.split_k))
    return dataclasses.replace(cfg, block_k=bk, split_k=split)
