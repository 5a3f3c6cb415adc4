"""Pallas (Triton) W4A4 MXFP4 GEMM on FP8 tensor cores, from block-pairs packed weights (``block_pairs``).

Why: the bf16 kernel (``pallas_triton``) decodes every weight element to bf16 and multiplies in its block scale
(~4.4 instructions per element on sm_90), which bounds decode-size GEMMs by instruction issue, not HBM. Here a
weight nibble becomes an FP8 E4M3 byte by bit moves only (~0.6 instructions per element, 4 elements per 32-bit
op), both operands stay FP8 and the MX block scales are applied to each block's partial sum instead of to the
elements.

Numerics (exact up to f32 summation order, like the bf16 kernel): a weight code ``c`` is decoded to the E4M3 byte
with value ``e2m1(c) * 2**-6`` (magnitude bits under the exponent's low bits: code 1 lands on the E4M3 subnormal
2**-7); the activation is quantized to its E2M1 codes times 2**6 (32..384, normal E4M3), so each product is exactly
``e2m1(w) * e2m1(x)``. One K = 32 MMA sums the 32 products of one MX block: multiples of 1/4 below 2**11, exact in
any accumulator with >= 13 significant bits (Hopper's FP8 MMA keeps more). The block sum is then multiplied by the
two block scales ``2**(s_w - 127)`` and ``2**(s_x - 127)`` (exact powers of two) and added to the f32 accumulator.

Layout: w_pairs [N, K/2] uint8 in the block-pairs layout (one nibble plane of a 32-byte row chunk is one MX block),
w_scales [N, K/32] E8M0 bytes, x quantized by ``prepare_codes`` into FP8 codes [M, K] and f32 block scales
[K/32, M] (transposed: one row per block, loaded as the accumulator's column factor). K % 64 == 0.

Grid and launch follow ``pallas_triton``: one program per (N tile, M tile), weight-major accumulator
``acc[block_n, block_m]``, optional K split (f32 partials added by XLA), masked stores for a ragged last M tile.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import _dispatch
from quark_jax.kernels.mxfp4_mm import configs
from quark_jax.kernels.mxfp4_mm.block_pairs import PAIR
from quark_jax.kernels.mxfp4_mm.pallas_triton import _store, _tile_coords
from quark_jax.quant.mxfp4 import _inverse_scale, mxfp4_block_scale_bytes, round_to_e2m1
from quark_jax.quant.rounding import exact_f32

__all__ = ["mxfp4_mm_pallas_fp8", "prepare_codes", "decode_fp8_jnp"]

X_CODE_SHIFT = 64.0  # activation codes are stored as e2m1 * 2**6 (E4M3 normals); weight codes decode to e2m1 * 2**-6
_MX = formats.MX_BLOCK_SIZE
_BYTES_PER_PAIR = PAIR // 2


def e8m0_f32(sbytes):
    """float32 ``2**(s - 127)`` of E8M0 bytes by bit pattern (``s << 23``; the subnormal ``0x00400000`` for s = 0).

    >>> e8m0_f32(jnp.array([127, 128, 0], jnp.uint8)).tolist()[:2]
    [1.0, 2.0]
    """
    s = sbytes.astype(jnp.int32)
    bits = jnp.where(s == 0, 0x00400000, s << 23)
    return lax.bitcast_convert_type(bits, jnp.float32)


def prepare_codes(x, rows: int):
    """MXFP4-quantize x [M, K]: FP8 E4M3 codes ``e2m1 * 2**6`` [rows, K] and f32 block scales [K/32, rows]
    (transposed), rows zero-padded to ``rows``. One XLA fusion; the same quantizer as ``quant.qdq_mxfp4``.

    >>> q, s = prepare_codes(jnp.concatenate([jnp.array([[0.5, -3.0, 6.0]]), jnp.zeros((1, 29))], 1), 2)
    >>> (q.astype(jnp.float32)[0, :3] / 64).tolist(), s[:, 0].tolist(), q.shape, s.shape
    ([0.5, -3.0, 6.0], [1.0], (2, 32), (1, 2))
    """
    m, k = x.shape
    xb = exact_f32(x).reshape(m, k // _MX, _MX)
    sbytes = mxfp4_block_scale_bytes(xb)
    codes = round_to_e2m1(xb * _inverse_scale(sbytes)[..., None]) * X_CODE_SHIFT
    codes = jnp.pad(codes.reshape(m, k), ((0, rows - m), (0, 0))).astype(jnp.float8_e4m3fn)
    scales = jnp.pad(e8m0_f32(sbytes), ((0, rows - m), (0, 0))).T
    return codes, scales


def decode_fp8_jnp(packed):
    """``(lo, hi)``: the two nibble planes of uint8 ``packed`` as E4M3 values ``e2m1 * 2**-6`` (portable jnp).

    E4M3 byte = sign << 7 | magnitude << 2: exponent field = the E2M1 exponent, top mantissa bit = its mantissa.

    >>> lo, hi = decode_fp8_jnp(jnp.array([0x7A], jnp.uint8))
    >>> (lo.astype(jnp.float32) * 64).tolist(), (hi.astype(jnp.float32) * 64).tolist()
    ([-1.0], [6.0])
    """
    def plane(c):
        return lax.bitcast_convert_type(((c & 8) << 4) | ((c & 7) << 2), jnp.float8_e4m3fn)

    return plane(packed & 0xF), plane(packed >> 4)


# PTX on 4 packed bytes per 32-bit register (each byte independent, so Triton's byte order does not matter).
# Temporaries keep the input intact until the output is written (an output may share the input's register).
_PTX_LO = ("{ .reg .b32 t<2>; shl.b32 t0, $1, 4; shl.b32 t1, $1, 2; and.b32 t0, t0, 0x80808080; "
           "and.b32 t1, t1, 0x1C1C1C1C; or.b32 $0, t0, t1; }")
_PTX_HI = ("{ .reg .b32 t<2>; shr.b32 t0, $1, 2; and.b32 t0, t0, 0x1C1C1C1C; and.b32 t1, $1, 0x80808080; "
           "or.b32 $0, t0, t1; }")


def decode_fp8_asm(packed):
    """Same as ``decode_fp8_jnp`` with inline PTX (NVIDIA GPUs): ~5 integer ops per 8 elements."""
    from jax.experimental.pallas import triton as plgpu

    out = [jax.ShapeDtypeStruct(packed.shape, jnp.int8)]  # Triton asm results are signless integers (not ui8)
    planes = []
    for asm in (_PTX_LO, _PTX_HI):
        [v] = plgpu.elementwise_inline_asm(asm, args=[packed], constraints="=r,r", pack=4, result_shape_dtypes=out)
        planes.append(lax.bitcast_convert_type(v, jnp.float8_e4m3fn))
    return planes[0], planes[1]


def _kernel(x_ref, xs_ref, w_ref, s_ref, *rest, cfg: configs.Config, m: int, n_tiles_n: int, n_tiles_m: int,
            k_steps: int, has_bias: bool, out_dtype):
    if has_bias:
        b_ref, o_ref = rest
    else:
        (o_ref,) = rest
    bm, bn = cfg.block_m, cfg.block_n
    pairs = cfg.block_k // PAIR  # block pairs per loop step
    dims = (((1,), (1,)), ((), ()))
    decode = decode_fp8_jnp if cfg.decode == "jnp" else decode_fp8_asm

    def body(i, acc):
        parts = []
        for u in range(pairs):  # all MMAs of the step first, then the scaling: independent MMAs can overlap
            g = i * pairs + u
            lo, hi = decode(w_ref[:, pl.ds(pl.multiple_of(g * _BYTES_PER_PAIR, _BYTES_PER_PAIR), _BYTES_PER_PAIR)])
            for plane, wq in enumerate((lo, hi)):
                blk = 2 * g + plane
                xq = x_ref[:, pl.ds(pl.multiple_of(blk * _MX, _MX), _MX)]
                part = lax.dot_general(wq, xq, dims, preferred_element_type=jnp.float32)  # [bn, bm]
                parts.append((part, blk))
        for part, blk in parts:
            w_scale = e8m0_f32(s_ref[:, pl.ds(blk, 1)])  # [bn, 1]
            x_scale = xs_ref[pl.ds(blk, 1), :]  # [1, bm]
            acc = acc + part * w_scale * x_scale
        return acc

    acc = lax.fori_loop(0, k_steps, body, jnp.zeros((bn, bm), jnp.float32)).T
    if has_bias:
        acc = acc + b_ref[...].astype(jnp.float32)[None, :]
    if m % bm:  # ragged last row tile: the output has exactly M rows, store only the valid ones
        _, m_tile = _tile_coords(pl.program_id(0), n_tiles_n, n_tiles_m, cfg.group_m)
        rows = m - m_tile * bm + jnp.zeros((bm, bn), jnp.int32)
        valid = lax.broadcasted_iota(jnp.int32, (bm, bn), 0) < rows
        _store(o_ref, acc.astype(out_dtype), valid)
    else:
        o_ref[...] = acc.astype(out_dtype)


def fit(cfg: configs.Config, m: int, k: int, n: int, *, target_programs: int = 0) -> configs.Config:
    """``cfg`` fitted to (m, k, n) with K steps of whole block pairs (``block_k`` a multiple of 64).

    >>> fit(configs.Config(block_k=512, split_k=2), m=3, k=192, n=48).block_k
    64
    """
    if k % PAIR:
        raise ValueError(f"mxfp4_mm (FP8 kernel): K = {k} must be a multiple of {PAIR}")
    cfg = configs.fit(cfg, m, k, n, target_programs=target_programs)
    block_k, split_k = max(cfg.block_k, PAIR), cfg.split_k
    while split_k > 1 and (k // split_k) % PAIR:
        split_k //= 2
    while (k // split_k) % block_k:
        block_k //= 2
    return dataclasses.replace(cfg, block_k=block_k, split_k=split_k, w_major=True)


def mxfp4_mm_pallas_fp8(x, w_pairs, w_scales, bias=None, *, out_dtype=None, config=None, interpret=None):
    """W4A4 MXFP4 GEMM on FP8 tensor cores: ``linear(qdq_mxfp4(x), dequantize_mxfp4(w)) + bias``.

    x [M, K] bf16/f16/f32 (K % 64 == 0); w_pairs [N, K/2] uint8 in the block-pairs layout
    (``block_pairs.to_block_pairs`` of the checkpoint bytes); w_scales [N, K/32] uint8; bias [N] or None.

    >>> from quark_jax.kernels.mxfp4_mm.block_pairs import to_block_pairs
    >>> w = to_block_pairs(jnp.full((16, 32), 0x22, jnp.uint8)); s = jnp.full((16, 2), 127, jnp.uint8)
    >>> mxfp4_mm_pallas_fp8(jnp.ones((1, 64)), w, s)[0, :2].tolist()  # every weight 1.0
    [64.0, 64.0]
    """
    m, k = x.shape
    n = w_pairs.shape[0]
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    if config is None:
        cfg = fit(configs.FP8_DECODE, m, k, n, target_programs=configs.AUTO_SPLIT["decode"])
    else:
        cfg = fit(config, m, k, n)
    if interpret and cfg.decode != "jnp":
        cfg = dataclasses.replace(cfg, decode="jnp")  # inline PTX needs a GPU
    return _fp8_jit(x, w_pairs, w_scales, bias, out_dtype=out_dtype, cfg=cfg, interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("out_dtype", "cfg", "interpret"))
def _fp8_jit(x, w_pairs, w_scales, bias, *, out_dtype, cfg, interpret):
    m, k = x.shape
    n = w_pairs.shape[0]
    bm, bn, splits = cfg.block_m, cfg.block_n, cfg.split_k
    n_tiles_m = pl.cdiv(m, bm)
    n_tiles_n = n // bn
    codes, x_scales = prepare_codes(x, n_tiles_m * bm)
    k_split = k // splits
    k_steps = k_split // cfg.block_k
    fused_bias = bias is not None and splits == 1

    def coords(pid):
        return _tile_coords(pid, n_tiles_n, n_tiles_m, cfg.group_m)

    in_specs = [
        pl.BlockSpec((bm, k_split), lambda pid, s: (coords(pid)[1], s)),
        pl.BlockSpec((k_split // _MX, bm), lambda pid, s: (s, coords(pid)[1])),
        pl.BlockSpec((bn, k_split // 2), lambda pid, s: (coords(pid)[0], s)),
        pl.BlockSpec((bn, k_split // _MX), lambda pid, s: (coords(pid)[0], s)),
    ]
    args = [codes, x_scales, w_pairs, w_scales]
    if fused_bias:
        in_specs.append(pl.BlockSpec((bn,), lambda pid, s: (coords(pid)[0],)))
        args.append(bias)
    if splits == 1:
        out_shape = jax.ShapeDtypeStruct((m, n), out_dtype)
        out_spec = pl.BlockSpec((bm, bn), lambda pid, s: (coords(pid)[1], coords(pid)[0]))
        kernel_out = out_dtype
    else:
        out_shape = jax.ShapeDtypeStruct((splits, m, n), jnp.float32)
        out_spec = pl.BlockSpec((getattr(pl, "squeezed", None), bm, bn),
                                lambda pid, s: (s, coords(pid)[1], coords(pid)[0]))
        kernel_out = jnp.dtype(jnp.float32)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, n_tiles_n=n_tiles_n, n_tiles_m=n_tiles_m, k_steps=k_steps,
                               has_bias=fused_bias, out_dtype=kernel_out)
    from jax.experimental.pallas import triton as plgpu

    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(n_tiles_n * n_tiles_m, splits),
        in_specs=in_specs,
        out_specs=out_spec,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"mxfp4_mm_fp8_{bm}x{bn}x{cfg.block_k}_s{splits}",
    )(*args)
    if splits > 1:
        out = out.sum(axis=0)
        if bias is not None:
            out = out + bias.astype(jnp.float32)
        out = out.astype(out_dtype)
    return out
