"""Pallas (Triton lowering) W4A16 INT4 / UINT4 group GEMM that reads Quark's packed weight straight from HBM; its
``Config`` and tuned defaults.

``y = linear(x, (q - z) * s, bias)``, f32 accumulation, one rounding to ``out_dtype``. The weight stays packed in
HBM (int32 [K, N/8], 4 bits per parameter plus one f32 scale per group and column); each program decodes its tile
in registers and feeds bf16 (f16 for f16 x) tensor cores.

Layout trick: nibble ``p`` of word ``[k, c]`` holds column ``8c + order[p]`` (Quark's ``pack_method``). The kernel
never interleaves: the tile's words are decoded into 8 nibble planes, plane ``p`` is multiplied by x into its own
f32 accumulator (columns ``8c + order[p]``), and the output, scales and bias are addressed as ``[.., N/8, 8]``
views (free reshapes), so plane ``p`` reads and writes column ``order[p]`` of the last axis.

Decode (``decode="bits"``): ``(word >> 4p) & 15`` OR'd with the exponent bits of ``2**7`` (bf16), ``2**10`` (f16)
or ``2**23`` (f32) is the float ``offset + u`` exactly. With ``fold_offset`` the offset is not subtracted per
element: it joins the zero point, and per K step of one group the kernel adds
``(x @ (offset + u) - rowsum(x) * (offset + z)) * s`` (signed int4: the words are XOR'd with 0x88888888 so that
``u = q + 8`` and ``z = 8``). Every product ``x * (offset + u)`` is exact in f32; the folded offset costs about
``log2(offset / 8)`` bits of the f32 partial sums (far below x's precision). ``decode="sub"`` subtracts the
offset per element (one more op each; exact for f32 x).

Numerics against the reference (which rounds ``(q - z) * s`` to x's dtype before its dot): the kernel applies the
f32 scale to each group's f32 partial sum and never rounds the weight, so results agree to x's precision, and bit
for bit where every product and partial sum is exact (power-of-two scales, small-integer x).

Grid: one program per (column tile of ``block_w`` words = ``8 * block_w`` columns, row tile of ``block_m``) and per
K split (``split_k`` > 1: f32 partial sums [split_k, M, N] that a small XLA reduction adds, with the bias). Ragged
M: masked loads of x and masked stores, no padding pass.
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

DECODES = ("bits", "sub", "asm")
_MAGIC = {"bfloat16": (0x4300, 128.0), "float16": (0x6400, 1024.0), "float32": (0x4B000000, 8388608.0)}
_SIGN_FLIP = int(np.uint32(0x88888888).view(np.int32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiles and launch parameters (powers of two).

    >>> Config(block_m=16, block_w=32).block_w * 8   # output columns per program
    256
    """

    block_m: int = 16  # rows of x per program (M is masked to it)
    block_w: int = 16  # packed int32 words of a weight row per program (8 * block_w output columns), >= 16
    split_k: int = 1  # programs sharing one tile's groups (> 1: f32 partial sums reduced by XLA)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    decode: str = "asm"  # "asm": the "bits" values built by inline PTX on pairs of words (bf16 / f16 x on a CUDA
    # GPU; else "bits"; H200: 1.4-1.5x faster than "bits"); "bits": offset folded into the zero-point term;
    # "sub": subtracted per element
    w_major: bool = False  # acc[bw, bm] = plane^T @ x^T (the decoded weight is the left MMA operand)
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_m", "block_w", "split_k", "num_warps", "group_m"))
        if self.block_m < 16 or self.block_w < 16:
            raise ValueError(f"Config: block_m and block_w must be >= 16 (MMA tiles), got {self.block_m}, "
                             f"{self.block_w}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")


# M bucket (quark_jax.kernels.tiling) -> config. Decode: 16-word (128-column) tiles with a K split aiming at
# AUTO_SPLIT programs (the 8B shapes have 32..112 column tiles); larger M: wider row tiles (not measured).
# H200, 2026-12-02 (benchmarks/NOTES.md, issue 19): the decode config ran 55-65 us at the large 8B shapes (0.5-0.6x
# XLA bf16; 1.7-2.1x faster than the XLA reference), w_major within 4%.
DEFAULTS = {
    "16": Config(block_m=16, block_w=16, num_warps=4, num_stages=3),
    "64": Config(block_m=64, block_w=16, num_warps=4, num_stages=3),
    "max": Config(block_m=64, block_w=32, num_warps=8, num_stages=3),
}
AUTO_SPLIT = {"decode": 264, "small": 264, "medium": 132}


def fit(cfg: Config, m: int, groups: int, n: int, *, target_programs: int = 0) -> Config:
    """``cfg`` with tiles that divide the problem: ``8 * block_w | N``, ``split_k | groups``; ``block_m`` capped at
    M's power of two (>= 16); with ``target_programs`` the K split grows (powers of two, up to 8) until there are
    that many programs.

    >>> fit(Config(block_w=64), m=1, groups=32, n=256, target_programs=64)
    Config(block_m=16, block_w=32, split_k=8, num_warps=4, num_stages=3, decode='asm', w_major=False, group_m=8)
    """
    words = n // 8
    block_m = min(cfg.block_m, max(16, tiling.pow2_ceil(m)))
    block_w = cfg.block_w
    while words % block_w:
        block_w //= 2
    if block_w < 16:
        raise ValueError(f"int4_mm: cannot tile N = {n} (need N % 128 == 0)")
    tiles = (words // block_w) * -(-m // block_m)
    split_k = tiling.grow_split_k(cfg.split_k, tiles=tiles, groups=groups, target_programs=target_programs)
    return dataclasses.replace(cfg, block_m=block_m, block_w=block_w, split_k=split_k)


def default_config(m: int, k: int, n: int, group_size: int) -> Config:
    """The tuned config for the M bucket of ``m`` (``DEFAULTS``) fitted to the problem, with the class's K split.

    >>> default_config(1, 4096, 4096, 128).split_k
    8
    """
    cfg, _ = tiling.lookup(DEFAULTS, m, k, n)
    return fit(cfg, m, k // group_size, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


def mma_dtype(x_dtype):
    """bf16 / f16 tensor cores for bf16 / f16 x; an f32 (IEEE) dot for f32 x (correct, not fast).

    >>> [mma_dtype(d).name for d in (jnp.bfloat16, jnp.float32)]
    ['bfloat16', 'float32']
    """
    return jnp.dtype(x_dtype)


def decode_plane(words, p: int, dtype, *, subtract: bool):
    """Nibble plane ``p`` of int32 ``words`` as ``dtype``: ``offset + u`` (``subtract=False``) or ``u``, where
    ``u = (words >> 4p) & 15`` and ``offset`` is 128 (bf16), 1024 (f16) or 2**23 (f32) (see the module docstring).

    >>> w = formats.pack_int4(jnp.arange(8, dtype=jnp.int32), "order")[None]
    >>> float(decode_plane(w, 3, jnp.bfloat16, subtract=False)[0, 0]), float(decode_plane(w, 3, jnp.float32, subtract=True)[0, 0])
    (131.0, 3.0)
    """
    dtype = jnp.dtype(dtype)
    magic, offset = _MAGIC[dtype.name]
    bits = lax.shift_right_logical(words, jnp.int32(4 * p)) & 15 | magic
    if dtype.itemsize == 2:
        v = lax.bitcast_convert_type(bits.astype(jnp.uint16), dtype)
    else:
        v = lax.bitcast_convert_type(bits, jnp.float32)
    return v - jnp.asarray(offset, dtype) if subtract else v


def _ptx_plane(p: int, magic: int) -> str:
    """PTX for nibble plane ``p`` of two int32 words ($1, $2) -> one register of two 16-bit floats ($0): ``prmt``
    gathers byte ``p // 2`` of each word into bytes 0 and 2, a shift brings the high nibble down for odd ``p``, and
    the mask plus OR writes ``magic | u`` into each half (``offset + u`` as bf16 / f16, see ``decode_plane``)."""
    b = p // 2
    sel = b | (b << 4) | ((4 + b) << 8) | ((4 + b) << 12)
    lines = ["{", ".reg .b32 t;", f"prmt.b32 t, $1, $2, {sel:#06x};"]
    if p % 2:
        lines.append("shr.u32 t, t, 4;")
    lines += ["and.b32 t, t, 0x000F000F;", f"or.b32 $0, t, {magic | (magic << 16):#010x};", "}"]
    return "\n".join(lines)


def ptx_plane_emulated(words: np.ndarray, p: int, magic: int) -> np.ndarray:
    """numpy model of ``_ptx_plane`` on int32 words (the last axis even): the 16-bit pattern each element gets.

    >>> hex(int(ptx_plane_emulated(np.array([0x76543210, 0x76543210], np.int32), 3, 0x4300)[0]))  # bf16 128 + 3
    '0x4303'
    """
    w = np.asarray(words).astype(np.int64).reshape(-1, 2) & 0xFFFFFFFF
    b = p // 2
    a_byte = (w[:, 0] >> (8 * b)) & 0xFF
    b_byte = (w[:, 1] >> (8 * b)) & 0xFF
    t = a_byte | (a_byte << 8) | (b_byte << 16) | (b_byte << 24)
    if p % 2:
        t = t >> 4
    t = (t & 0x000F000F) | (magic | (magic << 16))
    return np.stack([t & 0xFFFF, t >> 16], axis=-1).reshape(np.shape(words)).astype(np.uint16)


def decode_plane_asm(words, p: int, dtype):
    """GPU ``decode_plane(words, p, dtype, subtract=False)`` for bf16 / f16 with inline PTX (two words per asm)."""
    from jax.experimental.pallas import triton as plgpu

    dtype = jnp.dtype(dtype)
    magic, _ = _MAGIC[dtype.name]
    [v] = plgpu.elementwise_inline_asm(_ptx_plane(p, magic), args=[words], constraints="=r,r,r", pack=2,
                                       result_shape_dtypes=[jax.ShapeDtypeStruct(words.shape, dtype)])
    return v


def _offset(dtype, subtract: bool) -> float:
    return 0.0 if subtract else _MAGIC[jnp.dtype(dtype).name][1]


def _kernel(x_ref, w_ref, s_ref, *rest, cfg: Config, m: int, gs: int, groups: int, n_tiles_n: int, n_tiles_m: int,
            nib_cols: tuple, signed: bool, has_zeros: bool, has_bias: bool, dtype, precision, out_dtype):
    rest = list(rest)
    z_ref = rest.pop(0) if has_zeros else None
    b_ref = rest.pop(0) if has_bias else None
    (o_ref,) = rest
    bm, bw = cfg.block_m, cfg.block_w
    subtract = cfg.decode == "sub"
    offset = _offset(dtype, subtract)
    x_rows = None
    m_tile = None
    if m % bm:  # ragged last row tile: rows past M load as zeros
        m_tile, _ = tiling.grouped_program(pl.program_id(0), n_tiles_m, n_tiles_n, cfg.group_m)
        x_rows = lax.broadcasted_iota(jnp.int32, (bm, gs), 0) < (m - m_tile * bm)
    dims = (((0,), (1,)), ((), ())) if cfg.w_major else (((1,), (0,)), ((), ()))

    wm = cfg.w_major  # accumulators [bw, bm] (transposed once at the end) instead of [bm, bw]

    def cols_vec(v):  # a per-column [bw] vector broadcast against an accumulator
        return v[:, None] if wm else v[None, :]

    def body(g, accs):
        k0 = pl.multiple_of(g * gs, gs)
        xk = tiling.masked_load(x_ref.at[:, pl.ds(k0, gs)], x_rows)
        words = w_ref[pl.ds(k0, gs), :]
        if signed:
            words = words ^ _SIGN_FLIP
        rs = jnp.sum(xk.astype(jnp.float32), axis=1)  # [bm]
        rs = rs[None, :] if wm else rs[:, None]
        zw = z_ref[g, :] if has_zeros else None
        out = []
        for p in range(8):
            col = nib_cols[p]
            if cfg.decode == "asm":
                plane = decode_plane_asm(words, p, dtype)
            else:
                plane = decode_plane(words, p, dtype, subtract=subtract)
            if wm:
                d = lax.dot_general(plane, xk, dims, precision=precision, preferred_element_type=jnp.float32)
            else:
                d = lax.dot_general(xk, plane, dims, precision=precision, preferred_element_type=jnp.float32)
            if has_zeros:
                z = (lax.shift_right_logical(zw, jnp.int32(4 * p)) & 15).astype(jnp.float32) + offset
                d = d - rs * cols_vec(z)
            elif signed:
                d = d - rs * (offset + 8.0)
            elif offset:
                d = d - rs * offset
            out.append(accs[col] + d * cols_vec(s_ref[g, :, jnp.int32(col)]))
        return tuple(out[nib_cols.index(c)] for c in range(8))

    zero = jnp.zeros((bw, bm) if wm else (bm, bw), jnp.float32)
    accs = lax.fori_loop(0, groups, body, (zero,) * 8)
    if wm:
        accs = tuple(a.T for a in accs)
    valid = None
    if m % bm:
        rows = m - m_tile * bm + jnp.zeros((bm, bw), jnp.int32)
        valid = lax.broadcasted_iota(jnp.int32, (bm, bw), 0) < rows
    for c in range(8):
        acc = accs[c]
        if has_bias:
            acc = acc + b_ref[:, jnp.int32(c)].astype(jnp.float32)[None, :]
        _store(o_ref.at[:, :, jnp.int32(c)], acc.astype(out_dtype), valid)


def _store(ref, value, mask):
    if mask is None:
        ref[...] = value
        return
    from jax.experimental.pallas import triton as plgpu

    plgpu.store(ref, value, mask=mask)


def int4_mm_pallas(x, w_packed, w_scales, w_zeros=None, bias=None, *, group_size: int, order: str = "reorder",
                   signed: bool = True, out_dtype=None, config=None, interpret=None):
    """Pallas INT4 / UINT4 GEMM; same contract as ``quark_jax.kernels.int4_mm`` (x [M, K], w_packed int32
    [K, N/8], w_scales f32 [G, N], w_zeros int32 [G, N/8] or None, bias [N] or None). ``config`` (a
    :class:`Config`) overrides the tuned tiles.

    >>> w = formats.pack_int4(jnp.ones((16, 128), jnp.int32), "order")          # K = 16, N = 128, every q = 1
    >>> int4_mm_pallas(jnp.ones((1, 16)), w, jnp.full((1, 128), 0.5), group_size=16, order="order")[0, :2].tolist()
    [8.0, 8.0]
    """
    m, k = x.shape
    n = w_packed.shape[1] * 8
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    groups = k // group_size
    cfg = default_config(m, k, n, group_size) if config is None else fit(config, m, groups, n)
    if cfg.decode == "asm" and (interpret or jnp.dtype(x.dtype) == jnp.float32):
        cfg = dataclasses.replace(cfg, decode="bits")  # the PTX runs on a CUDA GPU, for 16-bit x
    nib_cols = tuple(formats.INT4_PACK_ORDERS[order])
    return _int4_mm_jit(x, w_packed, w_scales, w_zeros, bias, group_size=int(group_size), nib_cols=nib_cols,
                        signed=bool(signed), out_dtype=out_dtype, cfg=cfg, interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("group_size", "nib_cols", "signed", "out_dtype", "cfg", "interpret"))
def _int4_mm_jit(x, w_packed, w_scales, w_zeros, bias, *, group_size, nib_cols, signed, out_dtype, cfg, interpret):
    m, k = x.shape
    words = w_packed.shape[1]
    n = words * 8
    bm, bw, splits = cfg.block_m, cfg.block_w, cfg.split_k
    groups = k // group_size
    g_split = groups // splits
    n_tiles_m = pl.cdiv(m, bm)
    n_tiles_n = words // bw
    dtype = mma_dtype(x.dtype)
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    fused_bias = bias is not None and splits == 1
    grid = (n_tiles_n * n_tiles_m, splits)

    def coords(pid):  # (m tile, n tile)
        return tiling.grouped_program(pid, n_tiles_m, n_tiles_n, cfg.group_m)

    in_specs = [
        pl.BlockSpec((bm, g_split * group_size), lambda pid, s: (coords(pid)[0], s)),
        pl.BlockSpec((g_split * group_size, bw), lambda pid, s: (s, coords(pid)[1])),
        pl.BlockSpec((g_split, bw, 8), lambda pid, s: (s, coords(pid)[1], 0)),
    ]
    args = [x, w_packed, w_scales.reshape(groups, words, 8)]
    if w_zeros is not None:
        in_specs.append(pl.BlockSpec((g_split, bw), lambda pid, s: (s, coords(pid)[1])))
        args.append(w_zeros)
    if fused_bias:
        in_specs.append(pl.BlockSpec((bw, 8), lambda pid, s: (coords(pid)[1], 0)))
        args.append(bias.reshape(words, 8))
    if splits == 1:
        out_shape = jax.ShapeDtypeStruct((m, words, 8), out_dtype)
        out_spec = pl.BlockSpec((bm, bw, 8), lambda pid, s: (coords(pid)[0], coords(pid)[1], 0))
        kernel_out = out_dtype
    else:
        out_shape = jax.ShapeDtypeStruct((splits, m, words, 8), jnp.float32)
        out_spec = pl.BlockSpec((getattr(pl, "squeezed", None), bm, bw, 8),
                                lambda pid, s: (s, coords(pid)[0], coords(pid)[1], 0))
        kernel_out = jnp.dtype(jnp.float32)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, gs=group_size, groups=g_split, n_tiles_n=n_tiles_n,
                               n_tiles_m=n_tiles_m, nib_cols=nib_cols, signed=signed, has_zeros=w_zeros is not None,
                               has_bias=fused_bias, dtype=dtype, precision=precision, out_dtype=kernel_out)
    name = f"int4_mm_{bm}x{bw * 8}_g{group_size}_s{splits}"
    out = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=grid,
                             in_specs=in_specs, out_specs=out_spec)(*args)
    if splits > 1:
        out = tiling.finish_splits(out, None if bias is None else bias.reshape(words, 8), out_dtype)
    return out.reshape(m, n)


__all__ = ["int4_mm_pallas", "Config", "DEFAULTS", "default_config", "fit", "decode_plane", "decode_plane_asm",
           "ptx_plane_emulated"]
