"""Pallas (Triton lowering) W4A16 INT4 / UINT4 decode kernel on a load-time repacked weight (the MXFP4 decode
kernel's structure), with the repack, its inverse, its ``Config`` and tuned defaults.

**Layout.** :func:`repack` turns Quark's int32 [K, N/8] (8 values along N a word) into uint8 [N, K/2]: byte j
of group g in row n holds K element ``g * group + j`` in its low and ``g * group + group / 2 + j`` in its high
nibble (each nibble plane of a group is a contiguous half of the group's x columns: no activation shuffle), the
nibble being ``u = q & 15`` for uint4 and ``u = (q & 15) ^ 8 = q + 8`` for int4; the zero points become int8
[G, N]; the scales keep their checkpoint layout f32 [G, N]. :func:`unrepack` is its exact inverse. A pure
jittable function: a scheme runs it once when it loads the weight.

**Kernel.** ``y = linear(x, (q - z) * s, bias)`` with f32 accumulation. x is read as it is; its per-group row sums ``rs`` [G, M] are one small XLA reduction (fused into x's producer
where there is one).
Each program owns ``block_n`` weight rows and ``block_m`` rows of x and steps through K ``block_k`` elements
(several groups) at a time; per group it decodes the two nibble planes of its [block_n, group/2] bytes into
``offset + u`` (the nibble OR'd into the mantissa of ``2**7`` bf16 / ``2**10`` f16: exact, no subtraction; PTX
``prmt`` + mask + OR on byte pairs on a GPU), multiplies them as the left (register) MMA operand with the x
columns of the same half-group, and adds ``(d - (offset + z) * rs) * s`` to the f32 accumulator: the zero point,
the offset and the scale cost a few f32 ops per group and output element, nothing per weight. With
``zero_in_weight`` the planes become ``q - z`` by one packed subtract per two weights instead (exact small
integers; no row sums). f32 x: the decode subtracts the offset (exact) and the dot runs in f32.

Numerics as ``pallas_triton``'s folded-offset decode: every product ``x * (offset + u)`` is exact in f32, the scale
multiplies the group's f32 partial sum (the weight is never rounded), so the result equals the XLA reference bit
for bit on exact data and agrees to x's precision elsewhere.

Grid: one program per (N tile, M tile) pair, grouped along M, and per K split (``split_k`` > 1: f32 partial sums
added by ``tiling.finish_splits``). Ragged M: masked loads of x and a masked store.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import _dispatch, tiling
from quark_jax.kernels.int4_mm.pallas_triton import _MAGIC, decode_plane


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiles and launch parameters (powers of two); ``block_k`` is a multiple of the group size after ``fit``.

    >>> Config(block_n=128).block_k
    512
    """

    block_m: int = 16  # rows of x per program (M is masked to it)
    block_n: int = 64  # weight rows (output columns) per program
    block_k: int = 512  # K elements per loop step (block_k / group_size groups, unrolled)
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    asm: bool = True  # PTX nibble decode (CUDA GPU, 16-bit x); else jnp integer ops
    zero_in_weight: bool = False  # subtract offset + zero point from the decoded planes (exact small integers,
    # one packed subtract per two weights) instead of the row-sum term: no row-sum pass over x
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)
    inner: str = "mma"  # "mma": the decoded planes are the left MMA operand (block_m rows of x a program);
    # "fma": one row of x a program (block_m 1), f32 multiply-adds into a [block_n, group/2] tile, no tensor cores
    decode: str = "asm2"  # "asm2": PTX on 2 bytes an asm, zero point subtracted in jnp; "asm4": PTX on 4 bytes an
    # asm with the zero point subtracted inside it (one packed fma.rn per two weights; needs zero_in_weight)
    prefetch: bool = False  # load step i + 1's weight bytes before decoding step i's (a register double buffer)

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_m", "block_n", "block_k", "split_k", "num_warps", "group_m"))
        if self.inner not in ("mma", "fma"):
            raise ValueError(f"Config.inner: expected 'mma' or 'fma', got {self.inner!r}")
        if self.decode not in ("asm2", "asm4"):
            raise ValueError(f"Config.decode: expected 'asm2' or 'asm4', got {self.decode!r}")
        if (self.inner == "fma" or self.decode == "asm4") and not self.zero_in_weight:
            raise ValueError("Config: inner='fma' and decode='asm4' need zero_in_weight=True")
        if self.block_n < 16 or (self.block_m < 16 and self.inner == "mma"):
            raise ValueError(f"Config: block_m and block_n must be >= 16 (MMA tiles), got {self.block_m}, "
                             f"{self.block_n}")


# Decode tilings by M bucket and 8B shape, as measured on the H200 (session 9, helper int4dec, 2026-12-03 12:53 UTC,
# GPU kernel time, benchmarks/results/gemm_int4_candidates_h200_2026-12-03_s9.json; ``CANDIDATES`` below, names
# there): M = 1 the CUDA-core "fma_w8_n128_k512_s8" (8.3 / 22.9 / 24.8 us at 4096^2 / 4096x14336 / 14336x4096;
# the former default "wz" 11.7 / 29.4 / 29.2) except 8192^2, where "wz" stays (25.8 us, fma 31.2); M = 2..16 the
# 4-byte decode with 256-K steps and a K split of 8 ("wz4_k256_st4_s8": 28.4 / 26.8 us at 4096x14336 / 14336x4096,
# "wz" 30.0 / 29.3), at 4096^2 "wz4_n128_w8" (10.4, "wz" 12.4), at 8192^2 "wz" (27.0; 29.2). Rule: the fastest row
# of the run per (bucket, shape); a bucket's default row is the candidate fastest on most shapes.
DEFAULTS = {
    "1": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128, num_warps=8, split_k=8),
    "1@8192x8192": Config(zero_in_weight=True),
    "16": Config(zero_in_weight=True, decode="asm4", block_k=256, num_stages=4, split_k=8),
    "16@4096x4096": Config(zero_in_weight=True, decode="asm4", block_n=128, num_warps=8),
    "16@8192x8192": Config(zero_in_weight=True),
    "max": Config(zero_in_weight=True),
}
AUTO_SPLIT = {"decode": 224}


# Decode candidates (session 9, helper int4dec; benchmarks/NOTES.md "Session 9, helper int4dec"): selectable by
# name in ``bench_gemm.py --ops int4`` (rows ``pallas_nk_<name>``); all subtract the zero point from the decoded
# weight. "wz" is today's default; "wz4*" decode 4 bytes an asm with the zero point subtracted inside it; "fma*"
# run one row of x a program on CUDA-core multiply-adds (M = 1: no 16-row MMA tile of which 15 rows are padding).
CANDIDATES = {
    "wz": Config(zero_in_weight=True),
    "wz4": Config(zero_in_weight=True, decode="asm4"),
    "wz4_k256_st4": Config(zero_in_weight=True, decode="asm4", block_k=256, num_stages=4),
    "wz4_n128_k256_st4": Config(zero_in_weight=True, decode="asm4", block_n=128, block_k=256, num_stages=4),
    "wz4_n128_w8": Config(zero_in_weight=True, decode="asm4", block_n=128, num_warps=8),
    "fma": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_k=256),
    "fma_n128": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128, block_k=256),
    "fma_n32_k512": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=32),
    "fma_w8_n128_k512": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128,
                               num_warps=8),
    # more programs per SM (a K split of at least 8 / 16): more weight bytes in flight while others compute
    "fma_w8_n128_k512_s8": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128,
                                  num_warps=8, split_k=8),
    "fma_w8_n128_s16": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128,
                              num_warps=8, block_k=256, split_k=16),
    "fma_n64_s8": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_k=256, split_k=8),
    "wz4_k256_st4_s8": Config(zero_in_weight=True, decode="asm4", block_k=256, num_stages=4, split_k=8),
    # not yet measured: the defaults with the next step's bytes loaded before this step's decode
    "fma_w8_n128_k512_s8_pf": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128,
                                     num_warps=8, split_k=8, prefetch=True),
    "fma_w8_n128_k256_s8_pf": Config(zero_in_weight=True, decode="asm4", inner="fma", block_m=1, block_n=128,
                                     num_warps=8, block_k=256, split_k=8, prefetch=True),
    "wz4_k256_s8_pf": Config(zero_in_weight=True, decode="asm4", block_k=256, num_stages=4, split_k=8,
                             prefetch=True),
}


def candidate(name: str, m: int, k: int, n: int, group_size: int) -> Config:
    """``CANDIDATES[name]`` fitted to the problem with the decode K split (as :func:`default_config`).

    >>> candidate("fma", 1, 4096, 4096, 128).block_m
    1
    """
    return fit(CANDIDATES[name], m, k, n, group_size, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


def supports(k: int, n: int, group_size: int) -> bool:
    """Whether the kernel takes the shape: N a multiple of 16, the group a power of two in 32..512.

    >>> supports(4096, 14336, 128), supports(4096, 14336, 96), supports(4096, 14336, 4096)
    (True, False, False)
    """
    return n % 16 == 0 and 32 <= group_size <= 512 and group_size & (group_size - 1) == 0 and k % group_size == 0


def fit(cfg: Config, m: int, k: int, n: int, group_size: int, *, target_programs: int = 0) -> Config:
    """``cfg`` fitted to the problem: ``block_n | N``, ``block_m`` capped at M's power of two (>= 16), the K split
    grown toward ``target_programs`` (``tiling.grow_split_k``), ``block_k`` a power-of-two number of groups that
    divides a split's groups.

    >>> c = fit(Config(), 1, 4096, 4096, 128, target_programs=224); (c.block_m, c.block_n, c.block_k, c.split_k)
    (16, 64, 512, 4)
    """
    if not supports(k, n, group_size):
        raise ValueError(f"int4_mm nk kernel: needs N % 16 == 0 and a power-of-two group size in 32..512 dividing "
                         f"K, got K = {k}, N = {n}, group_size = {group_size}")
    groups = k // group_size
    block_m = 1 if cfg.inner == "fma" else min(cfg.block_m, max(16, tiling.pow2_ceil(m)))
    block_n = cfg.block_n
    while n % block_n:
        block_n //= 2
    tiles = (n // block_n) * -(-m // block_m)
    split_k = tiling.grow_split_k(cfg.split_k, tiles=tiles, groups=groups, target_programs=target_programs)
    per_step = max(cfg.block_k // group_size, 1)
    while (groups // split_k) % per_step:
        per_step //= 2
    return dataclasses.replace(cfg, block_m=block_m, block_n=block_n, block_k=per_step * group_size, split_k=split_k)


def default_config(m: int, k: int, n: int, group_size: int) -> Config:
    """``DEFAULTS``' entry for M's bucket, fitted, with the decode K split.

    >>> c = default_config(1, 14336, 4096, 128); (c.inner, c.block_m, c.block_n, c.split_k)
    ('fma', 1, 128, 8)
    """
    cfg, _ = tiling.lookup(DEFAULTS, m, k, n)
    return fit(cfg, m, k, n, group_size, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


# ---------------------------------------------------------------------------------------------- the layout

@functools.partial(jax.jit, static_argnames=("group_size", "order", "signed"))
def repack(w_packed, w_zeros=None, *, group_size: int, order: str, signed: bool):
    """Quark's int32 [K, N/8] weight (and int32 [G, N/8] zero points) -> ``(uint8 [N, K/2], int8 [G, N] or None)``
    (module docstring); the scales need no repack.

    >>> w = formats.pack_int4(jnp.arange(-8, 8).reshape(2, 8), "order")      # K = 2, N = 8
    >>> [hex(int(b)) for b in repack(w, group_size=2, order="order", signed=True)[0][:3, 0]]   # q + 8 a nibble
    ['0x80', '0x91', '0xa2']
    """
    q = formats.unpack_int4(w_packed, order, signed=signed).astype(jnp.int32) & 15  # [K, N]
    if signed:
        q = q ^ 8
    k, n = q.shape
    halves = q.T.astype(jnp.uint8).reshape(n, k // group_size, 2, group_size // 2)
    w_nk = (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(n, k // 2)
    z = None if w_zeros is None else formats.unpack_int4(w_zeros, order, signed=signed)
    return w_nk, z


@functools.partial(jax.jit, static_argnames=("group_size", "order", "signed"))
def unrepack(w_nk, z=None, *, group_size: int, order: str, signed: bool):
    """The inverse of :func:`repack`: ``(int32 [K, N/8], int32 [G, N/8] or None)`` in Quark's layout.

    >>> w = formats.pack_int4(jnp.arange(-8, 8).reshape(2, 8), "reorder")
    >>> opts = dict(group_size=2, order="reorder", signed=True)
    >>> bool((unrepack(*repack(w, **opts), **opts)[0] == w).all())
    True
    """
    n, kh = w_nk.shape
    b = w_nk.astype(jnp.int32).reshape(n, kh * 2 // group_size, 1, group_size // 2)
    u = jnp.concatenate([b & 15, b >> 4], axis=2).reshape(n, 2 * kh).T  # [K, N]
    q = u - 8 if signed else u
    return formats.pack_int4(q, order), None if z is None else formats.pack_int4(z, order)


# ---------------------------------------------------------------------------------------------- the decode

def _ptx_nibbles(high: bool, magic: int) -> str:
    """PTX: 2 packed bytes ($1, 16 bits) -> the bf16 / f16 pair ``magic | nibble`` of the low or high nibbles
    ($0): ``prmt`` spreads the bytes to bytes 0 and 2, a shift brings the high nibbles down, and the mask plus OR
    (one LOP3) writes the float bits."""
    lines = ["{", ".reg .b32 t;", "cvt.u32.u16 t, $1;", "prmt.b32 t, t, 0, 0x4140;"]
    if high:
        lines.append("shr.u32 t, t, 4;")
    lines += ["and.b32 t, t, 0x000F000F;", f"or.b32 $0, t, {magic | (magic << 16):#010x};", "}"]
    return "\n".join(lines)


def ptx_nibbles_emulated(packed_u8: np.ndarray, high: bool, magic: int) -> np.ndarray:
    """numpy model of ``_ptx_nibbles`` on uint8 bytes (last axis even): the 16-bit pattern of each element.

    >>> hex(int(ptx_nibbles_emulated(np.array([0x3A, 0x00], np.uint8), True, 0x4300)[0]))  # bf16 128 + 3
    '0x4303'
    """
    b = np.asarray(packed_u8, np.uint8).reshape(-1, 2).astype(np.int64)
    t = b[:, 0] | (b[:, 1] << 16)  # prmt 0x4140 on the zero-extended 16 bits
    if high:
        t = t >> 4
    t = (t & 0x000F000F) | (magic | (magic << 16))
    return np.stack([t & 0xFFFF, t >> 16], axis=-1).reshape(np.shape(packed_u8)).astype(np.uint16)


def decode_nibbles(packed, dtype, *, asm: bool, subtract: bool):
    """``(lo, hi)`` planes of uint8 ``packed`` as ``dtype``: ``offset + u`` (``subtract=False``; ``offset`` 128 for
    bf16, 1024 for f16, 2**23 for f32) or ``u``; ``asm``: the PTX decode (16-bit dtypes, CUDA GPU).

    >>> lo, hi = decode_nibbles(jnp.array([[0x3A, 0x01]], jnp.uint8), jnp.bfloat16, asm=False, subtract=False)
    >>> lo.astype(jnp.float32).tolist(), hi.astype(jnp.float32).tolist()
    ([[138.0, 129.0]], [[131.0, 128.0]])
    """
    if not asm:
        b = packed.astype(jnp.int32)
        return tuple(decode_plane(b, p, dtype, subtract=subtract) for p in (0, 1))
    from jax.experimental.pallas import triton as plgpu

    dtype = jnp.dtype(dtype)
    magic, _ = _MAGIC[dtype.name]
    out = [jax.ShapeDtypeStruct(packed.shape, dtype)]
    return tuple(plgpu.elementwise_inline_asm(_ptx_nibbles(high, magic), args=[packed], constraints="=r,h", pack=2,
                                              result_shape_dtypes=out)[0] for high in (False, True))


def _ptx_nibbles4(high: bool, magic: int, one: int, f16: bool, neg_zero: int | None) -> str:
    """PTX: 4 packed bytes ($2) and 4 negated ``offset + z`` ($3, $4: two 16-bit float pairs; or the one 16-bit
    pattern ``neg_zero`` as an immediate) -> 4 floats ``q - z`` ($0, $1) of the low or high nibbles: one shift
    (high), two ``prmt`` (bytes 0, 1 and 2, 3 to 16-bit lanes), two mask-and-OR (``magic | u`` = ``offset + u``) and
    two packed ``fma.rn`` ``(offset + u) * 1 - (offset + z)`` (exact: small integers)."""
    op = "fma.rn.f16x2" if f16 else "fma.rn.bf16x2"
    src = "h" if high else "$2"
    zs = ("$3", "$4") if neg_zero is None else ("nz", "nz")
    lines = ["{", ".reg .b32 h, t0, t1, one, nz;", f"mov.b32 one, {one | (one << 16):#010x};"]
    if neg_zero is not None:  # packed-float operands must be registers
        lines.append(f"mov.b32 nz, {neg_zero | (neg_zero << 16):#010x};")
    if high:
        lines.append("shr.b32 h, $2, 4;")
    lines += [f"prmt.b32 t0, {src}, 0, 0x4140;", f"prmt.b32 t1, {src}, 0, 0x4342;",
              "and.b32 t0, t0, 0x000F000F;", "and.b32 t1, t1, 0x000F000F;",
              f"or.b32 t0, t0, {magic | (magic << 16):#010x};", f"or.b32 t1, t1, {magic | (magic << 16):#010x};",
              f"{op} $0, t0, one, {zs[0]};", f"{op} $1, t1, one, {zs[1]};",
              "}"]
    return "\n".join(lines)


def ptx_nibbles4_emulated(packed_u8: np.ndarray, neg_zero: np.ndarray, high: bool, dtype) -> np.ndarray:
    """numpy model of ``_ptx_nibbles4`` (last axis a multiple of 4): the float values ``(offset + u) - (offset +
    z)`` as float64 (``neg_zero`` = ``-(offset + z)`` per element), ``offset`` 128 (bf16) or 1024 (f16).

    >>> ptx_nibbles4_emulated(np.array([0x3A, 0, 0, 0], np.uint8), np.full(4, -136.0), True, jnp.bfloat16)[0]
    np.float64(-5.0)
    """
    magic, _ = _MAGIC[jnp.dtype(dtype).name]
    b = np.asarray(packed_u8, np.uint8).reshape(-1, 4).astype(np.int64)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
    src = word >> 4 if high else word
    lanes = [(src >> (8 * i)) & 0xF for i in range(4)]  # prmt to 16-bit lanes, then the mask
    bits = np.stack(lanes, axis=-1) | magic
    vals = bits.astype(np.uint16).view(np.float16 if magic == 0x6400 else np.uint16)
    if magic != 0x6400:  # bf16 bits -> f32
        vals = (bits.astype(np.uint32) << 16).view(np.float32)
    return (vals.astype(np.float64) + np.asarray(neg_zero, np.float64).reshape(-1, 4)).reshape(np.shape(packed_u8))


def decode_nibbles4(packed, neg_zero, dtype):
    """GPU ``(lo, hi)`` planes of uint8 ``packed`` as ``dtype`` (bf16 / f16): ``q - z`` = ``(offset + u) +
    neg_zero``; ``neg_zero`` = ``-(offset + z)``: an array of ``packed``'s shape, or a Python float (symmetric int4:
    an immediate in the PTX). Inline PTX on 4 bytes an asm."""
    from jax.experimental.pallas import triton as plgpu

    dtype = jnp.dtype(dtype)
    magic, _ = _MAGIC[dtype.name]
    one = 0x3C00 if dtype == jnp.float16 else 0x3F80
    out = [jax.ShapeDtypeStruct(packed.shape, dtype)]
    if isinstance(neg_zero, float):
        imm = int(np.asarray(neg_zero, dtype).view(np.uint16))
        args, cons = [packed], "=r,=r,r"
    else:
        imm, args, cons = None, [packed, neg_zero], "=r,=r,r,r,r"
    return tuple(plgpu.elementwise_inline_asm(_ptx_nibbles4(high, magic, one, dtype == jnp.float16, imm),
                                              args=args, constraints=cons, pack=4, result_shape_dtypes=out)[0]
                 for high in (False, True))


# ---------------------------------------------------------------------------------------------- the kernel

def _kernel(x_ref, w_ref, s_ref, *rest, cfg: Config, m: int, gs: int, k_steps: int,
            n_tiles_n: int, n_tiles_m: int, zero_shift: float, has_zeros: bool, has_bias: bool, dtype, asm: bool,
            precision, out_dtype):
    rest = list(rest)
    rs_ref = None if cfg.zero_in_weight else rest.pop(0)
    z_ref = rest.pop(0) if has_zeros else None
    b_ref = rest.pop(0) if has_bias else None
    (o_ref,) = rest
    bm, gh, per_step = cfg.block_m, gs // 2, cfg.block_k // gs
    subtract = dtype == jnp.float32
    offset = 0.0 if subtract else _MAGIC[dtype.name][1]
    dims = (((1,), (1,)), ((), ()))
    m_tile, _ = tiling.grouped_program(pl.program_id(0), n_tiles_m, n_tiles_n, cfg.group_m)
    x_rows = None
    if m % bm:  # ragged last row tile: rows past M load as zeros
        x_rows = lax.broadcasted_iota(jnp.int32, (bm, gh), 0) < (m - m_tile * bm)

    def zero_plus_offset(g, dt):  # offset + z of group g as [bn, 1] (or a scalar without zero points), in dt
        zc = jnp.asarray(offset + zero_shift, dt)
        return (z_ref[g, :].astype(dt) + zc)[:, None] if has_zeros else zc

    fma = cfg.inner == "fma"
    asm4 = asm and cfg.decode == "asm4"
    bn = cfg.block_n

    def load_step(i):  # the step's packed bytes, one [bn, gh] uint8 tile a group
        return [w_ref[:, pl.ds(pl.multiple_of((i * per_step + j) * gh, gh), gh)] for j in range(per_step)]

    def planes(g, packed):  # the group's two decoded planes [bn, gh] in x's dtype: q - z (zero_in_weight) or offset + u
        if asm4:
            if not has_zeros:
                return decode_nibbles4(packed, -(offset + zero_shift), dtype)
            neg = jnp.broadcast_to(-zero_plus_offset(g, dtype), (bn, gh)).astype(dtype)
            return decode_nibbles4(packed, neg, dtype)
        lo, hi = decode_nibbles(packed, dtype, asm=asm, subtract=subtract)
        if rs_ref is None:  # (offset + u) - (offset + z) = q - z, exact in x's dtype
            zw = zero_plus_offset(g, dtype)
            lo, hi = lo - zw, hi - zw
        return lo, hi

    def step(i, acc, packed_step):
        for j in range(per_step):
            g = i * per_step + j
            kk = pl.multiple_of(g * gh, gh)
            lo, hi = planes(g, packed_step[j])
            if fma:  # one row of x: f32 products into the [bn, gh] tile, the scale per group and element
                xe = x_ref[pl.ds(0, 1), pl.ds(2 * kk, gh)].astype(jnp.float32)
                xo = x_ref[pl.ds(0, 1), pl.ds(2 * kk + gh, gh)].astype(jnp.float32)
                d = lo.astype(jnp.float32) * xe + hi.astype(jnp.float32) * xo
                acc += d * s_ref[g, :][:, None]
                continue
            xe = tiling.masked_load(x_ref.at[:, pl.ds(2 * kk, gh)], x_rows)  # the group's first half
            xo = tiling.masked_load(x_ref.at[:, pl.ds(2 * kk + gh, gh)], x_rows)
            d = lax.dot_general(lo, xe, dims, precision=precision, preferred_element_type=jnp.float32)
            d += lax.dot_general(hi, xo, dims, precision=precision, preferred_element_type=jnp.float32)
            if rs_ref is not None:  # x @ (offset + u) - rowsum(x) * (offset + z)
                d = d - zero_plus_offset(g, jnp.float32) * rs_ref[g, :][None, :]
            acc += d * s_ref[g, :][:, None]  # [bn, bm]
        return acc

    acc0 = jnp.zeros((bn, gh) if fma else (bn, bm), jnp.float32)
    acc = tiling.k_loop(k_steps, step, load_step, acc0, prefetch=cfg.prefetch, zero=pl.program_id(1) * 0)
    acc = jnp.sum(acc, axis=1)[None, :] if fma else acc.T  # [bm, bn]
    if has_bias:
        acc = acc + b_ref[...].astype(jnp.float32)[None, :]
    tiling.store_rows(o_ref, acc.astype(out_dtype), (m - m_tile * bm) if m % bm else None)


def int4_mm_nk_pallas(x, w_nk, w_scales, z=None, bias=None, *, group_size: int, signed: bool = True, out_dtype=None,
                      config=None, interpret=None):
    """Pallas W4A16 INT4 / UINT4 GEMM on the repacked weight: x [M, K] bf16/f16/f32, ``(w_nk, z) = repack(...)``
    (uint8 [N, K/2], int8 [G, N] or None; the same ``group_size``), w_scales f32 [G, N], bias [N] or None; the result of
    ``kernels.int4_mm`` on the checkpoint layout. ``config`` (a :class:`Config`) overrides the tuned tiles.

    >>> w, _ = repack(formats.pack_int4(jnp.ones((32, 16), jnp.int32), "order"), group_size=32, order="order",
    ...               signed=True)
    >>> int4_mm_nk_pallas(jnp.ones((1, 32)), w, jnp.full((1, 16), 0.5), group_size=32)[0, :2].tolist()
    [16.0, 16.0]
    """
    m, k = x.shape
    n = w_nk.shape[0]
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    cfg = default_config(m, k, n, group_size) if config is None else fit(config, m, k, n, group_size)
    asm = cfg.asm and not interpret and jnp.dtype(x.dtype).itemsize == 2
    return _nk_jit(x, w_nk, w_scales, z, bias, group_size=int(group_size), signed=bool(signed), out_dtype=out_dtype,
                   cfg=cfg, asm=asm, interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("group_size", "signed", "out_dtype", "cfg", "asm", "interpret"))
def _nk_jit(x, w_nk, w_scales, z, bias, *, group_size, signed, out_dtype, cfg, asm, interpret):
    m, k = x.shape
    n = w_nk.shape[0]
    bm, bn, splits = cfg.block_m, cfg.block_n, cfg.split_k
    groups = k // group_size
    n_tiles_m, n_tiles_n = pl.cdiv(m, bm), n // bn
    rs = None if cfg.zero_in_weight else jnp.pad(x.astype(jnp.float32).reshape(m, groups, group_size).sum(-1).T, ((0, 0), (0, n_tiles_m * bm - m)))
    dtype = jnp.dtype(x.dtype)
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    kh, g_split = k // 2 // splits, groups // splits
    fused_bias = bias is not None and splits == 1
    grid = (n_tiles_n * n_tiles_m, splits)

    def tile(pid):  # (m tile, n tile)
        return tiling.grouped_program(pid, n_tiles_m, n_tiles_n, cfg.group_m)

    in_specs = [
        pl.BlockSpec((bm, 2 * kh), lambda pid, s: (tile(pid)[0], s)),
        pl.BlockSpec((bn, kh), lambda pid, s: (tile(pid)[1], s)),
        pl.BlockSpec((g_split, bn), lambda pid, s: (s, tile(pid)[1])),
    ]
    args = [x, w_nk, w_scales]
    if rs is not None:
        in_specs.append(pl.BlockSpec((g_split, bm), lambda pid, s: (s, tile(pid)[0])))
        args.append(rs)
    if z is not None:
        in_specs.append(pl.BlockSpec((g_split, bn), lambda pid, s: (s, tile(pid)[1])))
        args.append(z)
    if fused_bias:
        in_specs.append(pl.BlockSpec((bn,), lambda pid, s: (tile(pid)[1],)))
        args.append(bias)
    out_shape, out_spec, kernel_out = tiling.split_k_output(m, n, splits=splits, block_m=bm, block_n=bn,
                                                            out_dtype=out_dtype, tile=tile)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, gs=group_size, k_steps=g_split * group_size // cfg.block_k,
                               n_tiles_n=n_tiles_n, n_tiles_m=n_tiles_m, zero_shift=8.0 if signed else 0.0,
                               has_zeros=z is not None, has_bias=fused_bias, dtype=dtype, asm=asm,
                               precision=precision, out_dtype=kernel_out)
    name = f"int4_mm_nk_{bm}x{bn}x{cfg.block_k}_g{group_size}_s{splits}"
    out = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=grid,
                             in_specs=in_specs, out_specs=out_spec)(*args)
    if splits > 1:
        out = tiling.finish_splits(out, bias, out_dtype)
    return out


__all__ = ["int4_mm_nk_pallas", "repack", "unrepack", "Config", "DEFAULTS", "default_config", "fit", "supports",
           "decode_nibbles", "ptx_nibbles_emulated", "decode_nibbles4", "ptx_nibbles4_emulated", "CANDIDATES",
           "candidate"]
