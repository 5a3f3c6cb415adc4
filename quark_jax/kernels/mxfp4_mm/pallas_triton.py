"""Pallas (Triton lowering) MXFP4 GEMM that reads the packed 4-bit weight and its E8M0 scales straight from HBM;
its ``Config`` and tuned defaults.

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

Config: tiles (``block_m`` rows of x, ``block_n`` rows of the weight, ``block_k`` elements of K per loop step), the
K split, the Triton launch, how the weight is decoded in registers (``decode``: ``"asm"`` = PTX bit tricks on
packed registers, sm90+ only, ``pack`` bytes per asm instance; ``"asm_scaled"`` = the same with the block scale
multiplied inside the asm; ``"asm_fold"`` = one multiply per element by the scale with the decode's 2**126 folded
in, ``decode.scale_bf16_folded``: exact only when every scale byte is <= 128, the caller's check; ``"jnp"`` = portable integer/float jnp ops, used in interpret mode and before sm90) and
the operand order of the MMA (``w_major``). :func:`default_config` returns the tuned entry for M's bucket and
``fit`` shrinks tiles that do not divide the problem, so any valid shape gets a runnable config.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import _dispatch, tiling, tuning
from quark_jax.kernels.mxfp4_mm import decode, dequant_gemm
from quark_jax.kernels.mxfp4_mm import pallas_triton_gemv as gemv
from quark_jax.quant import qdq_mxfp4

DECODES = ("asm", "asm_scaled", "asm_fold", "jnp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiles and launch parameters; all block sizes are powers of two, ``block_k`` a multiple of 32.

    >>> Config(block_m=16, block_n=64, block_k=256).block_k
    256
    """

    block_m: int = 16  # rows of x per program (M is masked to it)
    block_n: int = 64  # weight rows per program
    block_k: int = 256  # K elements per loop step, a multiple of 32 (one MX block)
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums reduced by XLA)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    decode: str = "asm"  # weight decode in registers: "asm" / "asm_scaled" / "asm_fold" (PTX, sm90+) or "jnp"
    w_major: bool = True  # acc[bn, bm] = w @ x^T (the decoded weight is the left MMA operand; small M)
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)
    pack: int = 2  # packed bytes per asm instance (2 or 4)

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_m", "block_n", "block_k", "split_k", "num_warps"))
        if self.block_m < 16 or self.block_n < 16:
            raise ValueError(f"Config: block_m and block_n must be >= 16 (MMA tiles), got {self.block_m}, "
                             f"{self.block_n}")
        if self.block_k < 32:
            raise ValueError(f"Config.block_k: expected a multiple of 32 (one MX block), got {self.block_k}")
        if self.pack not in (2, 4):
            raise ValueError(f"Config.pack: expected 2 or 4 bytes per asm instance, got {self.pack}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")


# M bucket (quark_jax.kernels.tiling) -> config, chosen on the H100 by device time (a table sweep, 2026-11-25, at
# K=4096, N=14336; benchmarks/NOTES.md section MXFP4). M is padded to block_m inside the kernel (masked loads).
# "128" serves the medium class up to M = 128 (session 3 sweep of 12 tilings at M = 128/256/512 on four
# weight shapes: 128x64x256 with 4 warps was the fastest or within 3% at M = 128).
DEFAULTS = {
    "16": Config(block_m=16, block_n=64, block_k=512, split_k=1, num_warps=4, num_stages=3),
    "64": Config(block_m=64, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=3),
    "128": Config(block_m=128, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=3, group_m=4),
    "512": Config(block_m=256, block_n=128, block_k=128, split_k=1, num_warps=8, num_stages=3,
                     decode="asm_scaled", group_m=4),
    "max": Config(block_m=256, block_n=128, block_k=128, split_k=1, num_warps=8, num_stages=3, group_m=4),
}
# Classes whose short-N / long-K shapes get a K split, and the number of programs the split aims for. Decode and
# small tiles want ~1.7 programs per SM (224 on 132 SMs). Medium tiles want about one per SM: at M = 256 the
# 14336x4096 weight has 32 output tiles and ran 218.6 us unsplit, 78.0 us split 4 ways (128 programs), while
# 4096x14336 (112 tiles) ran 73.2 us unsplit and 95.0 us split 2 ways (session 3, kernel time, H100).
AUTO_SPLIT = {"decode": 224, "small": 224, "medium": 100}


def fit(cfg: Config, m: int, k: int, n: int, *, target_programs: int = 0) -> Config:
    """``cfg`` with tiles shrunk so that they divide the problem: block_n | N, block_k * split_k | K.

    ``block_m`` is capped at the padded M (at least 16). N must be a multiple of 16, K a multiple of 32. With
    ``target_programs`` the K split grows (powers of two, up to 8) until there are that many programs.

    >>> fit(Config(block_n=128, block_k=256, split_k=4), m=1, k=96, n=48)
    Config(block_m=16, block_n=16, block_k=32, split_k=1, num_warps=4, num_stages=3, decode='asm', w_major=True, group_m=8, pack=2)
    """
    block_m = min(cfg.block_m, max(16, tiling.pow2_floor(m) * (2 if m & (m - 1) else 1)))
    block_n = cfg.block_n
    while n % block_n:
        block_n //= 2
    split_k = cfg.split_k
    tiles = (n // block_n) * -(-m // block_m)
    while tiles * split_k < target_programs and split_k < 8 and k // (2 * split_k) >= cfg.block_k:
        split_k *= 2
    while (k // 32) % split_k:
        split_k //= 2
    block_k = min(cfg.block_k, tiling.pow2_floor(k // split_k))
    while (k // split_k) % block_k:
        block_k //= 2
    if block_n < 16 or block_k < 32:
        raise ValueError(f"mxfp4_mm: cannot tile N = {n}, K = {k} (need N % 16 == 0 and K % 32 == 0)")
    return dataclasses.replace(cfg, block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k)


# Per card (``tuning.device_key``) or family (``tuning.family_key``): "<bucket>" / "<bucket>@<K>x<N>" -> a fused
# ``Config`` or a ``dequant_gemm.Config`` (large M: dequantize to a transient bf16 weight, then XLA's GEMM). Looked up
# before ``DEFAULTS``; a fused entry is used as given (its K split included), only fitted to the shape.
# NVIDIA H200, 2026-12-02 (benchmarks/tune_mxfp4.py, GPU kernel time, W4A4 incl. the activation quantization;
# benchmarks/NOTES.md session 5, results/mxfp4_tune_h200_2026-12-02_kernel.json). Decode: the fastest of 4-6
# tilings / K splits per shape (the shipped defaults won on three shapes). Prefill ("max": M = 2048 and 8192): the
# dequantize-then-GEMM path, 10-25% faster than the fused kernel. The "64" / "128" / "256" / "512" entries are the
# defaults pinned (not re-swept), so that the exact-shape "max" and "256" entries do not serve the buckets below.
_DQ = dequant_gemm.Config(block_n=32, block_k=512)


def _pinned(m: int, k: int, n: int) -> Config:
    cfg, _ = tiling.lookup(DEFAULTS, m, k, n)
    return fit(cfg, m, k, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


_H200 = {
    "16@4096x14336": Config(block_m=16, block_n=64, block_k=512, split_k=1),  # 22.3 us (next best 25.1)
    "16@14336x4096": Config(block_m=16, block_n=64, block_k=512, split_k=4),  # 24.6 us (24.8)
    "16@4096x4096": Config(block_m=16, block_n=64, block_k=256, split_k=8, num_stages=2),  # 12.0 us (12.4)
    "16@8192x8192": Config(block_m=16, block_n=64, block_k=512, split_k=2),  # 25.4 us (26.7)
    **{f"{b}@{k}x{n}": _pinned(int(b), k, n) for b in ("64", "128", "256", "512")
       for k, n in ((4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192))},
    # M = 2048 / 8192 (us): 14336x4096 387 / 1537 (fused 494 / -), 4096^2 121 / 470 (139), 8192^2 421 / 1555 (507);
    # 4096x14336: 1358 at M = 8192 (fused 1725); at M = 2048 the fused output disagreed with both dequant paths
    # (NOTES, session 5), so that point has no time
    "max@4096x14336": _DQ,
    "max@14336x4096": _DQ,
    "max@4096x4096": _DQ,
    "max@8192x8192": _DQ,
    # the 8B model's fused qkv_proj (4096x6144) and gate_up_proj (4096x28672) at prefill: the dequantize-then-GEMM
    # path too (session 9, helper mxdeq; by the four measured shapes above, where it beat the fused kernel by
    # 13-22%: these two shapes ran the fused 256x128x128 kernel in the 2048-token prefill; unmeasured, checked by
    # benchmarks/mxdeq_sweep.py's fused_max row). Their smaller buckets pinned to the defaults (M <= 512 unchanged)
    **{f"{b}@{k}x{n}": _pinned(int(b), k, n) for b in ("16", "64", "128", "256", "512")
       for k, n in ((4096, 6144), (4096, 28672))},
    "max@4096x6144": _DQ,
    "max@4096x28672": _DQ,
}
TUNED: dict[str, dict] = {"nvidia_h200": _H200}


def default_config(m: int, k: int, n: int, *, table: dict | None = None):
    """The config for (m, k, n): this device's ``TUNED`` entry (or ``table``'s), else the ``DEFAULTS`` entry of M's
    bucket with the shape class's K split; fitted to the shape. A ``dequant_gemm.Config`` selects the
    dequantize-then-GEMM path.

    >>> default_config(1, 4096, 4096, table={}).split_k
    4
    """
    cfg, _ = tiling.lookup(_dispatch.device_table(TUNED) if table is None else table, m, k, n)
    if isinstance(cfg, dequant_gemm.Config):
        return dequant_gemm.fit(cfg, k, n)
    if isinstance(cfg, gemv.Config):
        return cfg  # fitted by the decode GEMM (which also checks that it takes the operands)
    if cfg is not None:
        return fit(cfg, m, k, n)
    cfg, _ = tiling.lookup(DEFAULTS, m, k, n)
    return fit(cfg, m, k, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


__all__ = ["mxfp4_mm_pallas", "prepare_activations", "mma_dtype", "Config", "DEFAULTS", "default_config", "fit"]


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


def _coords(pid, n_tiles_n: int, n_tiles_m: int, group_m: int):
    """(n tile, m tile) of program ``pid`` (``tiling.grouped_program`` order)."""
    m_tile, n_tile = tiling.grouped_program(pid, n_tiles_m, n_tiles_n, group_m)
    return n_tile, m_tile


def _ptx_decode_ok() -> bool:
    """The PTX decoder's ``mul.rn.bf16x2`` needs sm90."""
    _, cc = tuning.current_device()
    return cc is not None and tuning.capability(cc) >= (9, 0)


def _kernel(xe_ref, xo_ref, w_ref, s_ref, *rest, cfg: Config, m: int, n_tiles_n: int, n_tiles_m: int,
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
        _, m_tile = _coords(pl.program_id(0), n_tiles_n, n_tiles_m, cfg.group_m)
        x_rows = lax.broadcasted_iota(jnp.int32, (bm, bkh), 0) < (m - m_tile * bm)

    def body(i, acc):
        kk = pl.multiple_of(i * bkh, bkh)
        packed = w_ref[:, pl.ds(kk, bkh)]
        sbytes = s_ref[:, pl.ds(i * bks, bks)]
        if cfg.decode == "jnp":
            lo, hi = decode.decode_jnp(packed, sbytes, w_dtype)
        else:
            lo, hi = decode.decode_asm(packed, sbytes, w_dtype, pack=cfg.pack, scale_in_asm=cfg.decode == "asm_scaled",
                                       fold=cfg.decode == "asm_fold")
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
        _, m_tile = _coords(pl.program_id(0), n_tiles_n, n_tiles_m, cfg.group_m)
        tiling.store_rows(o_ref, acc.astype(out_dtype), m - m_tile * bm)
    else:
        o_ref[...] = acc.astype(out_dtype)


def _load_rows(ref, mask):
    if mask is None:
        return ref[...]
    from jax.experimental.pallas import triton as plgpu

    return plgpu.load(ref, mask=mask, other=0)


def mxfp4_mm_pallas(x, w_packed, w_scales, bias=None, *, quantize_input=True, out_dtype=None, config=None,
                    interpret=None, fold: bool = False):
    """Pallas MXFP4 GEMM; same contract as ``quark_jax.kernels.mxfp4_mm`` (x [M, K], w_packed [N, K/2] uint8,
    w_scales [N, K/32] uint8, bias [N] or None). ``config`` (a :class:`Config`, a ``dequant_gemm.Config`` for
    the dequantize-then-GEMM path, or a ``pallas_triton_gemv.Config`` for the one-kernel decode GEMM at M <= 16
    with bf16 x, else the bucket's default) overrides the tuned choice. ``fold``: every scale byte is <= 128 (the
    caller's load-time check): the decode GEMM may use its folded-scale decode.

    >>> w = jnp.full((16, 16), 0x22, jnp.uint8); s = jnp.full((16, 1), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm_pallas(jnp.ones((1, 32)), w, s)[0, :2].tolist()
    [32.0, 32.0]
    """
    m, k = x.shape
    n = w_packed.shape[0]
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    cfg = default_config(m, k, n) if config is None else config
    if isinstance(cfg, gemv.Config):
        if gemv.supported(x.dtype, m, k, n):
            return gemv.mxfp4_mm_gemv(x, w_packed, w_scales, bias, quantize_input=quantize_input,
                                      out_dtype=out_dtype, config=cfg, fold=fold, interpret=interpret)
        cfg, _ = tiling.lookup(DEFAULTS, m, k, n)  # operands the decode GEMM does not take: the fused kernel
        cfg = fit(cfg, m, k, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))
    elif config is None:
        pass
    elif isinstance(config, dequant_gemm.Config):
        cfg = dequant_gemm.fit(config, k, n)
    else:
        cfg = fit(config, m, k, n)
    if cfg.decode != "jnp" and (interpret or not _ptx_decode_ok()):
        cfg = dataclasses.replace(cfg, decode="jnp")  # the inline PTX needs an sm90+ GPU
    if isinstance(cfg, dequant_gemm.Config):
        if dequant_gemm.ACT_OVERRIDE is not None:
            cfg = dataclasses.replace(cfg, act=dequant_gemm.ACT_OVERRIDE)
        return dequant_gemm.mxfp4_mm_dequant_gemm(x, w_packed, w_scales, bias, quantize_input=bool(quantize_input),
                                                  out_dtype=out_dtype, cfg=cfg,
                                                  mma_dtype=mma_dtype(x.dtype, quantize_input),
                                                  interpret=bool(interpret))
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
        return _coords(pid, n_tiles_n, n_tiles_m, cfg.group_m)

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
    out_shape, out_spec, kernel_out = tiling.split_k_output(m, n, splits=splits, block_m=bm, block_n=bn,
                                                            out_dtype=out_dtype, tile=lambda pid: coords(pid)[::-1])
    kernel = functools.partial(_kernel, cfg=cfg, m=m, n_tiles_n=n_tiles_n, n_tiles_m=n_tiles_m, k_steps=k_steps,
                               w_dtype=w_dtype, precision=precision, has_bias=fused_bias, out_dtype=kernel_out)
    name = f"mxfp4_mm_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{splits}"
    out = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=grid,
                             in_specs=in_specs, out_specs=out_spec)(*args)
    if splits > 1:
        out = tiling.finish_splits(out, bias, out_dtype)
    return out
