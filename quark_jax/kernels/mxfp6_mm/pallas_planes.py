"""Pallas (Triton lowering) MXFP6 decode kernel on a load-time repacked weight: the 6-bit codes split into a 4-bit
and a 2-bit plane (still 6 bits a weight, 6.25 with the scales), so no 24-bit word is assembled; with the repack,
its inverse, its ``Config`` and candidates.

**Layout** (:func:`repack`, per weight row n and chunk of 128 K elements ``c``, code ``q[n, 128 c + e]``):
``hi`` uint8 [N, K/2]: byte ``64 c + j`` (j < 64) holds ``q[128 c + j] >> 2`` in its low and ``q[128 c + 64 + j]
>> 2`` in its high nibble; ``lo`` uint8 [N, K/4]: byte ``32 c + j`` (j < 32) holds ``q[128 c + 32 p + j] & 3`` in
bits ``2p, 2p + 1`` (p = 0..3); the E8M0 scales transposed, uint8 [K/32, N] (one contiguous row a 32-block).
Quarter ``p`` of a chunk (K elements ``32 p .. 32 p + 31``, exactly one scale block) is then one 32-byte slice of
``hi`` (nibble ``p // 2`` of bytes ``32 (p % 2) + j``) and the chunk's 32 ``lo`` bytes, both full-width loads.
:func:`unrepack` is the exact inverse (a test round-trips every code).

**Decode** (bf16 x on a CUDA GPU, inline PTX on 4 codes an asm): shift and mask each plane, OR them into one code
byte, ``prmt`` the bytes into the high bytes of 16-bit lanes, shift and mask the magnitude into bf16's exponent
and mantissa fields (the exponent field = the code's exponent: the bf16 value is ``v * 2**(bias - 127)``, a
subnormal for the code's subnormals), the sign into bit 15, then two packed ``fma.rn.bf16x2`` (times ``2**(127 -
bias)``, then times the block scale ``2**(E - 127)`` as a bf16, 2**-127 being its subnormal 0x0040): every
product is exact up to bf16's range (at most 4 significant bits, the smallest 2**-131 above bf16's 2**-133), so
the weight equals the reference's dequantized bf16 weight bit for bit, E8M0 byte 255 giving NaN as there. Elsewhere
(interpret mode, f16 / f32 x) the codes are decoded with ``pallas_triton.decode_codes`` and the scale applied in
f32 (``quant.apply_e8m0_scale``), then rounded to x's dtype: the reference's weight. The product: ``inner="mma"``
(the weight the left MMA operand, 16 rows of x) or ``"fma"`` (one row of x a program, f32 multiply-adds into a
[block_n, 32] tile summed once at the end).

Grid, K split and ragged M as ``pallas_triton``. Result: the reference's up to the f32 summation order.
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
from quark_jax.kernels.mxfp6_mm.pallas_triton import decode_codes
from quark_jax.quant import apply_e8m0_scale

CHUNK = 128  # K elements of one hi / lo chunk (four 32-element scale blocks)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiles and launch parameters (powers of two); ``block_k`` a multiple of 128 (whole chunks).

    >>> Config(inner="fma", block_m=1).block_k // 128   # chunks per K step
    2
    """

    block_m: int = 16  # rows of x per program (1 with inner="fma")
    block_n: int = 64  # weight rows per program
    block_k: int = 256  # K elements per loop step
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums summed by XLA)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)
    inner: str = "mma"  # "mma" (tensor cores, block_m >= 16) or "fma" (one row of x, block_m 1)
    asm: bool = True  # the PTX decode (bf16 x on a CUDA GPU); else jnp integer / f32 ops
    prefetch: bool = False  # load step i + 1's weight bytes before decoding step i's (a register double buffer)

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_m", "block_n", "block_k", "split_k", "num_warps", "group_m"))
        if self.inner not in ("mma", "fma"):
            raise ValueError(f"Config.inner: expected 'mma' or 'fma', got {self.inner!r}")
        if self.block_n < 16 or self.block_k < CHUNK or (self.inner == "mma" and self.block_m < 16):
            raise ValueError(f"Config: block_n >= 16, block_k >= {CHUNK} and (mma) block_m >= 16, got "
                             f"{self.block_m}, {self.block_n}, {self.block_k}")


CANDIDATES = {  # selectable by name in bench_gemm.py --ops mxfp6 (rows ``planes_<name>``); NOTES session 9 int4dec
    "mma": Config(),
    "mma_k512": Config(block_k=512),
    "mma_n128_st4": Config(block_n=128, num_stages=4),
    "mma_w8_n128": Config(block_n=128, block_k=256, num_warps=8),
    "fma": Config(inner="fma", block_m=1),
    "fma_n128": Config(inner="fma", block_m=1, block_n=128),
    "fma_n32": Config(inner="fma", block_m=1, block_n=32, block_k=512),
    # more programs per SM (a K split of at least 8): more weight bytes in flight while others compute
    "mma_s8": Config(split_k=8),
    "mma_k512_s8": Config(block_k=512, split_k=8),
    "fma_n128_s8": Config(inner="fma", block_m=1, block_n=128, split_k=8),
    "fma_w8_n128_s8": Config(inner="fma", block_m=1, block_n=128, num_warps=8, split_k=8),
    # not yet measured: the defaults with the next step's bytes loaded before this step's decode
    "fma_w8_n128_s8_pf": Config(inner="fma", block_m=1, block_n=128, num_warps=8, split_k=8, prefetch=True),
    "mma_k512_s8_pf": Config(block_k=512, split_k=8, prefetch=True),
}
# Measured on the H200 (session 9, helper int4dec, 2026-12-03 12:54 UTC, GPU kernel time,
# benchmarks/results/gemm_mxfp6_planes_h200_2026-12-03_s9.json): M = 1 "fma_w8_n128_s8" fastest on all four 8B shapes
# (13.7 / 40.0 / 42.2 / 46.2 us at 4096^2 / 4096x14336 / 8192^2 / 14336x4096; the checkpoint-layout kernel 34.0 /
# 94.6 / 121.0 / 107.5); M = 2..16 "mma_k512_s8" (16.7 us at 4096^2, the only M = 16 shape the run reached).
DEFAULTS = {"1": CANDIDATES["fma_w8_n128_s8"], "16": CANDIDATES["mma_k512_s8"], "max": CANDIDATES["mma"]}
AUTO_SPLIT = {"decode": 224, "small": 224}


def supports(k: int, n: int) -> bool:
    """Whether the kernel takes the shape: K a multiple of 128, N of 16.

    >>> supports(4096, 14336), supports(4160, 14336)
    (True, False)
    """
    return k % CHUNK == 0 and n % 16 == 0


def fit(cfg: Config, m: int, k: int, n: int, *, target_programs: int = 0) -> Config:
    """``cfg`` fitted: ``block_n | N``, ``block_m`` 1 (fma) or capped at M's power of two (>= 16), the K split grown
    toward ``target_programs`` (up to 8, whole chunks), ``block_k`` whole chunks dividing a split.

    >>> c = fit(Config(), 1, 4096, 4096, target_programs=224); (c.block_m, c.block_n, c.block_k, c.split_k)
    (16, 64, 256, 4)
    """
    if not supports(k, n):
        raise ValueError(f"mxfp6_mm planes kernel: needs K % {CHUNK} == 0 and N % 16 == 0, got K = {k}, N = {n}")
    block_m = 1 if cfg.inner == "fma" else min(cfg.block_m, max(16, tiling.pow2_ceil(m)))
    block_n = cfg.block_n
    while n % block_n:
        block_n //= 2
    chunks = k // CHUNK
    tiles = (n // block_n) * -(-m // block_m)
    split_k = tiling.grow_split_k(cfg.split_k, tiles=tiles, groups=chunks, target_programs=target_programs)
    per_step = max(cfg.block_k // CHUNK, 1)
    while (chunks // split_k) % per_step:
        per_step //= 2
    return dataclasses.replace(cfg, block_m=block_m, block_n=block_n, block_k=per_step * CHUNK, split_k=split_k)


def default_config(m: int, k: int, n: int) -> Config:
    """``DEFAULTS``' entry for M's bucket, fitted, with the class's K split.

    >>> c = default_config(1, 14336, 4096); (c.inner, c.block_n, c.split_k)
    ('fma', 128, 8)
    """
    cfg, _ = tiling.lookup(DEFAULTS, m, k, n)
    return fit(cfg, m, k, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


def candidate(name: str, m: int, k: int, n: int) -> Config:
    """``CANDIDATES[name]`` fitted with the class's K split.

    >>> candidate("fma", 1, 4096, 4096).block_m
    1
    """
    return fit(CANDIDATES[name], m, k, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


# ---------------------------------------------------------------------------------------------- the layout

@jax.jit
def repack(w_packed, w_scales):
    """The checkpoint's ``(uint8 [N, 3K/4] FP6, uint8 [N, K/32] E8M0)`` -> ``(hi uint8 [N, K/2], lo uint8 [N, K/4],
    scales uint8 [K/32, N])`` (module docstring); K a multiple of 128.

    >>> codes = jnp.arange(128, dtype=jnp.uint8)[None] % 64
    >>> hi, lo, s = repack(formats.pack_fp6(codes), jnp.full((1, 4), 127, jnp.uint8))
    >>> hex(int(hi[0, 5])), hex(int(lo[0, 1])), s.shape  # codes 5, 69 % 64 (>> 2: 1, 1); 1, 33, 65, 97 (& 3: 1)
    ('0x11', '0x55', (4, 1))
    """
    q = formats.unpack_fp6(w_packed)  # [N, K] uint8
    n, k = q.shape
    c = q.reshape(n, k // CHUNK, 2, 64)
    hi = ((c[:, :, 0] >> 2) | ((c[:, :, 1] >> 2) << 4)).reshape(n, k // 2)
    two = (q & 3).reshape(n, k // CHUNK, 4, 32)
    lo = (two[:, :, 0] | (two[:, :, 1] << 2) | (two[:, :, 2] << 4) | (two[:, :, 3] << 6)).reshape(n, k // 4)
    return hi.astype(jnp.uint8), lo.astype(jnp.uint8), w_scales.T


@jax.jit
def unrepack(hi, lo, scales_t):
    """The exact inverse of :func:`repack`: ``(uint8 [N, 3K/4], uint8 [N, K/32])`` in the checkpoint layout.

    >>> w = formats.pack_fp6(jnp.arange(256, dtype=jnp.uint8)[None] % 64); s = jnp.ones((1, 8), jnp.uint8)
    >>> w2, s2 = unrepack(*repack(w, s)); bool((w2 == w).all() & (s2 == s).all())
    True
    """
    n, kh = hi.shape
    k = 2 * kh
    h = hi.reshape(n, k // CHUNK, 1, 64)
    nib = jnp.concatenate([h & 15, h >> 4], axis=2).reshape(n, k // CHUNK, 4, 32)
    b = lo.reshape(n, k // CHUNK, 1, 32)
    two = jnp.concatenate([(b >> (2 * p)) & 3 for p in range(4)], axis=2)
    q = ((nib << 2) | two).reshape(n, k).astype(jnp.uint8)
    return formats.pack_fp6(q), scales_t.T


# ---------------------------------------------------------------------------------------------- the decode

_MAG = {"fp6_e2m3": (4, 0x01F001F0, 0x7E80), "fp6_e3m2": (3, 0x03E003E0, 0x7D80)}
# element -> (right shift of the code's magnitude from lane bits 8..12, its mask, bf16x2 2**(127 - bias))


def _ptx_quarter(p: int, element: str) -> str:
    """PTX: 4 nibble bytes ($2), 4 two-bit bytes ($3), 4 bf16 block scales ($4, $5) -> 4 bf16 weights ($0, $1) of
    quarter ``p`` (module docstring)."""
    shift, mask, k2 = _MAG[element]
    lines = ["{", ".reg .b32 n, t, c, a0, a1, m0, m1, s0, s1, k2, nz;", f"mov.b32 k2, {k2 | (k2 << 16):#010x};",
             "mov.b32 nz, 0x80008000;",
             "shl.b32 n, $2, 2;" if p < 2 else "shr.b32 n, $2, 2;", "and.b32 n, n, 0x3C3C3C3C;",
             f"shr.b32 t, $3, {2 * p};" if p else "mov.b32 t, $3;", "and.b32 t, t, 0x03030303;",
             "or.b32 c, n, t;", "prmt.b32 a0, c, 0, 0x1404;", "prmt.b32 a1, c, 0, 0x3424;"]
    for a, mm, s in (("a0", "m0", "s0"), ("a1", "m1", "s1")):
        lines += [f"shr.b32 {mm}, {a}, {shift};", f"and.b32 {mm}, {mm}, {mask:#010x};", f"shl.b32 {s}, {a}, 2;",
                  f"and.b32 {s}, {s}, 0x80008000;", f"or.b32 {mm}, {mm}, {s};",
                  f"fma.rn.bf16x2 {mm}, {mm}, k2, nz;"]
    lines += ["fma.rn.bf16x2 $0, m0, $4, nz;", "fma.rn.bf16x2 $1, m1, $5, nz;", "}"]
    return "\n".join(lines)


def ptx_quarter_bits_emulated(hi_u8, lo_u8, p: int, element: str) -> np.ndarray:
    """numpy model of ``_ptx_quarter`` up to its multiplies (last axis a multiple of 4): the bf16 bit patterns
    (uint16) of ``v * 2**(bias - 127)`` per code.

    >>> hex(int(ptx_quarter_bits_emulated(np.array([0x0F] * 4, np.uint8), np.zeros(4, np.uint8), 0, "fp6_e2m3")[0]))
    '0x81c0'
    """
    shift, mask, _ = _MAG[element]
    h = np.asarray(hi_u8, np.uint8).reshape(-1, 4).astype(np.int64)
    lb = np.asarray(lo_u8, np.uint8).reshape(-1, 4).astype(np.int64)
    word = lambda b: b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)  # noqa: E731
    n = ((word(h) << 2) if p < 2 else (word(h) >> 2)) & 0x3C3C3C3C
    c = n | ((word(lb) >> (2 * p)) & 0x03030303)
    out = []
    for i in range(4):  # the prmt puts code byte i into the high byte of a 16-bit lane
        a = ((c >> (8 * i)) & 0xFF) << 8
        out.append(((a >> shift) & (mask & 0xFFFF)) | ((a << 2) & 0x8000))
    return np.stack(out, axis=-1).reshape(np.shape(hi_u8)).astype(np.uint16)


def scale_bf16(scale_bytes):
    """E8M0 bytes -> ``2**(E - 127)`` as bf16 (byte 0: the subnormal 2**-127; byte 255: NaN).

    >>> scale_bf16(jnp.array([127, 0, 255], jnp.uint8)).astype(jnp.float32).tolist()[:2] == [1.0, 2.0**-127]
    True
    """
    e = scale_bytes.astype(jnp.int32)
    bits = jnp.where(e == 0, 0x0040, jnp.where(e == 255, 0x7FC0, e << 7))
    return lax.bitcast_convert_type(bits.astype(jnp.uint16), jnp.bfloat16)


def decode_quarter(hb, lb, sb, p: int, element: str, dtype, *, asm: bool):
    """Quarter ``p`` of a chunk: ``hb`` uint8 [R, 32] (the ``hi`` bytes ``32 (p % 2) + j``), ``lb`` uint8 [R, 32]
    (the chunk's ``lo`` bytes), ``sb`` uint8 [R] (the block's E8M0 scales) -> [R, 32] dequantized weights in
    ``dtype``; ``asm``: the PTX decode (bf16, CUDA GPU).

    >>> hb = jnp.full((1, 32), 0x21, jnp.uint8); lb = jnp.full((1, 32), 0b11100100, jnp.uint8)
    >>> [float(decode_quarter(hb, lb, jnp.array([127], jnp.uint8), p, "fp6_e2m3", jnp.float32, asm=False)[0, 0])
    ...  for p in range(4)]   # codes 4, 5, 10, 11
    [0.5, 0.625, 1.25, 1.375]
    """
    if asm:
        from jax.experimental.pallas import triton as plgpu

        scale = jnp.broadcast_to(scale_bf16(sb)[:, None], hb.shape)
        out = [jax.ShapeDtypeStruct(hb.shape, jnp.bfloat16)]
        return plgpu.elementwise_inline_asm(_ptx_quarter(p, element), args=[hb, lb, scale],
                                            constraints="=r,=r,r,r,r,r", pack=4, result_shape_dtypes=out)[0]
    nib = (hb.astype(jnp.int32) >> (4 * (p // 2))) & 15
    code = (nib << 2) | ((lb.astype(jnp.int32) >> (2 * p)) & 3)
    return apply_e8m0_scale(decode_codes(code, element), sb[:, None]).astype(dtype)


# ---------------------------------------------------------------------------------------------- the kernel

def _kernel(x_ref, hi_ref, lo_ref, s_ref, *rest, cfg: Config, m: int, element: str, k_steps: int, n_tiles_n: int,
            n_tiles_m: int, dtype, precision, has_bias: bool, asm: bool, out_dtype):
    b_ref = rest[0] if has_bias else None
    o_ref = rest[-1]
    bm, bn = cfg.block_m, cfg.block_n
    chunks = cfg.block_k // CHUNK
    fma = cfg.inner == "fma"
    m_tile, _ = tiling.grouped_program(pl.program_id(0), n_tiles_m, n_tiles_n, cfg.group_m)
    x_rows = None
    if m % bm:
        x_rows = lax.broadcasted_iota(jnp.int32, (bm, 32), 0) < (m - m_tile * bm)
    dims = (((1,), (1,)), ((), ()))

    def load_step(i):  # per chunk: its lo bytes and its two 32-byte hi slices
        out = []
        for c in range(chunks):
            ch = i * chunks + c
            out.append((lo_ref[:, pl.ds(pl.multiple_of(ch * 32, 32), 32)],
                        [hi_ref[:, pl.ds(pl.multiple_of(ch * 64 + 32 * h, 32), 32)] for h in (0, 1)]))
        return out

    def step(i, acc, loaded):
        for c in range(chunks):
            ch = i * chunks + c
            lb, hbs = loaded[c]
            for p in range(4):
                w = decode_quarter(hbs[p % 2], lb, s_ref[ch * 4 + p, :], p, element, dtype, asm=asm)  # [bn, 32]
                col = pl.multiple_of(ch * CHUNK + 32 * p, 32)
                if fma:
                    acc += w.astype(jnp.float32) * x_ref[pl.ds(0, 1), pl.ds(col, 32)].astype(jnp.float32)
                else:
                    xp = tiling.masked_load(x_ref.at[:, pl.ds(col, 32)], x_rows)
                    acc += lax.dot_general(w, xp, dims, precision=precision, preferred_element_type=jnp.float32)
        return acc

    acc0 = jnp.zeros((bn, 32) if fma else (bn, bm), jnp.float32)
    acc = tiling.k_loop(k_steps, step, load_step, acc0, prefetch=cfg.prefetch, zero=pl.program_id(1) * 0)
    acc = jnp.sum(acc, axis=1)[None, :] if fma else acc.T
    if has_bias:
        acc = acc + b_ref[...].astype(jnp.float32)[None, :]
    tiling.store_rows(o_ref, acc.astype(out_dtype), m - m_tile * bm if m % bm else None)


def mxfp6_mm_planes(x, hi, lo, scales_t, bias=None, *, element: str = "fp6_e2m3", out_dtype=None, config=None,
                    interpret=None):
    """MXFP6 GEMM on the repacked layout: x [M, K] bf16/f16/f32, ``(hi, lo, scales_t) = repack(w_packed,
    w_scales)``, bias [N] or None; the result of ``kernels.mxfp6_mm`` on the checkpoint layout up to the f32
    summation order. ``config`` (a :class:`Config`) overrides the defaults.

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 128), 0.5), "fp6_e2m3")
    >>> mxfp6_mm_planes(jnp.ones((1, 128)), *repack(w, s))[0, :2].tolist()
    [64.0, 64.0]
    """
    m, k = x.shape
    n = hi.shape[0]
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    cfg = default_config(m, k, n) if config is None else fit(config, m, k, n)
    asm = cfg.asm and not interpret and jnp.dtype(x.dtype) == jnp.bfloat16
    return _planes_jit(x, hi, lo, scales_t, bias, element=element, out_dtype=out_dtype, cfg=cfg, asm=asm,
                       interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("element", "out_dtype", "cfg", "asm", "interpret"))
def _planes_jit(x, hi, lo, scales_t, bias, *, element, out_dtype, cfg, asm, interpret):
    m, k = x.shape
    n = hi.shape[0]
    bm, bn, splits = cfg.block_m, cfg.block_n, cfg.split_k
    n_tiles_m, n_tiles_n = pl.cdiv(m, bm), n // bn
    dtype = jnp.dtype(x.dtype)
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    k_split = k // splits
    fused_bias = bias is not None and splits == 1

    def tile(pid):  # (m tile, n tile)
        return tiling.grouped_program(pid, n_tiles_m, n_tiles_n, cfg.group_m)

    in_specs = [
        pl.BlockSpec((bm, k_split), lambda pid, s: (tile(pid)[0], s)),
        pl.BlockSpec((bn, k_split // 2), lambda pid, s: (tile(pid)[1], s)),
        pl.BlockSpec((bn, k_split // 4), lambda pid, s: (tile(pid)[1], s)),
        pl.BlockSpec((k_split // formats.MX_BLOCK_SIZE, bn), lambda pid, s: (s, tile(pid)[1])),
    ]
    args = [x, hi, lo, scales_t]
    if fused_bias:
        in_specs.append(pl.BlockSpec((bn,), lambda pid, s: (tile(pid)[1],)))
        args.append(bias)
    out_shape, out_spec, kernel_out = tiling.split_k_output(m, n, splits=splits, block_m=bm, block_n=bn,
                                                            out_dtype=out_dtype, tile=tile)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, element=element, k_steps=k_split // cfg.block_k,
                               n_tiles_n=n_tiles_n, n_tiles_m=n_tiles_m, dtype=dtype, precision=precision,
                               has_bias=fused_bias, asm=asm, out_dtype=kernel_out)
    name = f"mxfp6_planes_{cfg.inner}_{bm}x{bn}x{cfg.block_k}_s{splits}"
    out = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape,
                             grid=(n_tiles_n * n_tiles_m, splits), in_specs=in_specs, out_specs=out_spec)(*args)
    if splits > 1:
        out = tiling.finish_splits(out, bias, out_dtype)
    return out


__all__ = ["mxfp6_mm_planes", "repack", "unrepack", "Config", "CANDIDATES", "DEFAULTS", "default_config", "fit",
           "candidate", "supports", "decode_quarter", "scale_bf16", "ptx_quarter_bits_emulated"]
