"""Pallas (Triton lowering) MXFP4 GEMM that reads the packed 4-bit weight and its E8M0 scales straight from HBM.

``y = linear(qdq_mxfp4(x) if quantize_input else x, dequantize_mxfp4(w_packed, w_scales), bias)``, f32
accumulation, one rounding to ``out_dtype``. The weight stays packed in HBM (4.25 bits per parameter); each
program decodes its weight tile in registers (``decode.py``) and feeds bf16 (f16 for f16 inputs) tensor cores.

Layout trick: byte j of a packed row holds K elements 2j (low nibble) and 2j+1 (high nibble). Instead of
interleaving the two decoded nibble planes, x is split once into its even and odd columns (``xe``, ``xo``, [M, K/2]
each) and the kernel computes ``xe @ lo^T + xo @ hi^T``. The split happens in the same XLA pass as the activation
quant-dequant (and the padding of M to the row tile), so it costs no extra pass for W4A4.

Exactness: qdq'd activations and decoded weights are E2M1 values times powers of two, exact in bf16, so the bf16
MMA with f32 accumulation equals the f32 reference up to the order of the f32 sums. f16 inputs run an f16 MMA on
weights rounded to f16 exactly as the reference rounds them. f32 inputs without input quantization run an f32
(IEEE, ``Precision.HIGHEST``) dot: correct but not fast.

Grid: one program per (N tile, M tile) pair (grouped along M for L2 reuse) and per K split. With ``split_k > 1``
each split writes f32 partial sums [split_k, M, N] that a small XLA reduction adds (with the bias). The last row
tile of a ragged M loads only its valid rows of x (masked loads: no padding pass, and an M = 1 decode reads one
row of x, not 16) and stores only its valid output rows (masked store: no slicing pass).
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
from quark_jax.kernels.mxfp4_mm import configs, decode
from quark_jax.quant import qdq_mxfp4

__all__ = ["mxfp4_mm_pallas", "prepare_activations", "mma_dtype"]


def mma_dtype(x_dtype, quantize_input: bool):
    """The tensor-core operand dtype: bf16 for bf16 x (and for f32 x once quantized: its values are exact in
    bf16), f16 for f16 x, f32 for unquantized f32 x."""
    x_dtype = jnp.dtype(x_dtype)
    if x_dtype == jnp.float16:
        return jnp.dtype(jnp.float16)
    if x_dtype == jnp.float32 and not quantize_input:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(jnp.bfloat16)


def prepare_activations(x, quantize_input: bool, rows: int):
    """``(xe, xo)``: the even and odd K columns of ``qdq_mxfp4(x)`` (or x), in the MMA dtype, rows zero-padded to
    ``rows`` (the kernel itself masks a ragged last row tile, so it passes ``rows = M``). One fused XLA pass.

    >>> xe, xo = prepare_activations(jnp.arange(64.0).reshape(1, 64), False, 16)
    >>> xe.shape, xe[0, :3].tolist(), xo[0, :3].tolist(), float(xe[1:].max())
    ((16, 32), [0.0, 2.0, 4.0], [1.0, 3.0, 5.0], 0.0)
    """
    xq = qdq_mxfp4(x) if quantize_input else x
    xq = xq.astype(mma_dtype(x.dtype, quantize_input))
    m, k = x.shape
    pairs = jnp.pad(xq, ((0, rows - m), (0, 0))).reshape(rows, k // 2, 2)
    return pairs[:, :, 0], pairs[:, :, 1]


def _tile_coords(pid, n_tiles_n: int, n_tiles_m: int, group_m: int):
    """(n tile, m tile) of program ``pid``: groups of ``group_m`` M tiles sweep all N tiles (L2 reuse of w)."""
    group = min(group_m, n_tiles_m)
    per_group = group * n_tiles_n
    g = pid // per_group
    first_m = g * group
    size = jnp.minimum(n_tiles_m - first_m, group)
    local = pid % per_group
    return local // size, first_m + local % size


def _kernel(xe_ref, xo_ref, w_ref, s_ref, *rest, cfg: configs.Config, m: int, n_tiles_n: int, n_tiles_m: int,
            k_steps: int, w_dtype, precision, has_bias: bool, out_dtype):
    if has_bias:
        b_ref, o_ref = rest
    else:
        (o_ref,) = rest
    bm, bn = cfg.block_m, cfg.block_n
    bkh = cfg.block_k // 2  # packed bytes (= x columns of one parity) per K step
    bks = cfg.block_k // formats.MX_BLOCK_SIZE  # scale bytes per K step
    dims = (((1,), (1,)), ((), ()))
    x_rows = None
    if m % bm:  # ragged last row tile: x is not padded; rows past M load as zeros without touching memory
        _, m_tile = _tile_coords(pl.program_id(0), n_tiles_n, n_tiles_m, cfg.group_m)
        x_rows = lax.broadcasted_iota(jnp.int32, (bm, bkh), 0) < (m - m_tile * bm)

    def body(i, acc):
        kk = pl.multiple_of(i * bkh, bkh)
        packed = w_ref[:, pl.ds(kk, bkh)]
        sbytes = s_ref[:, pl.ds(i * bks, bks)]
        if cfg.decode == "jnp":
            lo, hi = decode.decode_jnp(packed, sbytes, w_dtype)
        else:
            lo, hi = decode.decode_asm(packed, sbytes, w_dtype, pack=cfg.pack, scale_in_asm=cfg.decode == "asm_scaled")
        xe = _load_rows(xe_ref.at[:, pl.ds(kk, bkh)], x_rows)
        xo = _load_rows(xo_ref.at[:, pl.ds(kk, bkh)], x_rows)
        if cfg.w_major:  # acc [bn, bm]
            acc += lax.dot_general(lo, xe, dims, precision=precision, preferred_element_type=jnp.float32)
            acc += lax.dot_general(hi, xo, dims, precision=precision, preferred_element_type=jnp.float32)
        else:  # acc [bm, bn]
            acc += lax.dot_general(xe, lo, dims, precision=precision, preferred_element_type=jnp.float32)
            acc += lax.dot_general(xo, hi, dims, precision=precision, preferred_element_type=jnp.float32)
        return acc

    shape = (bn, bm) if cfg.w_major else (bm, bn)
    acc = lax.fori_loop(0, k_steps, body, jnp.zeros(shape, jnp.float32))
    if cfg.w_major:
        acc = acc.T
    if has_bias:
        acc = acc + b_ref[...].astype(jnp.float32)[None, :]
    if m % bm:  # ragged last row tile: the output has exactly M rows, store only the valid ones
        _, m_tile = _tile_coords(pl.program_id(0), n_tiles_n, n_tiles_m, cfg.group_m)
        rows = m - m_tile * bm + jnp.zeros((bm, bn), jnp.int32)
        valid = lax.broadcasted_iota(jnp.int32, (bm, bn), 0) < rows
        _store(o_ref, acc.astype(out_dtype), valid)
    else:
        o_ref[...] = acc.astype(out_dtype)


def _load_rows(ref, mask):
    if mask is None:
        return ref[...]
    from jax.experimental.pallas import triton as plgpu

    return plgpu.load(ref, mask=mask, other=0)


def _store(ref, value, mask):
    from jax.experimental.pallas import triton as plgpu

    plgpu.store(ref, value, mask=mask)


def mxfp4_mm_pallas(x, w_packed, w_scales, bias=None, *, quantize_input=True, out_dtype=None, config=None,
                    interpret=None):
    """Pallas MXFP4 GEMM; same contract as ``quark_jax.kernels.mxfp4_mm`` (x [M, K], w_packed [N, K/2] uint8,
    w_scales [N, K/32] uint8, bias [N] or None). ``config`` (a ``configs.Config``) overrides the tuned tiles.

    >>> w = jnp.full((16, 16), 0x22, jnp.uint8); s = jnp.full((16, 1), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm_pallas(jnp.ones((1, 32)), w, s)[0, :2].tolist()
    [32.0, 32.0]
    """
    m, k = x.shape
    n = w_packed.shape[0]
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    cfg = configs.default_config(m, k, n) if config is None else configs.fit(config, m, k, n)
    if interpret and cfg.decode != "jnp":
        cfg = dataclasses.replace(cfg, decode="jnp")  # inline PTX needs a GPU
    return _mxfp4_mm_jit(x, w_packed, w_scales, bias, quantize_input=bool(quantize_input), out_dtype=out_dtype,
                         cfg=cfg, interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("quantize_input", "out_dtype", "cfg", "interpret"))
def _mxfp4_mm_jit(x, w_packed, w_scales, bias, *, quantize_input, out_dtype, cfg, interpret):
    m, k = x.shape
    n = w_packed.shape[0]
    bm, bn, splits = cfg.block_m, cfg.block_n, cfg.split_k
    n_tiles_m = pl.cdiv(m, bm)
    n_tiles_n = n // bn
    xe, xo = prepare_activations(x, quantize_input, m)
    w_dtype = xe.dtype
    precision = lax.Precision.HIGHEST if w_dtype == jnp.float32 else None
    kh_split = k // 2 // splits  # packed bytes per split
    ks_split = k // formats.MX_BLOCK_SIZE // splits
    k_steps = kh_split // (cfg.block_k // 2)
    fused_bias = bias is not None and splits == 1
    grid = (n_tiles_n * n_tiles_m, splits)

    def coords(pid):
        return _tile_coords(pid, n_tiles_n, n_tiles_m, cfg.group_m)

    def x_map(pid, s):
        return coords(pid)[1], s

    def w_map(pid, s):
        return coords(pid)[0], s

    in_specs = [
        pl.BlockSpec((bm, kh_split), x_map),
        pl.BlockSpec((bm, kh_split), x_map),
        pl.BlockSpec((bn, kh_split), w_map),
        pl.BlockSpec((bn, ks_split), w_map),
    ]
    args = [xe, xo, w_packed, w_scales]
    if fused_bias:
        in_specs.append(pl.BlockSpec((bn,), lambda pid, s: (coords(pid)[0],)))
        args.append(bias)
    if splits == 1:
        out_shape = jax.ShapeDtypeStruct((m, n), out_dtype)
        out_spec = pl.BlockSpec((bm, bn), lambda pid, s: (coords(pid)[1], coords(pid)[0]))
        kernel_out = out_dtype
    else:
        out_shape = jax.ShapeDtypeStruct((splits, m, n), jnp.float32)
        out_spec = pl.BlockSpec((getattr(pl, "squeezed", None), bm, bn), lambda pid, s: (s, coords(pid)[1], coords(pid)[0]))
        kernel_out = jnp.dtype(jnp.float32)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, n_tiles_n=n_tiles_n, n_tiles_m=n_tiles_m, k_steps=k_steps,
                               w_dtype=w_dtype, precision=precision, has_bias=fused_bias, out_dtype=kernel_out)
    from jax.experimental.pallas import triton as plgpu

    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_spec,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"mxfp4_mm_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{splits}",
    )(*args)
    if splits > 1:
        out = out.sum(axis=0)
        if bias is not None:
            out = out + bias.astype(jnp.float32)
        out = out.astype(out_dtype)
    return out
