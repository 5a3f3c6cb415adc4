"""Block configurations of the Pallas MXFP4 GEMM: one frozen dataclass, a measured default per shape class.

A config fixes the tiles (``block_m`` rows of x, ``block_n`` rows of the weight, ``block_k`` elements of K per
loop step), the K split (``split_k`` programs share one output tile and their f32 partial sums are added by a
small XLA reduction), the Triton launch (``num_warps``, ``num_stages``), how the weight is decoded in registers
(``decode``: ``"asm"`` = PTX bit tricks on packed registers, GPU only, ``pack`` bytes per asm instance;
``"asm_scaled"`` = the same with the block scale multiplied inside the asm; ``"jnp"`` = portable integer/float
jnp ops, also used in interpret mode) and the operand order of the MMA (``w_major``: the decoded weight tile is the
left operand, ``acc[bn, bm] = w @ x^T``, which suits small M).

``default_config(m, k, n)`` returns the tuned entry for the shape class of ``m`` and then ``fit`` shrinks tiles
that do not divide the problem, so any valid shape gets a runnable config.
"""

from __future__ import annotations

import dataclasses

DECODES = ("asm", "asm_scaled", "jnp")


@dataclasses.dataclass(frozen=True)
class Config:
    """Tiles and launch parameters; all block sizes are powers of two, ``block_k`` a multiple of 32.

    >>> Config(block_m=16, block_n=64, block_k=256).block_k
    256
    """

    block_m: int = 16
    block_n: int = 64
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    decode: str = "asm"
    w_major: bool = True
    group_m: int = 8
    pack: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k", "split_k", "num_warps"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"Config.{name}: expected a power of two, got {v}")
        if self.block_m < 16 or self.block_n < 16:
            raise ValueError(f"Config: block_m and block_n must be >= 16 (MMA tiles), got {self.block_m}, "
                             f"{self.block_n}")
        if self.block_k < 32:
            raise ValueError(f"Config.block_k: expected a multiple of 32 (one MX block), got {self.block_k}")
        if self.pack not in (2, 4):
            raise ValueError(f"Config.pack: expected 2 or 4 bytes per asm instance, got {self.pack}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")


# Shape class -> config, chosen on the H100 by device time (benchmarks/table_mxfp4.py phase A, 2026-11-25, at
# K=4096, N=14336; benchmarks/NOTES.md section MXFP4). M is padded to block_m inside the kernel (masked loads).
# "medium_128" serves the medium class up to M = 128 (session 3 sweep of 12 tilings at M = 128/256/512 on four
# weight shapes: 128x64x256 with 4 warps was the fastest or within 3% at M = 128).
DEFAULTS = {
    "decode": Config(block_m=16, block_n=64, block_k=512, split_k=1, num_warps=4, num_stages=3),
    "small": Config(block_m=64, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=3),
    "medium_128": Config(block_m=128, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=3, group_m=4),
    "medium": Config(block_m=256, block_n=128, block_k=128, split_k=1, num_warps=8, num_stages=3,
                     decode="asm_scaled", group_m=4),
    "prefill": Config(block_m=256, block_n=128, block_k=128, split_k=1, num_warps=8, num_stages=3, group_m=4),
}
# Classes whose short-N / long-K shapes get a K split, and the number of programs the split aims for. Decode and
# small tiles want ~1.7 programs per SM (224 on 132 SMs). Medium tiles want about one per SM: at M = 256 the
# 14336x4096 weight has 32 output tiles and ran 218.6 us unsplit, 78.0 us split 4 ways (128 programs), while
# 4096x14336 (112 tiles) ran 73.2 us unsplit and 95.0 us split 2 ways (session 3, kernel time, H100).
AUTO_SPLIT = {"decode": 224, "small": 224, "medium": 100}


def _pow2_floor(v: int) -> int:
    return 1 << (max(int(v), 1).bit_length() - 1)


def fit(cfg: Config, m: int, k: int, n: int, *, target_programs: int = 0) -> Config:
    """``cfg`` with tiles shrunk so that they divide the problem: block_n | N, block_k * split_k | K.

    ``block_m`` is capped at the padded M (at least 16). N must be a multiple of 16, K a multiple of 32. With
    ``target_programs`` the K split grows (powers of two, up to 8) until there are that many programs.

    >>> fit(Config(block_n=128, block_k=256, split_k=4), m=1, k=96, n=48)
    Config(block_m=16, block_n=16, block_k=32, split_k=1, num_warps=4, num_stages=3, decode='asm', w_major=True, group_m=8, pack=2)
    """
    block_m = min(cfg.block_m, max(16, _pow2_floor(m) * (2 if m & (m - 1) else 1)))
    block_n = cfg.block_n
    while n % block_n:
        block_n //= 2
    split_k = cfg.split_k
    tiles = (n // block_n) * -(-m // block_m)
    while tiles * split_k < target_programs and split_k < 8 and k // (2 * split_k) >= cfg.block_k:
        split_k *= 2
    while (k // 32) % split_k:
        split_k //= 2
    block_k = min(cfg.block_k, _pow2_floor(k // split_k))
    while (k // split_k) % block_k:
        block_k //= 2
    if block_n < 16 or block_k < 32:
        raise ValueError(f"mxfp4_mm: cannot tile N = {n}, K = {k} (need N % 16 == 0 and K % 32 == 0)")
    return dataclasses.replace(cfg, block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k)


def default_config(m: int, k: int, n: int) -> Config:
    """The tuned config for the shape class of ``m`` (see ``_dispatch.shape_class``), fitted to (m, k, n)."""
    from quark_jax.kernels._dispatch import shape_class

    cls = shape_class(m)
    entry = "medium_128" if cls == "medium" and m <= 128 else cls
    return fit(DEFAULTS[entry], m, k, n, target_programs=AUTO_SPLIT.get(cls, 0))
