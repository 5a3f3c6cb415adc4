"""Block configurations for the FP8 Pallas-Triton GEMM: a frozen dataclass, per-device tables, and a selector.

A config names the tiling of ``y[M, N] = x[M, K] @ w[N, K]^T`` (weights K-major, as the checkpoint stores them):

- ``block_m`` x ``block_n`` output tile per program, ``block_k`` the K step of its loop;
- ``k_splits``: K is cut into this many equal ranges, one program each; > 1 writes f32 partial sums that a
  second (XLA) pass reduces and scales — worth it only when ``M / block_m * N / block_n`` programs cannot fill
  the GPU;
- ``group_m``: programs walk the output in column groups of ``group_m`` row blocks (L2 reuse for prefill);
- ``inner``: how a tile product is formed —
  ``"xw"`` ``dot(x[bm, bk], w[bn, bk]^T)`` on tensor cores (prefill shape);
  ``"wx"`` ``dot(w[bn, bk], x[bm, bk]^T)``: the weight is the tall operand (skinny M on tensor cores);
  ``"fma"`` no tensor cores: ``w.astype(f32) * x`` accumulated in a [bn, bk] register tile (``block_m == 1``);
- ``num_warps`` / ``num_stages``: Triton's warps per program and software-pipelining depth.

Tables map ``(device_key, m_bucket)`` — and optionally an exact ``(K, N)`` — to a config; ``select`` falls back
to a heuristic for devices or shapes not in a table, and ``fit`` shrinks blocks so they divide the shape.
"""

from __future__ import annotations

import dataclasses

INNERS = ("xw", "wx", "fma")

# M buckets (upper bounds, inclusive): the key of a table row is the smallest bucket >= M.
M_BUCKETS = (1, 16, 64, 256, 1024, 1 << 62)


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One tiling of the FP8 GEMM (see the module docstring).

    >>> GemmConfig(16, 64, 256, k_splits=2, inner="wx").grid_programs(m=16, n=4096)
    128
    """

    block_m: int
    block_n: int
    block_k: int
    k_splits: int = 1
    group_m: int = 1
    inner: str = "xw"
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        if self.inner not in INNERS:
            raise ValueError(f"GemmConfig.inner: expected one of {INNERS}, got {self.inner!r}")
        for name in ("block_m", "block_n", "block_k", "k_splits", "group_m", "num_warps", "num_stages"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GemmConfig.{name}: expected a positive int, got {v!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"GemmConfig.{name}: expected a power of two, got {v}")
        if self.inner == "fma" and self.block_m != 1:
            raise ValueError(f"GemmConfig: inner='fma' needs block_m == 1, got {self.block_m}")
        if self.inner != "fma" and (self.block_m < 16 or self.block_n < 16 or self.block_k < 32):
            raise ValueError(f"GemmConfig: tensor-core tiles need block_m, block_n >= 16 and block_k >= 32, got "
                             f"{self.block_m}x{self.block_n}x{self.block_k}")

    def grid_programs(self, m: int, n: int) -> int:
        return -(-m // self.block_m) * (n // self.block_n) * self.k_splits

    def short(self) -> str:
        """A compact name, e.g. ``wx 16x64x256 s2 g1 w4 st3``."""
        return (f"{self.inner} {self.block_m}x{self.block_n}x{self.block_k} s{self.k_splits} g{self.group_m} "
                f"w{self.num_warps} st{self.num_stages}")


def _pow2_at_least(v: int) -> int:
    p = 1
    while p < v:
        p *= 2
    return p


def _largest_pow2_dividing(limit: int, size: int, floor: int) -> int:
    b = limit
    while b > floor and size % b:
        b //= 2
    return b


def fit(cfg: GemmConfig, m: int, k: int, n: int) -> GemmConfig:
    """``cfg`` adjusted to the shape: blocks divide N and K / k_splits (N, K multiples of 16), ``block_m`` no
    larger than needed, ``fma`` only for one row.

    >>> fit(GemmConfig(128, 256, 128, group_m=8, num_warps=8), m=5, k=96, n=48).short()
    'xw 16x16x32 s1 g8 w8 st3'
    """
    if n % 16 or k % 16:
        raise ValueError(f"fp8 Pallas GEMM: N = {n} and K = {k} must be multiples of 16")
    inner, bm = cfg.inner, cfg.block_m
    if inner == "fma" and m != 1:
        inner, bm = "wx", 16
    if inner != "fma":
        bm = max(16, min(bm, _pow2_at_least(m)))
    bn = _largest_pow2_dividing(cfg.block_n, n, 16)
    bk = min(cfg.block_k, _pow2_at_least(k))
    floor_k = 16 if inner == "fma" else 32
    splits = cfg.k_splits
    while splits > 1 and (k % splits or (k // splits) % floor_k):
        splits -= 1
    kk = k // splits
    bk = _largest_pow2_dividing(bk, kk, floor_k)
    if kk % bk:  # K = 16 * odd: only the tensor-core floor of 32 failed; fall back to one-row fma tiles of 16
        bk = 16
        inner, bm = "fma", 1
    return dataclasses.replace(cfg, block_m=bm, block_n=bn, block_k=bk, k_splits=splits, inner=inner)


# Heuristic defaults (any device, any shape not in a table): skinny M streams the weight with narrow N blocks
# over the whole of K (K is split only when N alone gives too few programs, see ``_auto_splits``); large M uses
# big tensor-core tiles with grouped ordering. Chosen from the H100 sweeps (benchmarks/NOTES.md).
_DEFAULTS = {
    1: GemmConfig(16, 32, 256, inner="wx", num_warps=4, num_stages=3),
    16: GemmConfig(16, 32, 512, inner="wx", num_warps=4, num_stages=3),
    64: GemmConfig(64, 64, 256, inner="xw", num_warps=4, num_stages=3),
    256: GemmConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=4),
    1024: GemmConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=4),
    1 << 62: GemmConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=4),
}

_H100 = {
    # Decode rows (M = 1, 16) re-tuned 2026-11-25 by GPU kernel time (profiler trace; benchmarks/decode_retune.py):
    # all tilings within ~5% (22-26 us at 58-67 MB of weights, ~2.6 TB/s); the first tables, picked by batched wall
    # time (launch-gap bound on the lent VM), were within 0-2% of these.
    # M = 1
    (1, 4096, 14336): GemmConfig(16, 64, 256, inner="wx", num_warps=4, num_stages=3),
    (1, 14336, 4096): GemmConfig(16, 32, 256, k_splits=2, inner="wx", num_warps=4, num_stages=4),
    (1, 4096, 4096): GemmConfig(16, 32, 256, k_splits=2, inner="wx", num_warps=4, num_stages=4),
    (1, 8192, 8192): GemmConfig(16, 32, 512, inner="wx", num_warps=4, num_stages=3),
    # 2 <= M <= 16
    (16, 4096, 14336): GemmConfig(16, 64, 256, inner="wx", num_warps=4, num_stages=3),
    (16, 14336, 4096): GemmConfig(16, 64, 256, k_splits=4, inner="wx", num_warps=4, num_stages=3),
    (16, 4096, 4096): GemmConfig(16, 32, 256, inner="wx", num_warps=4, num_stages=4),
    (16, 8192, 8192): GemmConfig(16, 32, 512, inner="wx", num_warps=4, num_stages=3),
    # 17 <= M <= 64
    (64, 4096, 14336): GemmConfig(64, 64, 256, inner="wx", num_warps=4, num_stages=3),
    (64, 14336, 4096): GemmConfig(64, 64, 256, k_splits=2, inner="xw", num_warps=4, num_stages=3),
    (64, 4096, 4096): GemmConfig(64, 64, 256, inner="wx", num_warps=4, num_stages=3),
    (64, 8192, 8192): GemmConfig(64, 64, 256, inner="xw", num_warps=4, num_stages=3),
    # 65 <= M <= 256 (XLA is faster here on the H100; these are the best Pallas tilings measured)
    (256, 14336, 4096): GemmConfig(128, 128, 128, k_splits=2, group_m=8, num_warps=4, num_stages=4),
    (256, 4096, 4096): GemmConfig(64, 128, 128, group_m=8, num_warps=4, num_stages=4),
}

# Measured tables: device_key -> {(m_bucket, k, n) or (m_bucket, None, None): GemmConfig}, from
# benchmarks/sweep_fp8.py runs (benchmarks/NOTES.md, "FP8 W8A8"); a row is used as is (after ``fit``).
TABLES: dict[str, dict[tuple, GemmConfig]] = {"nvidia_h100_80gb_hbm3": _H100}

# Programs wanted for a streaming (skinny-M) kernel, ~1.5 per SM of an H100 (132 SMs): in the sweeps, splitting K
# paid where N alone gave 64-128 programs and cost where it gave 224 or more.
_MIN_PROGRAMS = 200


def _auto_splits(cfg: GemmConfig, m: int, k: int, n: int) -> GemmConfig:
    """For a default skinny config: split K (up to 4) while the N blocks give fewer than ``_MIN_PROGRAMS``."""
    if cfg.block_m > 64 or cfg.k_splits != 1:
        return cfg
    programs = -(-m // cfg.block_m) * max(n // cfg.block_n, 1)
    splits = 1
    while splits < 4 and programs * splits < _MIN_PROGRAMS and (k // (2 * splits)) % cfg.block_k == 0:
        splits *= 2
    return dataclasses.replace(cfg, k_splits=splits)


def m_bucket(m: int) -> int:
    return next(b for b in M_BUCKETS if m <= b)


def select(m: int, k: int, n: int, device: str | None = None) -> GemmConfig:
    """The config for shape (m, k, n) on ``device`` (a ``_dispatch.device_key()``), already ``fit`` to it.

    >>> select(1, 4096, 14336, device="cpu").block_m
    16
    """
    b = m_bucket(m)
    table = TABLES.get(device or "", {})
    cfg = table.get((b, k, n)) or table.get((b, None, None))
    if cfg is None:
        cfg = _auto_splits(_DEFAULTS[b], m, k, n)
    return fit(cfg, m, k, n)
