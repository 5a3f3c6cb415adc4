"""Pallas (Triton lowering) W4A4 MXFP4 decode GEMM on FP8 tensor cores: E2M1 codes re-expressed as E4M3 bytes,
the MX block scales applied per 32-K block to f32 partial sums (issue 16, benchmarks/NOTES.md "Session 10, helper
mx4fp8"); its ``Config``, named candidates (``CANDIDATES``) and ``fit``.

``y[M, N] = out(linear(qdq_mxfp4(x), dequantize_mxfp4(w_packed, w_scales), bias))`` for 1 <= M <= 16 (W4A4 only).

E2M1 -> E4M3 by bit placement (:func:`e4m3_bytes`): the code's sign goes to bit 7, its three bits (e1 e0 m) to
bits 4..2. The E4M3 value of that byte is exactly ``e2m1 * 2**-6`` for all 16 codes (the subnormal 0.5 becomes
the E4M3 subnormal 2**-7). On 32-bit words of four packed bytes this is ``((w << 2) & 0x1C1C1C1C) |
((w << 4) & 0x80808080)`` for the low nibbles and ``((w >> 2) & 0x1C1C1C1C) | (w & 0x80808080)`` for the high
ones (no bit crosses a byte), ~1 integer instruction per weight, 4 FP8 weights per register (``decode="asm"``:
that PTX; ``"jnp"``: the same on uint8 arrays, interpret mode).

Blocks as MMA columns. x is quantized in an XLA prologue (``quant.quantize_mxfp4``: its codes and E8M0 bytes,
exactly qdq_mxfp4's values; rows padded to ``mp``: M rounded up to a power of two, at least 16 / ``bks``) and
written as E4M3 code planes (even / odd K, as the weight's low / high nibbles). A group of ``32 * bks`` K elements
(``bks`` = ``Config.blocks`` MX blocks) is one MMA whose right operand is block-diagonal: column ``c = m * bks +
j`` holds row m of x restricted to MX block j of the group, zeros elsewhere (:func:`block_diagonal`; built in the
kernel from the [mp, 16 bks] planes, ``xdiag="kernel"``, or stored by the prologue, ``xdiag="hbm"``). So
``P[n, c] = w_lo @ xd_e^T + w_hi @ xd_o^T`` (two FP8 dots chained in the wgmma accumulator,
``triton_fp8_dot.fp8_dot_acc``) is, per column, the sum of exactly the 32 products of one MX block: ``2**-12``
times a multiple of 0.25 below 1152 (13 significant bits, exact in Hopper's FP8 accumulator if it keeps ~14 bits
as reported; exact in f32 off the GPU; ``Config.mma="promote"`` instead adds each K = 32 wgmma's product to f32,
so the tensor core sums only 16 products of a block: 12 bits). The epilogue of a group is one f32 multiply-add per
column: ``acc[n, c] += P[n, c] * (2**(sw[n, j] - 121) * 2**(sx[m, j] - 121))`` (= 2**12 * both E8M0 scales);
at the end ``y[m, n] = sum_j acc[n, m * bks + j]``. The scale work per weight is ``mp / 16`` f32 operations (1/16
at M = 1) instead of the bf16 kernels' per-weight scale multiply; the MMA computes ``mp * bks`` columns where
``mp`` carry data (idle tensor work, which a memory-bound decode has to spare).

``Config.xq="kernel"`` (M = 1 only; ``fit`` falls back to the prologue elsewhere) drops the prologue: each group
loads its slice of x's row (bf16, stride-2 loads of the even / odd columns), quantizes it with
:func:`quantize_pairs_e4m3` (quantize_mxfp4's bytes and codes, bit for bit) and casts it to E4M3; every program
repeats that for its K range (~4 elements a thread per group at ``block_n`` 64), saving the prologue's kernels.

Exactness: the result equals ``mxfp4_mm_xla`` (f32 accumulation) up to the order of the f32 sums when every scale
byte of w and of x's blocks is in 2..248 (every nonzero element a normal float32) and every product of a qdq'd
activation and a dequantized weight is zero or a normal float32 (``2**(sw + sx - 254)`` between 2**-124 and
2**120 covers every code); outside that range (subnormal elements or products, which backends that flush
subnormals drop anyway, or scale bytes 249..254) the results differ. A scale byte above 248 makes its factor
+inf: the output is non-finite, not silently wrong. Activations and weights of real models are far inside it.

Grid: one program per (``block_n`` weight rows, K split); each walks its K range in steps of ``unroll`` groups
(one load of the packed tile, its scale bytes and x's planes per group; Triton pipelines them, ``num_stages``).
With a K split (``split_k``, or automatic: doubling up to 16 until ``programs`` programs) each split writes f32
partial sums that XLA adds (``tiling.finish_splits``).
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
from quark_jax.kernels import _dispatch, _validate, tiling, triton_fp8_dot
from quark_jax.quant import quantize_mxfp4

MAX_M = 16
DECODES = ("asm", "jnp")
XDIAGS = ("kernel", "hbm")
XQS = ("xla", "kernel")
MMAS = ("acc", "promote")
_SCALE_BIAS = 121  # 2**(s - 121) = 2**6 * 2**(s - 127): each operand's 2**-6 from the E4M3 re-expression undone
MAX_SCALE_BYTE = 248  # 2**(248 - 121) = 2**127: the largest scale byte whose factor is a finite float32


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One tiling: ``block_n`` weight rows per program; ``cols``, the MMA columns a group aims at (``blocks`` MX
    blocks per group, by default ``cols`` / M rounded up to a power of two, at least 2; x's rows are padded to
    ``padded_rows``, so a group has ``padded_rows * blocks`` >= 16 columns and ``32 * blocks`` K elements);
    ``unroll`` groups per loop step; the K split (0: automatic, aiming at ``programs`` programs); Triton's warps /
    stages; the weight decode; where x's block-diagonal operand is built.

    >>> Config(block_n=64, cols=16).group_blocks(1), Config(block_n=64, cols=32).group_blocks(16)
    (16, 2)
    """

    block_n: int = 64
    cols: int = 16  # MMA columns (N of the wgmma) per group: mp x rows times the group's MX blocks
    unroll: int = 1  # groups per K-loop step (each its own loads)
    split_k: int = 0  # 0: automatic (programs ~ ``programs``); else K splits per N tile
    programs: int = 264  # the automatic split's target: 2 programs per SM of an H100 / H200 (132 SMs)
    num_warps: int = 4
    num_stages: int = 3
    decode: str = "asm"  # "asm" (PTX on 32-bit words, CUDA) or "jnp" (uint8 ops; interpret mode)
    xdiag: str = "kernel"  # x's block-diagonal operand: built per group in the kernel, or stored by the prologue
    blocks: int = 0  # MX blocks per group; 0: cols / (M rounded up to a power of two), at least 2 (``fit`` sets it)
    xq: str = "xla"  # x's quantization: the XLA prologue, or in the kernel per group ("kernel": M = 1 only)
    mma: str = "acc"  # "acc": both planes' FP8 dots chained in the wgmma accumulator; "promote": f32 after each wgmma

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_n", "cols", "unroll", "num_warps"))
        if self.blocks and (self.blocks < 2 or self.blocks & (self.blocks - 1)):
            raise ValueError(f"Config.blocks: expected 0 or a power of two >= 2, got {self.blocks}")
        if self.block_n < 16 or self.cols < 16:
            raise ValueError(f"Config: block_n >= 16 and cols >= 16 needed (MMA tiles), got {self.block_n}, "
                             f"{self.cols}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")
        if self.xdiag not in XDIAGS:
            raise ValueError(f"Config.xdiag: expected one of {XDIAGS}, got {self.xdiag!r}")
        if self.xq not in XQS:
            raise ValueError(f"Config.xq: expected one of {XQS}, got {self.xq!r}")
        if self.mma not in MMAS:
            raise ValueError(f"Config.mma: expected one of {MMAS}, got {self.mma!r}")
        if self.split_k < 0 or self.num_stages < 1 or self.programs < 1:
            raise ValueError(f"Config: split_k >= 0, num_stages >= 1, programs >= 1 needed, got {self.split_k}, "
                             f"{self.num_stages}, {self.programs}")

    def group_blocks(self, m: int) -> int:
        """MX blocks per group (one MMA) for M rows of x: ``blocks``, or ``cols`` / M rounded up to a power of two,
        at least 2 (the FP8 MMA's K of 32 per nibble plane)."""
        return self.blocks or max(2, self.cols // tiling.pow2_ceil(m))


# Named candidates for one GPU sweep (benchmarks/sweep_mxfp4_fp8mma.py; predictions in benchmarks/NOTES.md
# "Session 10, helper mx4fp8"). At M = 1 a 16-column group is 512 K elements (16 MX blocks, 256 packed bytes a
# row); at M = 16 it is 64 (2 blocks, 32 bytes a row, hence ``unroll``).
CANDIDATES = {
    "n64c16": Config(block_n=64, cols=16),  # M=1: 64 x 256 B = 16 KB per step (the decode GEMMs' step)
    "n128c16": Config(block_n=128, cols=16),  # M=1: 32 KB per step, half the programs
    "n64c16_s4": Config(block_n=64, cols=16, num_stages=4),
    "n64c16_p528": Config(block_n=64, cols=16, programs=528),  # K split to 4 programs per SM
    "n128c16_w8": Config(block_n=128, cols=16, num_warps=8),
    "n64c32": Config(block_n=64, cols=32),  # M=1: 1024 K per group (32 KB step); M=16: 64 K, 2x idle columns
    "n64c16_hbm": Config(block_n=64, cols=16, xdiag="hbm"),  # x's block-diagonal operand from the prologue
    "n64c16_jnp": Config(block_n=64, cols=16, decode="jnp"),  # uint8 jnp planes (if the u8 PTX does not compile)
    "n64c16_xk": Config(block_n=64, cols=16, xq="kernel"),  # M=1: x quantized per group in the kernel, no prologue
    "n128c16_xk": Config(block_n=128, cols=16, xq="kernel"),  # the same, half the programs re-quantizing x
    "n64c16_pr": Config(block_n=64, cols=16, mma="promote"),  # if the chained FP8 accumulation is not exact
    "n64c32_u4": Config(block_n=64, cols=32, unroll=4),  # M=16: 4 groups of 64 K per step (8 KB of weight)
    "n128c32_u2": Config(block_n=128, cols=32, unroll=2),
}
DEFAULT = CANDIDATES["n64c16"]


def padded_rows(m: int, blocks: int) -> int:
    """x's rows as the kernel sees them for groups of ``blocks`` MX blocks: M rounded up to a power of two, at least
    16 / ``blocks`` (the MMA's 16 columns).

    >>> [padded_rows(m, 16) for m in (1, 2, 3, 9, 16)], padded_rows(1, 2)
    ([1, 2, 4, 16, 16], 8)
    """
    if not 1 <= m <= MAX_M:
        raise ValueError(f"mxfp4 FP8-MMA decode GEMM: 1 <= M <= {MAX_M} needed, got M = {m}")
    return max(tiling.pow2_ceil(m), 16 // blocks)


def fit(cfg: Config, m: int, k: int, n: int) -> Config:
    """``cfg`` fitted to the shape: ``block_n`` halved until it divides N, ``unroll`` halved (then the group's MX
    blocks, down to 2) until the step divides K, the K split (automatic with ``split_k=0``: doubling up to 16
    while fewer than ``cfg.programs`` programs) dividing K into whole steps.

    >>> c = fit(Config(block_n=64, cols=16), 1, 4096, 4096); (c.split_k, c.blocks)  # 64 N tiles x 8 splits
    (8, 16)
    """
    if n % 16 or k % 64:
        raise ValueError(f"mxfp4 FP8-MMA decode GEMM: N = {n} must be a multiple of 16 and K = {k} of 64")
    padded_rows(m, 2)
    bn = cfg.block_n
    while n % bn:
        bn //= 2
    if bn < 16:
        raise ValueError(f"mxfp4 FP8-MMA decode GEMM: cannot tile N = {n}")
    bks, unroll = cfg.group_blocks(m), cfg.unroll
    while k % (32 * bks * unroll) and unroll > 1:
        unroll //= 2
    while k % (32 * bks) and bks > 2:
        bks //= 2
    cfg = dataclasses.replace(cfg, block_n=bn, blocks=bks, unroll=unroll)
    if cfg.xq == "kernel" and (m != 1 or padded_rows(m, bks) != 1 or cfg.xdiag == "hbm"):
        cfg = dataclasses.replace(cfg, xq="xla")  # the in-kernel quantization handles one row, built in the kernel
    step = 32 * bks * unroll
    splits = cfg.split_k
    if splits == 0:
        splits = 1
        while splits < 16 and (n // bn) * splits < cfg.programs and (k // (2 * splits)) % step == 0:
            splits *= 2
    while splits > 1 and (k // splits) % step:
        splits //= 2
    return dataclasses.replace(cfg, split_k=splits)


def e4m3_bytes(codes):
    """E4M3 bytes (uint8) of E2M1 ``codes`` (uint8, 0..15): sign to bit 7, bits 2..0 to bits 4..2; the E4M3 value
    is ``e2m1 * 2**-6``.

    >>> e4m3_bytes(jnp.arange(16, dtype=jnp.uint8)).view(jnp.float8_e4m3fn).astype(jnp.float32)[:8].tolist()
    [0.0, 0.0078125, 0.015625, 0.0234375, 0.03125, 0.046875, 0.0625, 0.09375]
    """
    return ((codes & 7) << 2) | ((codes & 8) << 4)


def e4m3_planes_jnp(packed):
    """``(lo, hi)`` E4M3 bytes (uint8 ``[..., P]``) of the low and high nibbles of packed bytes ``[..., P]``: the
    word formulas of the module docstring applied to single bytes.

    >>> [int(v[0]) for v in e4m3_planes_jnp(jnp.array([0x9F], jnp.uint8))]
    [156, 132]
    """
    lo = ((packed << 2) & 0x1C) | ((packed << 4) & 0x80)
    hi = ((packed >> 2) & 0x1C) | (packed & 0x80)
    return lo.astype(jnp.uint8), hi.astype(jnp.uint8)


_PTX_LO = ("{ .reg .b32 t<2>; shl.b32 t0, $1, 2; and.b32 t0, t0, 0x1C1C1C1C; shl.b32 t1, $1, 4; "
           "and.b32 t1, t1, 0x80808080; or.b32 $0, t0, t1; }")
_PTX_HI = ("{ .reg .b32 t<2>; shr.b32 t0, $1, 2; and.b32 t0, t0, 0x1C1C1C1C; and.b32 t1, $1, 0x80808080; "
           "or.b32 $0, t0, t1; }")


def e4m3_planes_words_np(packed_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy model of the PTX (``_PTX_LO`` / ``_PTX_HI``): the packed bytes (last axis a multiple of 4) as
    little-endian 32-bit words, the word formulas, the words back to bytes; returns the ``(lo, hi)`` uint8 planes.

    >>> [v.tolist() for v in e4m3_planes_words_np(np.array([0x9F, 0x01, 0x10, 0xFF], np.uint8))]
    [[156, 4, 0, 156], [132, 0, 4, 156]]
    """
    b = np.ascontiguousarray(packed_u8, np.uint8)
    w = b.view("<u4")
    lo = ((w << 2) & 0x1C1C1C1C) | ((w << 4) & 0x80808080)
    hi = ((w >> 2) & 0x1C1C1C1C) | (w & 0x80808080)
    return lo.astype("<u4").view(np.uint8).reshape(b.shape), hi.astype("<u4").view(np.uint8).reshape(b.shape)


def _planes_asm(packed):
    from jax.experimental.pallas import triton as plgpu

    # int8 results: Triton's inline-asm op takes signless integers only, and Pallas types a uint8 result "ui8"
    # (the H200 run of session 10 failed to parse the module with uint8 here); the bytes are bitcast back
    out = [jax.ShapeDtypeStruct(packed.shape, jnp.int8)]
    return tuple(lax.bitcast_convert_type(plgpu.elementwise_inline_asm(
        asm, args=[packed], constraints="=r,r", pack=4, result_shape_dtypes=out)[0], jnp.uint8)
        for asm in (_PTX_LO, _PTX_HI))


def block_diagonal(planes, bks: int, *, asm: bool = False):
    """x's block-diagonal operand of one group: ``planes`` [mp, G] (E4M3 bytes of one nibble plane, G = 16 * bks
    packed columns) -> [mp * bks, G], row ``m * bks + j`` = row m with every column outside MX block j (columns
    16j..16j+15) zeroed. ``asm`` (CUDA only): the zeroing as one PTX ``and.b32`` per 4 bytes with a 0xFF / 0x00
    byte mask (loop-invariant), instead of a select per byte.

    >>> block_diagonal(jnp.arange(1, 33, dtype=jnp.uint8)[None], 2)[:, 14:18].tolist()
    [[15, 16, 0, 0], [0, 0, 17, 18]]
    """
    mp, g = planes.shape
    shape = (bks, g) if mp == 1 else (mp, bks, g)
    rows = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 2)
    cols = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) // 16
    full = jnp.broadcast_to(planes if mp == 1 else planes[:, None, :], shape)
    if asm:
        from jax.experimental.pallas import triton as plgpu

        mask = jnp.where(rows == cols, jnp.uint8(0xFF), jnp.uint8(0))
        [out] = plgpu.elementwise_inline_asm("and.b32 $0, $1, $2;", args=[full, mask], constraints="=r,r,r", pack=4,
                                             result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.int8)])
        out = lax.bitcast_convert_type(out, jnp.uint8)  # int8 result: see _planes_asm
    else:
        out = jnp.where(rows == cols, full, jnp.zeros((), planes.dtype))
    return out.reshape(mp * bks, g)


def _scale_f32(sbytes_i32):
    """float32 ``2**(s - 121)`` (bit pattern) of scale bytes 0..248; +inf above (out of the exact range: loud)."""
    field = jnp.minimum(sbytes_i32 + (127 - _SCALE_BIAS), 255)
    return lax.bitcast_convert_type((field << 23).astype(jnp.uint32), jnp.float32)


def prologue(x, *, mp: int, bks: int, xdiag: str):
    """XLA pass before the kernel: x [M, K] -> ``(xe, xo, fx)``. ``xe`` / ``xo``: E4M3 bytes of the even / odd K
    elements of ``quantize_mxfp4(x)`` (rows padded with zeros to ``mp``), uint8 [mp, K/2], or with
    ``xdiag="hbm"`` already block-diagonal per group, [mp * bks, K/2]; ``fx``: float32 [K / (32 bks), mp * bks],
    ``fx[g, m * bks + j] = 2**(sx - 121)`` of row m's MX block ``g * bks + j``.

    >>> xe, xo, fx = prologue(jnp.full((1, 64), 3.0), mp=1, bks=2, xdiag="kernel")
    >>> xe.shape, int(xe[0, 0]), fx.tolist()  # 3.0 = 6 (code 7, E4M3 byte 0x1C) * 2**-1 (byte 126): 2**(126 - 121)
    ((1, 32), 28, [[32.0, 32.0]])
    """
    m, k = x.shape
    packed, sx = quantize_mxfp4(x)
    packed = jnp.pad(packed, ((0, mp - m), (0, 0)))
    sx = jnp.pad(sx, ((0, mp - m), (0, 0))).astype(jnp.int32)
    xe, xo = e4m3_planes_jnp(packed)
    groups = k // (32 * bks)
    fx = _scale_f32(sx).reshape(mp, groups, bks).transpose(1, 0, 2).reshape(groups, mp * bks)
    if xdiag == "hbm":
        def diag(p):
            cols = (jnp.arange(k // 2) // 16) % bks
            keep = cols[None, None, :] == jnp.arange(bks)[None, :, None]
            return jnp.where(keep, p[:, None, :], jnp.uint8(0)).reshape(mp * bks, k // 2)

        xe, xo = diag(xe), diag(xo)
    return xe, xo, fx


_F32_EXP_MASK = 0x7F800000
_EVEN_ROUND_ADD = 1 << 21  # quant.mxfp4: "even" rounding of the block amax
_SIGN = 0x80000000


def _u32(v):
    return lax.bitcast_convert_type(v, jnp.uint32)


def _f32(bits):
    return lax.bitcast_convert_type(bits, jnp.float32)


def quantize_pairs_e4m3(xe, xo):
    """MXFP4 quantization of rows given as their even / odd columns ``xe``, ``xo`` (float32 [rows, K/2], K a
    multiple of 32; MX block b = columns 16b..16b+15 of both), in ops the Triton lowering has: ``(qe, qo, s)``,
    ``qe`` / ``qo`` the E2M1 values times 2**-6 (float32, each exactly an E4M3 value, the sign of x kept) and ``s``
    the E8M0 bytes (int32 [rows, K/32]), the same bytes and codes as ``quant.quantize_mxfp4`` (its "even" amax
    rounding by bit pattern, the division by the scale as a multiply by 2**(127 - s), E2M1 rounding half to even,
    saturation at 6).

    >>> x = jnp.concatenate([jnp.array([0.25, 0.75, 1.25, 1.75, 5.0]), jnp.zeros(27)])[None]
    >>> qe, qo, s = quantize_pairs_e4m3(x[:, 0::2], x[:, 1::2])
    >>> (qe[0, :3] * 64).tolist(), (qo[0, :2] * 64).tolist(), s.tolist()
    ([0.0, 1.0, 4.0], [1.0, 2.0], [[127]])
    """
    rows, half = xe.shape
    nb = half // 16
    ae, ao = jnp.abs(xe).reshape(rows, nb, 16), jnp.abs(xo).reshape(rows, nb, 16)
    amax = jnp.max(jnp.maximum(ae, ao), axis=2)  # [rows, nb]
    biased = (((_u32(amax) + jnp.uint32(_EVEN_ROUND_ADD)) & jnp.uint32(_F32_EXP_MASK)) >> 23).astype(jnp.int32)
    s = jnp.clip(biased - 2, 0, 254)
    inv = _f32(jnp.clip(254 - s, 0, 254).astype(jnp.uint32) << 23)[:, :, None]  # 2**(127 - s)

    def one(v):
        vb = v.reshape(rows, nb, 16)
        a = jnp.minimum(jnp.abs(vb * inv), jnp.float32(formats.E2M1_MAX))
        magic = jnp.where(a < 2.0, jnp.float32(2.0 ** 22), jnp.where(a < 4.0, jnp.float32(2.0 ** 23),
                                                                      jnp.float32(2.0 ** 24)))
        r = ((a + magic) - magic) * jnp.float32(2.0 ** -6)  # float32 addition rounds half to even
        return _f32(_u32(r) | (_u32(vb) & jnp.uint32(_SIGN))).reshape(rows, half)

    return one(xe), one(xo), s


def _kernel(*refs, m: int, k: int, mp: int, cfg: Config, has_bias: bool, partial: bool, out_dtype,
            interpret: bool):
    if cfg.xq == "kernel":
        x_ref, w_ref, s_ref, *rest = refs
    else:
        xe_ref, xo_ref, fx_ref, w_ref, s_ref, *rest = refs
    b_ref = rest[0] if has_bias else None
    o_ref = rest[-1]
    bn, bks = cfg.block_n, cfg.blocks
    gh = bks * formats.MX_BLOCK_SIZE // 2  # packed bytes per group
    c_used = mp * bks  # columns of the block-diagonal operand (>= 16)
    pid_n, split = pl.program_id(0), pl.program_id(1)
    c0 = pl.multiple_of(pid_n * bn, bn)
    kh_len = k // 2 // cfg.split_k  # packed bytes per split
    steps = kh_len // (gh * cfg.unroll)
    f8 = jnp.float8_e4m3fn
    asm = cfg.decode == "asm"  # PTX for the weight planes and for x's block mask (CUDA); else jnp ops

    def load_x(j0, parity):  # x's columns 2 j + parity for the group's packed bytes j (one row)
        if interpret:  # interpret mode has no strided loads: the contiguous slice, then its parity's columns
            return x_ref[pl.ds(0, 1), pl.ds(2 * j0, 2 * gh)].reshape(1, gh, 2)[:, :, parity].astype(jnp.float32)
        return x_ref[pl.ds(0, 1), pl.ds(2 * j0 + parity, gh, stride=2)].astype(jnp.float32)

    def group(j0, acc):
        packed = w_ref[pl.ds(c0, bn), pl.ds(j0, gh)]
        sw = s_ref[pl.ds(c0, bn), pl.ds(j0 // 16, bks)].astype(jnp.int32)
        lo, hi = e4m3_planes_jnp(packed) if cfg.decode == "jnp" else _planes_asm(packed)
        if cfg.xq == "kernel":  # one row: its even / odd columns, quantized to E4M3 bytes here
            qe, qo, sx = quantize_pairs_e4m3(load_x(j0, 0), load_x(j0, 1))
            xde, xdo = (block_diagonal(lax.bitcast_convert_type(q.astype(f8), jnp.uint8), bks, asm=asm)
                        for q in (qe, qo))
            fx = _scale_f32(sx)  # [1, bks]
        elif cfg.xdiag == "hbm":
            xde, xdo = (r[pl.ds(0, c_used), pl.ds(j0, gh)] for r in (xe_ref, xo_ref))
        else:
            xde, xdo = (block_diagonal(r[pl.ds(0, mp), pl.ds(j0, gh)], bks, asm=asm) for r in (xe_ref, xo_ref))
        as8 = functools.partial(lax.bitcast_convert_type, new_dtype=f8)
        if cfg.mma == "promote":  # f32 promotion after every K = 32 wgmma: 16-product sums in the FP8 accumulator
            p = (triton_fp8_dot.fp8_dot(as8(lo), as8(xde), promote=32)
                 + triton_fp8_dot.fp8_dot(as8(hi), as8(xdo), promote=32))
        else:  # one accumulator chain: each column's 32 products of its MX block summed by the tensor core
            p = triton_fp8_dot.fp8_dot_acc(as8(lo), as8(xde), jnp.zeros((bn, c_used), jnp.float32))
            p = triton_fp8_dot.fp8_dot_acc(as8(hi), as8(xdo), p)
        fw = _scale_f32(sw)  # [bn, bks]
        if mp > 1:
            fw = jnp.broadcast_to(fw[:, None, :], (bn, mp, bks)).reshape(bn, c_used)
        if cfg.xq != "kernel":
            fx = fx_ref[pl.ds(j0 // gh, 1), :]  # [1, c_used]
        return acc + p * (fw * fx)

    def body(i, acc):
        for u in range(cfg.unroll):
            j0 = pl.multiple_of(split * kh_len + (i * cfg.unroll + u) * gh, gh)
            acc = group(j0, acc)
        return acc

    acc = lax.fori_loop(0, steps, body, jnp.zeros((bn, c_used), jnp.float32))
    y = acc.reshape(bn, mp, bks).sum(axis=2).T  # [mp, bn]: each row's MX-block columns added
    from jax.experimental.pallas import triton as plgpu

    mask = None if m == mp else lax.broadcasted_iota(jnp.int32, (mp, bn), 0) < m
    if partial:
        plgpu.store(o_ref.at[split, pl.ds(0, mp), pl.ds(c0, bn)], y, mask=mask)
        return
    if has_bias:
        y = y + b_ref[pl.ds(c0, bn)].astype(jnp.float32)[None, :]
    plgpu.store(o_ref.at[pl.ds(0, mp), pl.ds(c0, bn)], y.astype(out_dtype), mask=mask)


def supported(x_dtype, m: int, k: int, n: int) -> bool:
    """Whether :func:`mxfp4_mm_fp8mma` takes the operands: float x (bf16 / f16 / f32), 1 <= M <= 16, N a multiple
    of 16, K of 64.

    >>> supported(jnp.bfloat16, 1, 4096, 14336), supported(jnp.bfloat16, 17, 4096, 14336)
    (True, False)
    """
    return (jnp.issubdtype(x_dtype, jnp.floating) and 1 <= m <= MAX_M and n % 16 == 0 and k % 64 == 0)


def mxfp4_mm_fp8mma(x, w_packed, w_scales, bias=None, *, out_dtype=None, config=None, interpret=None):
    """W4A4 MXFP4 decode GEMM on FP8 tensor cores: ``out(linear(qdq_mxfp4(x), dequantize_mxfp4(w_packed,
    w_scales), bias))`` with f32 accumulation, for 1 <= M <= 16 (see the module docstring for the method and the
    scale range in which it equals the XLA reference up to the order of f32 sums).

    Args:
      x: [M, K] float activations (quantize-dequantized to MXFP4 here: W4A4 only), 1 <= M <= 16, K % 64 == 0.
      w_packed: [N, K/2] uint8 (element 2j in the low nibble); N a multiple of 16.
      w_scales: [N, K/32] uint8 E8M0 bytes (exact for bytes 2..``MAX_SCALE_BYTE``).
      bias: optional [N], added in f32.
      out_dtype: default x.dtype. config: a :class:`Config` (fitted to the shape) or a name of ``CANDIDATES``;
        None: ``DEFAULT``. interpret: Pallas interpret mode (None: unless on a CUDA GPU; it uses the jnp decode).

    >>> w = jnp.full((16, 32), 0x22, jnp.uint8); s = jnp.full((16, 2), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm_fp8mma(jnp.ones((1, 64)), w, s)[0, :2].tolist()
    [64.0, 64.0]
    """
    m, k = x.shape
    n = w_packed.shape[0]
    if not supported(x.dtype, m, k, n):
        raise ValueError(f"mxfp4_mm_fp8mma: needs float x with 1 <= M <= {MAX_M}, N % 16 == 0, K % 64 == 0; got "
                         f"{x.dtype} x of shape {tuple(x.shape)}, N = {n}")
    _validate.packed_shape("w_packed", w_packed, (n, k // 2), k)
    _validate.packed_shape("w_scales", w_scales, (n, k // formats.MX_BLOCK_SIZE), k)
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else bool(interpret)
    if isinstance(config, str):
        config = CANDIDATES[config]
    cfg = fit(DEFAULT if config is None else config, m, k, n)
    if interpret:
        cfg = dataclasses.replace(cfg, decode="jnp")  # the inline PTX needs a CUDA GPU
    return _fp8mma_jit(x, w_packed, w_scales, bias, out_dtype=out_dtype, cfg=cfg, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("out_dtype", "cfg", "interpret"))
def _fp8mma_jit(x, w_packed, w_scales, bias, *, out_dtype, cfg, interpret):
    m, k = x.shape
    n = w_packed.shape[0]
    bks = cfg.blocks
    mp = padded_rows(m, bks)
    x_ops = [x] if cfg.xq == "kernel" else list(prologue(x, mp=mp, bks=bks, xdiag=cfg.xdiag))
    partial = cfg.split_k > 1
    has_bias = bias is not None and not partial
    out_shape = (jax.ShapeDtypeStruct((cfg.split_k, m, n), jnp.float32) if partial
                 else jax.ShapeDtypeStruct((m, n), out_dtype))
    kernel = functools.partial(_kernel, m=m, k=k, mp=mp, cfg=cfg, has_bias=has_bias, partial=partial,
                               out_dtype=out_dtype, interpret=interpret)
    operands = x_ops + [w_packed, w_scales] + ([bias] if has_bias else [])
    name = f"mxfp4_fp8mma_{cfg.block_n}c{cfg.cols}u{cfg.unroll}_s{cfg.split_k}_{cfg.xdiag}_x{cfg.xq}"
    y = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape,
                           grid=(n // cfg.block_n, cfg.split_k))(*operands)
    return tiling.finish_splits(y, bias, out_dtype) if partial else y


__all__ = ["mxfp4_mm_fp8mma", "Config", "CANDIDATES", "DEFAULT", "fit", "supported", "padded_rows", "prologue",
           "quantize_pairs_e4m3",
           "e4m3_bytes", "e4m3_planes_jnp", "e4m3_planes_words_np", "block_diagonal", "MAX_M", "MAX_SCALE_BYTE"]
