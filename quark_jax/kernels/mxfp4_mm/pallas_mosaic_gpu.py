"""Pallas Mosaic GPU (Hopper: TMA + wgmma) MXFP4 GEMM for decode (M <= 16): W4A16, and W4A4 with the activation
quantized first by the XLA path (``qdq_mxfp4``), as the Triton kernel's entry does.

Design (one warpgroup, software-pipelined; ``impl="mosaic"``, and what ``auto`` runs at M <= 16 on Hopper: the sm90
tuning tables, where the operands qualify, ``supported``):

* grid (N / block_n, split_k); each program owns ``block_n`` weight rows and a K range;
* ``plgpu.emit_pipeline`` streams, per K step, the packed weight tile [block_n, block_k/2] (uint8, swizzled as
  wide as its rows allow: 128 bytes at block_k = 256), its E8M0 scales [block_k/32, block_n] (transposed by XLA,
  so that one MX block's scales are a contiguous row) and the even / odd columns of the activation
  [m_pad, block_k/2] (bf16, tiled 16 columns = one MX block per tile, 32-byte swizzle) by TMA through a
  ``stages``-deep shared-memory ring;
* the warpgroup loads the whole packed tile once into registers in the wgmma operand layout (a conflict-free
  swizzled load) and, per MX block (16 packed bytes = 16 even + 16 odd K elements), slices its [block_n, 16]
  bytes in registers and decodes both nibble planes to bf16: ``decode="ptx"`` (the default) runs decode.py's PTX
  on each register (prmt + shl + and + two mul.bf16x2 per 2 bytes and plane, the block scale as a bf16 row
  broadcast); ``"jnp"`` integer bit work into the float32 pattern and one multiply by the block's power-of-two
  scale (the interpreter always runs "jnp"). The planes are the *register* A operand of two K = 16 wgmmas
  against the transposed activation tiles: the decoded weight never touches shared memory;
* the f32 accumulator [block_n, m_pad] leaves by TMA as out^T (per K split); XLA sums the splits, transposes,
  adds the bias and rounds once (one fused op).

While the warpgroup decodes step i, the TMA engine already fetches steps i+1 .. i+stages-1 (the ring), so the
stream overlaps the decode; the wgmmas are asynchronous. ``consumer_warpgroups=2`` (``WARP_SPECIALIZED``) runs the
warp-specialized form instead: a producer warpgroup issues the ring's copies and two consumer warpgroups decode and
multiply one half of the block's rows each (``_mosaic_call_ws``; not picked by ``auto``: slower, NOTES session 7).

Exactness: decoded weights (E2M1 times a power of two) are exact in bf16 up to the same overflow / subnormal
rounding ``quant.dequantize_mxfp4`` makes (the scale is applied in float32 as ``quant.apply_e8m0_scale`` does,
then rounded to bf16 once), and bf16 wgmma accumulates in f32, so the result equals the XLA reference up to the
order of the f32 sums.

Testing on CPU: JAX's Mosaic GPU interpreter runs the kernel (TMA ring, barriers) but reads neither register-A
nor transposed wgmma operands; in interpret mode the same decode feeds an explicit dot carried by the pipeline.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from quark_jax import formats
from quark_jax.kernels import _dispatch, tiling
from quark_jax.kernels.mosaic_skinny import gpu_interpret_params
from quark_jax.kernels.mxfp4_mm import decode
from quark_jax.quant import qdq_mxfp4

MX_BYTES = formats.MX_BLOCK_SIZE // 2  # packed bytes per MX block (16)
MAX_M = 16
DECODES = ("jnp", "ptx", "ptx_fold", "probe")
# "ptx_fold": the PTX decode with 2**126 folded into the scale (one bf16 multiply per element instead of two),
# exact only when every scale byte is <= decode.FOLD_MAX_SCALE_BYTE (the caller checks, e.g. at load time).
# "probe": a TIMING PROBE, NOT A DECODE: each packed register becomes a bf16 pair by one integer op (wrong values,
# compiled only; interpret mode runs the real decode) to measure the kernel without the decode's ALU work.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiling of the Mosaic MXFP4 decode kernel.

    >>> Config(block_n=128, block_k=512, stages=4, split_k=2).fit(k=256, n=64)
    Config(block_n=64, block_k=128, stages=4, split_k=2, consumer_warpgroups=1, decode='jnp', step_wgmma=False)
    """

    block_n: int = 64  # weight rows per program: a power of two >= 64 (wgmma's M)
    block_k: int = 256  # K elements per pipeline step: a power of two >= 64 (two MX blocks: 32 packed bytes)
    stages: int = 4  # TMA copies in flight (the ring depth)
    split_k: int = 1  # programs along K (> 1: f32 partial sums added by XLA)
    consumer_warpgroups: int = 1  # decode + wgmma warpgroups; v1 runs one (warp specialization: NOTES)
    decode: str = "jnp"  # "jnp" (portable ops), "ptx" / "ptx_fold" (decode.py's PTX per register; compiled only)
    step_wgmma: bool = False  # one wgmma call per plane per step (one register fence), not per MX block; PTX only

    def __post_init__(self):
        for name in ("block_n", "block_k", "stages", "split_k", "consumer_warpgroups"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {v!r}")
        if self.block_n % 64 or self.block_n & (self.block_n - 1):
            raise ValueError(f"Config.block_n: expected a power of two >= 64 (wgmma rows), got {self.block_n}")
        if self.block_k < 64 or self.block_k & (self.block_k - 1):
            # the packed tile's rows are >= 32 bytes: TMA swizzles of 32, 64 or 128 bytes
            raise ValueError(f"Config.block_k: expected a power of two >= 64, got {self.block_k}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")
        if self.consumer_warpgroups not in (1, 2):
            raise ValueError(f"Config.consumer_warpgroups: expected 1 (one warpgroup) or 2 (warp-specialized: two "
                             f"consumers and a TMA producer), got {self.consumer_warpgroups}")
        if self.step_wgmma and (self.decode == "jnp" or self.consumer_warpgroups != 1):
            raise ValueError("Config.step_wgmma: needs a PTX decode (decode != 'jnp') and one warpgroup")
        if self.consumer_warpgroups == 2 and self.block_n < 128:
            raise ValueError(f"Config.block_n: two consumer warpgroups take 64 rows each, need >= 128, got "
                             f"{self.block_n}")

    def fit(self, *, k: int, n: int) -> "Config":
        """Shrink the blocks (and the K split) so that they divide (n, k); n and k multiples of 64."""
        return tiling.halve_to_divide(self, n=n, k=k, min_n=64 * self.consumer_warpgroups, min_k=64)


# The measured-best exact configuration (session 7 sweep, H200, M = 1, W4A16 on [K/32, N] scales: row
# ``mx_fold_step_split2x`` = the PTX decode, one wgmma call per plane per step, the K split doubled): 7.8 / 17.6 /
# 17.6 us at 4096x4096 / 4096x14336 / 8192x8192 against the Triton kernel's 9.7 / 20.5 / 22.5 (benchmarks/NOTES.md,
# session 7 "helper mxfp4dec"). Its decode there was the folded one ("ptx_fold"), exact only for scale bytes <=
# ``decode.FOLD_MAX_SCALE_BYTE``: ``default_config(..., fold=True)`` (the caller vouches, e.g. the MXFP4 schemes'
# load-time check); without it "ptx" (the same kernel, one more bf16 multiply per element pair: +0.2-1.6 us).
# On CPU (interpret mode) the PTX decodes run as the portable one and ``step_wgmma`` is not used.
DEFAULT = Config(decode="ptx", step_wgmma=True)
FOLDED = dataclasses.replace(DEFAULT, decode="ptx_fold")
# K split per weight shape (K, N) at decode: ~450-510 programs of 64 rows on the H200's 132 SMs (~3.5-3.9 per SM;
# the sweep's "split2x": twice the session-6 table {4096x14336: 1, 14336x4096: 4, 4096x4096: 4, 8192x8192: 2}).
# 14336x4096 was not measured at split 8 (the sweep's deadline); other shapes: ``default_config``'s heuristic, which
# gives the same splits on these four shapes.
SPLITS = {(4096, 14336): 2, (14336, 4096): 8, (4096, 4096): 8, (8192, 8192): 4}
TARGET_PROGRAMS = 384  # the heuristic doubles the K split while programs x splits stays below this


WARP_SPECIALIZED = Config(block_n=128, consumer_warpgroups=2, decode="ptx")


def default_config(k: int, n: int, *, warp_specialized: bool = False, fold: bool = False) -> Config:
    """``DEFAULT`` (``FOLDED`` with ``fold``: every scale byte of the weight is <= ``decode.FOLD_MAX_SCALE_BYTE``,
    checked by the caller; or ``WARP_SPECIALIZED``, whose CTA takes twice the rows: the same K split, as in the
    session-7 sweep, where it had twice the then single-warpgroup split) with the shape's K split (``SPLITS``, else doubled while programs x splits < ``TARGET_PROGRAMS`` and each split keeps
    >= 2 steps), fitted.

    >>> default_config(4096, 4096).split_k, default_config(4096, 4096, warp_specialized=True).split_k
    (8, 8)
    >>> default_config(4096, 4096, fold=True).decode, default_config(4096, 4096).decode
    ('ptx_fold', 'ptx')
    """
    splits = SPLITS.get((k, n))
    if splits is None:
        programs = max(n // DEFAULT.block_n, 1)
        splits = 1
        while programs * splits < TARGET_PROGRAMS and splits < 8 and k // (2 * splits) >= DEFAULT.block_k:
            splits *= 2
    base = FOLDED if fold else DEFAULT
    if warp_specialized:
        base = WARP_SPECIALIZED
    cfg = dataclasses.replace(base, split_k=splits).fit(k=k, n=n)
    if cfg.step_wgmma and cfg.block_k < 128:  # one wgmma per step was compiled and checked at block_k >= 128 only
        cfg = dataclasses.replace(cfg, step_wgmma=False)
    return cfg


def _f32_bits(bits):
    return lax.bitcast_convert_type(bits, jnp.float32)


def decode_block(codes, scale_rows):
    """One MX block's nibble codes (int32 [bn, 16], 0..15) times ``2**(s - 127)`` as float32, from the scale
    bytes as int32 [bn] already broadcast to [bn, 16] (``scale_rows``). Integer bit work on normal float32
    patterns only (no subnormal operand, so a flushing backend gives the same), then the scale applied as
    ``quant.apply_e8m0_scale`` does (byte 0 as 2**-126 then a halving).

    E2M1 magnitude m = 2..7 is the float32 pattern ``(m << 22) + bits(0.5)``, m = 1 is 0.5, 0 is 0; bit 3 the sign.

    >>> c = jnp.arange(16, dtype=jnp.int32)[None]
    >>> decode_block(c, jnp.full((1, 16), 128, jnp.int32))[0].tolist()[:8]
    [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
    """
    mag = codes & 7
    bits = jnp.where(mag >= 2, (mag << 22) + 0x3F000000, jnp.where(mag == 1, 0x3F000000, 0))
    v = _f32_bits(bits | ((codes & 8) << 28))
    s1 = _f32_bits(jnp.maximum(scale_rows, 1) << 23)  # 2**(max(s, 1) - 127), a normal float32
    half = jnp.where(scale_rows == 0, jnp.float32(0.5), jnp.float32(1.0))
    return (v * s1) * half


def _decode_planes(packed_i32, scale_rows):
    """(lo, hi) bf16 planes of int32 packed bytes [bn, 16] (even K elements in the low nibble)."""
    lo = decode_block(packed_i32 & 0xF, scale_rows).astype(jnp.bfloat16)
    hi = decode_block(packed_i32 >> 4, scale_rows).astype(jnp.bfloat16)
    return lo, hi


def _plane_code(mode: str, low_nibble: bool) -> str:
    """The inline PTX of one nibble plane for ``mode`` (see ``_ptx_planes``)."""
    if mode == "probe":
        op = "and" if low_nibble else "xor"
        return "{\n.reg .b32 q0;\ncvt.u32.u16 q0, $1;\n" + op + ".b32 $0, q0, $2;\n}"
    return decode._ptx(low_nibble, True, 2, fold=mode == "ptx_fold")


def _decode_registers(packed, scale, code):
    """The register array of one decoded plane: ``code`` (inline PTX, "=r,h,r") on each uint8 register pair of
    the FragmentedArray ``packed`` with the matching bf16x2 register of ``scale`` (same layout and shape)."""
    import numpy as np
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import llvm

    i16, i32 = ir.IntegerType.get_signless(16), ir.IntegerType.get_signless(32)
    if packed.registers.shape != scale.registers.shape:
        raise NotImplementedError(f"register arrays differ: {packed.registers.shape} vs {scale.registers.shape}")
    kinds = {(str(r.type), str(t.type)) for r, t in zip(packed.registers.flat, scale.registers.flat)}
    if kinds != {("vector<2xi8>", "vector<2xbf16>")}:
        raise NotImplementedError(f"expected 2-element registers (uint8, bf16), got {kinds}")
    regs = np.empty(packed.registers.shape, dtype=object)
    for idx, reg in np.ndenumerate(packed.registers):
        pair = llvm.bitcast(i16, reg)  # vector<2xi8> -> the two bytes
        sc = llvm.bitcast(i32, scale.registers[idx])  # vector<2xbf16> -> bf16x2
        regs[idx] = llvm.bitcast(scale.registers[idx].type, llvm.inline_asm(i32, [pair, sc], code, "=r,h,r"))
    return regs


def _ptx_planes(packed_u8, scale_bf16, mode: str = "ptx"):
    """(lo, hi) bf16 [bn, 16] of one MX block's packed bytes (uint8 [bn, 16]) and its bf16 scales broadcast to
    [bn, 16] (``decode.scale_bf16``), both in the wgmma register layout, by decode.py's PTX (``_ptx(..., scaled=
    True, pack=2)``: prmt + shl + and + two mul.bf16x2, validated on the H200 in the Triton kernel) applied to
    each register: a uint8 register holds two consecutive bytes, which decode to the two consecutive columns that
    the matching bf16 register holds in each plane. Compiled only (inline PTX: the interpreter cannot run it).
    ``mode``: "ptx", "ptx_fold" (``scale_bf16`` is then ``decode.scale_bf16_folded``), or "probe" (timing only:
    one AND of the bytes with the scale, wrong values)."""
    from jax.experimental.mosaic import gpu as mgpu

    bn = packed_u8.shape[0]
    out_ty = plgpu.ShapeDtypeStruct((bn, MX_BYTES), jnp.bfloat16, layout=plgpu.Layout.WGMMA)

    @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WGMMA, plgpu.Layout.WGMMA), return_type=(out_ty, out_ty))
    def planes(ctx, packed, scale):
        del ctx
        return tuple(mgpu.FragmentedArray(_registers=_decode_registers(packed, scale, _plane_code(mode, low)),
                                          _layout=scale.layout, _is_signed=None) for low in (True, False))

    return planes(packed_u8, scale_bf16)


def _ptx_planes_step(packed_u8, scales_bf16, mode: str):
    """(lo, hi) bf16 [bn, bkh] of a whole step's packed tile (uint8 [bn, bkh], wgmma layout) from its nb blocks'
    broadcast scales ([bn, 16] bf16 each): ``_ptx_planes`` per block, the blocks' registers put side by side
    along the layout's column-tile axis (axis 1: tiles of 8 columns, as ``FragmentedArray.__getitem__`` slices),
    so that one wgmma call (one fence) takes the whole step (``Config.step_wgmma``)."""
    import numpy as np
    from jax.experimental.mosaic import gpu as mgpu

    bn, bkh = packed_u8.shape
    out_ty = plgpu.ShapeDtypeStruct((bn, bkh), jnp.bfloat16, layout=plgpu.Layout.WGMMA)
    nb = len(scales_bf16)

    @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WGMMA,) * (nb + 1), return_type=(out_ty, out_ty))
    def planes(ctx, packed, *scales):
        del ctx
        out = []
        for low in (True, False):
            parts = [_decode_registers(packed[:, b * MX_BYTES:(b + 1) * MX_BYTES], scales[b], _plane_code(mode, low))
                     for b in range(nb)]
            regs = np.concatenate(parts, axis=1)
            if regs.shape != packed.registers.shape:
                raise NotImplementedError(f"step planes: {regs.shape} vs {packed.registers.shape}")
            out.append(mgpu.FragmentedArray(_registers=regs, _layout=scales[0].layout, _is_signed=None))
        return tuple(out)

    return planes(packed_u8, *scales_bf16)


def _tile_planes(w_smem, s_smem, *, rows: int, nb: int, mode: str, interpret: bool):
    """A step's decoded (lo, hi) bf16 planes, per MX block: [(lo_b, hi_b)] of [rows, 16] each, from the packed
    tile ref [rows, 16 nb] (swizzled) and its scale ref [nb, rows]. ``mode``: ``Config.decode`` ("jnp" in
    interpret mode)."""
    if interpret:
        packed = w_smem[...]
    else:  # one swizzled load of the whole tile in the wgmma register layout, sliced per block
        packed = plgpu.load(w_smem, (), layout=plgpu.Layout.WGMMA)
    planes = []
    for b in range(nb):
        if interpret:
            srow = s_smem[b]
        else:
            srow = plgpu.load(s_smem.at[b], (), layout=plgpu.Layout.WGMMA.reduce(1))
        block = lax.slice(packed, (0, b * MX_BYTES), (rows, (b + 1) * MX_BYTES))  # registers only
        if mode != "jnp":
            to_bf16 = decode.scale_bf16_folded if mode == "ptx_fold" else decode.scale_bf16
            sc = lax.broadcast_in_dim(to_bf16(srow), (rows, MX_BYTES), [0])
            planes.append(_ptx_planes(block, sc, mode))
        else:
            srows = lax.broadcast_in_dim(srow.astype(jnp.int32), (rows, MX_BYTES), [0])
            planes.append(_decode_planes(block.astype(jnp.int32), srows))
    return planes


def _dot_nt(a, b):
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _mosaic_call(xe, xo, w_packed, s_t, *, cfg: Config, interpret: bool):
    """out [split_k, N, m_pad] f32: the K split's partial sums of ``w @ x^T`` (see the module docstring)."""
    m_pad, kh = xe.shape
    n = w_packed.shape[0]
    bn, splits = cfg.block_n, cfg.split_k
    bkh = cfg.block_k // 2  # packed bytes (= even / odd x columns) per step
    nb = bkh // MX_BYTES  # MX blocks per step
    steps = kh // (bkh * splits)
    w_swizzle = plgpu.find_swizzle(bkh * 8)
    w_transforms = (plgpu.TilingTransform((8, w_swizzle)), plgpu.SwizzleTransform(w_swizzle))
    # the packed tile is swizzled as wide as it allows; the bf16 x tiles are tiled 16 columns wide (32-byte swizzle): one
    # column tile per MX block, so that each block's x columns are a whole wgmma operand
    x_transforms = (plgpu.TilingTransform((8, MX_BYTES)), plgpu.SwizzleTransform(2 * MX_BYTES))
    mode = "jnp" if interpret else cfg.decode  # the interpreter runs the portable decode (same values)
    tile_planes = functools.partial(_tile_planes, rows=bn, nb=nb, mode=mode, interpret=interpret)

    def body(xe_gmem, xo_gmem, w_gmem, s_gmem, out_gmem, o_smem):
        pid_n = lax.axis_index("n")
        split = lax.axis_index("k")
        k0 = split * steps
        in_specs = [
            plgpu.BlockSpec((bn, bkh), lambda kk: (pid_n, k0 + kk), transforms=w_transforms, delay_release=1),
            plgpu.BlockSpec((nb, bn), lambda kk: (k0 + kk, pid_n), delay_release=1),
            plgpu.BlockSpec((m_pad, bkh), lambda kk: (0, k0 + kk), transforms=x_transforms, delay_release=1),
            plgpu.BlockSpec((m_pad, bkh), lambda kk: (0, k0 + kk), transforms=x_transforms, delay_release=1),
        ]

        if interpret:
            # jax 0.10's GPU interpreter reads neither register-A nor transposed wgmma operands: the same decode
            # feeds an explicit dot carried by the pipeline
            def step_carry(_, w_smem, s_smem, xe_smem, xo_smem, carry):
                for b, (lo, hi) in enumerate(tile_planes(w_smem, s_smem)):
                    cols = pl.ds(b * MX_BYTES, MX_BYTES)
                    carry = carry + _dot_nt(lo, xe_smem[:, cols]) + _dot_nt(hi, xo_smem[:, cols])
                return carry

            a = plgpu.emit_pipeline(step_carry, grid=(steps,), in_specs=in_specs, max_concurrent_steps=cfg.stages,
                                    init_carry=jnp.zeros((bn, m_pad), jnp.float32))(w_gmem, s_gmem, xe_gmem,
                                                                                      xo_gmem)
        else:
            def accumulate(acc):
                def whole_step(_, w_smem, s_smem, xe_smem, xo_smem):  # cfg.step_wgmma
                    packed = plgpu.load(w_smem, (), layout=plgpu.Layout.WGMMA)
                    to_bf16 = decode.scale_bf16_folded if mode == "ptx_fold" else decode.scale_bf16
                    scs = [lax.broadcast_in_dim(to_bf16(plgpu.load(s_smem.at[b], (), layout=plgpu.Layout.WGMMA.reduce(1))),
                                                (bn, MX_BYTES), [0]) for b in range(nb)]
                    lo, hi = _ptx_planes_step(packed, scs, mode)
                    plgpu.wgmma(acc, lo, plgpu.transpose_ref(xe_smem, (1, 0)))
                    plgpu.wgmma(acc, hi, plgpu.transpose_ref(xo_smem, (1, 0)))
                    plgpu.wgmma_wait(2)  # the previous step's wgmmas (its smem slot is released after this step)

                def step(_, w_smem, s_smem, xe_smem, xo_smem):
                    for b, (lo, hi) in enumerate(tile_planes(w_smem, s_smem)):
                        cols = pl.ds(b * MX_BYTES, MX_BYTES)
                        plgpu.wgmma(acc, lo, plgpu.transpose_ref(xe_smem.at[:, cols], (1, 0)))
                        plgpu.wgmma(acc, hi, plgpu.transpose_ref(xo_smem.at[:, cols], (1, 0)))
                        plgpu.wgmma_wait(2)

                plgpu.emit_pipeline(whole_step if cfg.step_wgmma else step, grid=(steps,), in_specs=in_specs,
                                    max_concurrent_steps=cfg.stages)(w_gmem, s_gmem, xe_gmem, xo_gmem)
                plgpu.wgmma_wait(0)
                return acc[...]

            # the register accumulator gets its own scope (REGS and SMEM allocations do not mix in one scope)
            a = pl.run_scoped(accumulate, plgpu.ACC((bn, m_pad), jnp.float32))
        o_smem[...] = a
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, out_gmem.at[split, pl.ds(pid_n * bn, bn)])
        plgpu.wait_smem_to_gmem(0)

    kwargs = {"interpret": gpu_interpret_params()} if interpret else {}
    call = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((splits, n, m_pad), jnp.float32),
        scratch_types=[plgpu.SMEM((bn, m_pad), jnp.float32)],
        grid=(n // bn, splits),
        grid_names=("n", "k"),
        **kwargs,
    )
    return call(xe, xo, w_packed, s_t)


def _mosaic_call_ws(xe, xo, w_packed, s_t, *, cfg: Config, interpret: bool):
    """The warp-specialized kernel (``cfg.consumer_warpgroups == 2``): same output as ``_mosaic_call``.

    Three warpgroups per CTA: the last one only issues the TMA copies of the ring
    (``plgpu.emit_pipeline_warp_specialized``, few registers); the two consumers each decode and multiply one half
    of the block_n weight rows of every step (rows ``wg * block_n/2 ...``) against the same activation tiles, with
    their own accumulator, so one consumer's decode overlaps the other's wgmma and the copies never wait for a
    consumer's issue slot."""
    m_pad, kh = xe.shape
    n = w_packed.shape[0]
    bn, splits = cfg.block_n, cfg.split_k
    half = bn // 2
    bkh = cfg.block_k // 2
    nb = bkh // MX_BYTES
    steps = kh // (bkh * splits)
    w_swizzle = plgpu.find_swizzle(bkh * 8)
    w_transforms = (plgpu.TilingTransform((8, w_swizzle)), plgpu.SwizzleTransform(w_swizzle))
    x_transforms = (plgpu.TilingTransform((8, MX_BYTES)), plgpu.SwizzleTransform(2 * MX_BYTES))
    mode = "jnp" if interpret else cfg.decode
    tile_planes = functools.partial(_tile_planes, rows=half, nb=nb, mode=mode, interpret=interpret)

    def body(xe_gmem, xo_gmem, w_gmem, s_gmem, out_gmem, o_smem):
        pid_n = lax.axis_index("n")
        split = lax.axis_index("k")
        wg = lax.axis_index("wg")
        k0 = split * steps
        rows = pl.ds(pl.multiple_of(wg * half, half), half)
        in_specs = [
            plgpu.BlockSpec((bn, bkh), lambda kk: (pid_n, k0 + kk), transforms=w_transforms),
            plgpu.BlockSpec((nb, bn), lambda kk: (k0 + kk, pid_n)),
            plgpu.BlockSpec((m_pad, bkh), lambda kk: (0, k0 + kk), transforms=x_transforms),
            plgpu.BlockSpec((m_pad, bkh), lambda kk: (0, k0 + kk), transforms=x_transforms),
        ]

        def compute_context(eval_pipeline):
            if interpret:
                a = eval_pipeline(jnp.zeros((half, m_pad), jnp.float32))
            else:
                def acc_scope(acc):
                    eval_pipeline(acc)
                    return acc[...]

                a = pl.run_scoped(acc_scope, plgpu.ACC((half, m_pad), jnp.float32))
            o_smem.at[wg][...] = a
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem.at[wg], out_gmem.at[split, pl.ds(pid_n * bn + wg * half, half)])
            plgpu.wait_smem_to_gmem(0)

        def step(_, w_smem, s_smem, xe_smem, xo_smem, carry):
            planes = tile_planes(w_smem.at[rows], s_smem.at[:, rows])
            for b, (lo, hi) in enumerate(planes):
                cols = pl.ds(b * MX_BYTES, MX_BYTES)
                if interpret:  # the interpreter reads no register-A / transposed wgmma operands
                    carry = carry + _dot_nt(lo, xe_smem[:, cols]) + _dot_nt(hi, xo_smem[:, cols])
                else:
                    plgpu.wgmma(carry, lo, plgpu.transpose_ref(xe_smem.at[:, cols], (1, 0)))
                    plgpu.wgmma(carry, hi, plgpu.transpose_ref(xo_smem.at[:, cols], (1, 0)))
                    plgpu.wgmma_wait(2)
            if not interpret:
                plgpu.wgmma_wait(0)  # the slot is released when the step returns
            return carry

        pipeline = plgpu.emit_pipeline_warp_specialized(
            step, grid=(steps,), memory_registers=40, in_specs=in_specs, max_concurrent_steps=cfg.stages,
            wg_axis="wg", num_compute_wgs=2, compute_context=compute_context)
        pipeline(w_gmem, s_gmem, xe_gmem, xo_gmem)

    kwargs = {"interpret": gpu_interpret_params()} if interpret else {}
    call = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((splits, n, m_pad), jnp.float32),
        scratch_types=[plgpu.SMEM((2, half, m_pad), jnp.float32)],
        grid=(n // bn, splits),
        grid_names=("n", "k"),
        num_threads=3,
        thread_name="wg",
        **kwargs,
    )
    return call(xe, xo, w_packed, s_t)


def check_operands(x_dtype, quantize_input: bool, m: int, k: int, n: int):
    """What this kernel takes: bf16 x (or f32 x quantized first: its values are bf16-exact), M <= 16, N a multiple
    of 64, K a multiple of 64."""
    x_dtype = jnp.dtype(x_dtype)
    if x_dtype != jnp.bfloat16 and not (x_dtype == jnp.float32 and quantize_input):
        raise TypeError(f"x: the Mosaic GPU MXFP4 kernel runs bf16 wgmma; it takes bf16 x (or f32 x with "
                        f"quantize_input), got {x_dtype}; use impl='pallas'")
    if m > MAX_M:
        raise ValueError(f"x: the Mosaic GPU MXFP4 kernel is for M <= {MAX_M} (decode), got M = {m}; "
                         f"use impl='pallas'")
    if n % 64 or k % 64:
        raise ValueError(f"w_packed: the Mosaic GPU MXFP4 kernel needs N and K multiples of 64, got N = {n}, "
                         f"K = {k}")


def supported(x_dtype, quantize_input: bool, m: int, k: int, n: int) -> bool:
    """Whether this kernel takes the operands (``check_operands`` without raising): what ``impl="auto"`` asks
    before it runs the kernel.

    >>> supported(jnp.bfloat16, False, 1, 4096, 4096), supported(jnp.float32, False, 1, 4096, 4096)
    (True, False)
    """
    try:
        check_operands(x_dtype, quantize_input, m, k, n)
    except (TypeError, ValueError):
        return False
    return True


def mxfp4_mm_mosaic(x, w_packed, w_scales, bias=None, *, quantize_input=True, out_dtype=None,
                    config: Config | None = None, scales_kn: bool = False, fold: bool = False, interpret=None):
    """``out(linear(qdq_mxfp4(x) if quantize_input else x, dequantize_mxfp4(w_packed, w_scales), bias))`` with
    the weight decoded inside one Mosaic GPU kernel; same contract as ``quark_jax.kernels.mxfp4_mm`` plus
    ``check_operands``. ``config``: a ``Config`` (fit to the shape); None: ``default_config``. ``scales_kn``:
    ``w_scales`` is given transposed, uint8 [K/32, N] (the layout the kernel reads: a load-time repack spares the
    per-call transpose). ``fold``: the caller checked that every scale byte is <= ``decode.FOLD_MAX_SCALE_BYTE``
    (bytes above it would make the folded decode WRONG, silently): the default config then uses the folded decode
    (``default_config(..., fold=True)``); ignored with an explicit ``config``. ``interpret``: None means "unless on
    a CUDA GPU".

    >>> w = jnp.full((64, 32), 0x22, jnp.uint8); s = jnp.full((64, 2), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm_mosaic(jnp.ones((1, 64), jnp.bfloat16), w, s, out_dtype=jnp.float32)[0, :2].tolist()
    [64.0, 64.0]
    """
    m, k = x.shape
    n = w_packed.shape[0]
    check_operands(x.dtype, quantize_input, m, k, n)
    cfg = (config or default_config(k, n, fold=bool(fold))).fit(k=k, n=n)
    if n % cfg.block_n:
        raise ValueError(f"w_packed: N = {n} is not a multiple of block_n = {cfg.block_n} (the warp-specialized "
                         f"kernel takes 128-row blocks)")
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    s_t = w_scales if scales_kn else w_scales.T  # [K/32, N]
    if s_t.shape != (k // formats.MX_BLOCK_SIZE, n):
        raise ValueError(f"w_scales: expected {'[K/32, N]' if scales_kn else '[N, K/32]'} for K = {k}, N = {n}, "
                         f"got {w_scales.shape}")
    return _mosaic_jit(x, w_packed, s_t, bias, quantize_input=bool(quantize_input), out_dtype=out_dtype,
                       cfg=cfg, interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("quantize_input", "out_dtype", "cfg", "interpret"))
def _mosaic_jit(x, w_packed, s_t, bias, *, quantize_input, out_dtype, cfg, interpret):
    m, k = x.shape
    m_pad = -(-m // 8) * 8  # wgmma's N: a multiple of 8
    xq = (qdq_mxfp4(x) if quantize_input else x).astype(jnp.bfloat16)
    pairs = jnp.pad(xq, ((0, m_pad - m), (0, 0))).reshape(m_pad, k // 2, 2)
    call = _mosaic_call_ws if cfg.consumer_warpgroups == 2 else _mosaic_call
    parts = call(pairs[:, :, 0], pairs[:, :, 1], w_packed, s_t, cfg=cfg, interpret=interpret)
    acc = jnp.sum(parts, axis=0)[:, :m].T  # [M, N]
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)[None, :]
    return acc.astype(out_dtype)


__all__ = ["mxfp4_mm_mosaic", "Config", "DEFAULT", "FOLDED", "WARP_SPECIALIZED", "default_config", "check_operands",
           "supported", "decode_block"]
