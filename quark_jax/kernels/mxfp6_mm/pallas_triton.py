"""Pallas (Triton lowering) MXFP6 weight GEMM that reads the packed 6-bit weight and its E8M0 scales straight from
HBM (6.25 bits per weight); its ``Config`` and defaults.

``y = linear(x, dequantize_mx(w_packed, w_scales, element), bias)``, f32 accumulation, one rounding. Layout: four
codes of consecutive K elements ``4j + i`` share a 24-bit little-endian word (bytes ``3j .. 3j+2``). The weight is
read as three byte planes (a [N, K/4, 3] view: strided loads), the word assembled in int32 and the four codes ``i``
decoded into four planes [bn, K/4]; x is split once (XLA) into its four column phases ``x[:, i::4]`` and the
kernel adds ``plane_i @ x_i^T`` (the MXFP4 kernel's even/odd trick with four phases). Decode: normal codes as the
float32 bit pattern ``(e - bias + 127) << 23 | m << (23 - mbits)``, subnormals ``m * 2**(1 - bias - mbits)``, the
sign, then the block scale (``quant.apply_e8m0_scale``, exact) and one rounding to the MMA dtype (exact for bf16 /
f16 up to range). Not measured on a GPU (no ``auto`` entry picks it: impl="pallas" runs it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import _dispatch, tiling
from quark_jax.quant import apply_e8m0_scale


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiles and launch parameters (powers of two); ``block_k`` a multiple of 64 (16 words of each phase).

    >>> Config(block_m=16, block_n=64, block_k=256).block_k // 4   # words (elements of each phase) per K step
    64
    """

    block_m: int = 16  # rows of x per program (M is masked to it)
    block_n: int = 64  # weight rows per program
    block_k: int = 256  # K elements per loop step
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums reduced by XLA)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth
    group_m: int = 8  # row blocks per column strip in the program order (L2 reuse)

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_m", "block_n", "block_k", "split_k", "num_warps", "group_m"))
        if self.block_m < 16 or self.block_n < 16 or self.block_k < 64:
            raise ValueError(f"Config: block_m, block_n >= 16 and block_k >= 64, got {self.block_m}, "
                             f"{self.block_n}, {self.block_k}")


DEFAULTS = {  # the MXFP4 kernel's decode / prefill shapes (not tuned for MXFP6)
    "16": Config(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3),
    "64": Config(block_m=64, block_n=64, block_k=256, num_warps=4, num_stages=3),
    "max": Config(block_m=128, block_n=64, block_k=128, num_warps=4, num_stages=3, group_m=4),
}
AUTO_SPLIT = {"decode": 224, "small": 224}


def fit(cfg: Config, m: int, k: int, n: int, *, target_programs: int = 0) -> Config:
    """``cfg`` with ``block_n | N``, ``block_k * split_k | K``, ``block_m`` capped at M's power of two (>= 16);
    with ``target_programs`` the K split grows (up to 8) until there are that many programs.

    >>> fit(Config(block_n=128, block_k=512), m=1, k=128, n=48)
    Config(block_m=16, block_n=16, block_k=128, split_k=1, num_warps=4, num_stages=3, group_m=8)
    """
    block_m = min(cfg.block_m, max(16, tiling.pow2_ceil(m)))
    block_n = cfg.block_n
    while n % block_n:
        block_n //= 2
    split_k = cfg.split_k
    tiles = (n // block_n) * -(-m // block_m)
    while tiles * split_k < target_programs and split_k < 8 and k // (2 * split_k) >= 64:
        split_k *= 2
    while (k // 64) % split_k:
        split_k //= 2
    block_k = min(cfg.block_k, tiling.pow2_floor(k // split_k))
    while (k // split_k) % block_k:
        block_k //= 2
    if block_n < 16 or block_k < 64:
        raise ValueError(f"mxfp6_mm: cannot tile N = {n}, K = {k} (need N % 16 == 0 and K % 64 == 0)")
    return dataclasses.replace(cfg, block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k)


def default_config(m: int, k: int, n: int) -> Config:
    """The config for the M bucket of ``m`` fitted to the problem, with the class's K split.

    >>> default_config(1, 4096, 4096).split_k
    4
    """
    cfg, _ = tiling.lookup(DEFAULTS, m, k, n)
    return fit(cfg, m, k, n, target_programs=AUTO_SPLIT.get(tiling.shape_class(m), 0))


def decode_codes(codes, element: str):
    """float32 values of 6-bit codes (int32 array) of ``element`` (exact; normal numbers only).

    >>> decode_codes(jnp.array([1, 8, 31, 33], jnp.int32), "fp6_e2m3").tolist()
    [0.125, 1.0, 7.5, -0.125]
    """
    el = formats.mx_element(element)
    mag = codes & 31
    e = mag >> el.mbits
    m = mag & ((1 << el.mbits) - 1)
    normal = lax.bitcast_convert_type(((e + (127 - el.bias)) << 23) | (m << (23 - el.mbits)), jnp.float32)
    sub = m.astype(jnp.float32) * jnp.float32(2.0 ** (1 - el.bias - el.mbits))
    val = jnp.where(e == 0, sub, normal)
    return jnp.where((codes & 32) != 0, -val, val)


def prepare_activations(x, rows: int):
    """The four column phases ``x[:, i::4]`` [rows, K/4] (rows zero-padded to ``rows``), one fused XLA pass.

    >>> [p[0, :2].tolist() for p in prepare_activations(jnp.arange(8.0)[None], 1)]
    [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]
    """
    m, k = x.shape
    q = jnp.pad(x, ((0, rows - m), (0, 0))).reshape(rows, k // 4, 4)
    return tuple(q[:, :, i] for i in range(4))


def _kernel(x0, x1, x2, x3, w_ref, s_ref, *rest, cfg: Config, m: int, element: str, k_steps: int, n_tiles_n: int,
            n_tiles_m: int, dtype, precision, has_bias: bool, out_dtype):
    if has_bias:
        b_ref, o_ref = rest
    else:
        (o_ref,) = rest
    bm, bn = cfg.block_m, cfg.block_n
    bkq = cfg.block_k // 4  # words (elements of each phase) per K step
    nb = cfg.block_k // formats.MX_BLOCK_SIZE  # scale bytes per K step
    m_tile, _ = tiling.grouped_program(pl.program_id(0), n_tiles_m, n_tiles_n, cfg.group_m)
    x_rows = None
    if m % bm:
        x_rows = lax.broadcasted_iota(jnp.int32, (bm, bkq), 0) < (m - m_tile * bm)
    dims = (((1,), (1,)), ((), ()))
    xs = (x0, x1, x2, x3)

    def body(i, acc):
        j0 = pl.multiple_of(i * bkq, bkq)
        word = (w_ref[:, pl.ds(j0, bkq), jnp.int32(0)].astype(jnp.int32)
                | (w_ref[:, pl.ds(j0, bkq), jnp.int32(1)].astype(jnp.int32) << 8)
                | (w_ref[:, pl.ds(j0, bkq), jnp.int32(2)].astype(jnp.int32) << 16))
        sbytes = s_ref[:, pl.ds(i * nb, nb)]
        for p in range(4):
            vals = decode_codes((word >> (6 * p)) & 63, element)
            scaled = apply_e8m0_scale(vals.reshape(bn, nb, 8), sbytes.reshape(bn, nb, 1)).reshape(bn, bkq)
            xp = tiling.masked_load(xs[p].at[:, pl.ds(j0, bkq)], x_rows)
            acc += lax.dot_general(scaled.astype(dtype), xp, dims, precision=precision,
                                   preferred_element_type=jnp.float32)
        return acc

    acc = lax.fori_loop(0, k_steps, body, jnp.zeros((bn, bm), jnp.float32)).T
    if has_bias:
        acc = acc + b_ref[...].astype(jnp.float32)[None, :]
    tiling.store_rows(o_ref, acc.astype(out_dtype), m - m_tile * bm if m % bm else None)


def mxfp6_mm_pallas(x, w_packed, w_scales, bias=None, *, element: str = "fp6_e2m3", out_dtype=None, config=None,
                    interpret=None):
    """Pallas MXFP6 GEMM; same contract as ``quark_jax.kernels.mxfp6_mm`` (K a multiple of 64, N of 16).

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 64), 0.5), "fp6_e2m3")
    >>> mxfp6_mm_pallas(jnp.ones((1, 64)), w, s)[0, :2].tolist()
    [32.0, 32.0]
    """
    m, k = x.shape
    n = w_packed.shape[0]
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else interpret
    cfg = default_config(m, k, n) if config is None else fit(config, m, k, n)
    return _mxfp6_mm_jit(x, w_packed, w_scales, bias, element=element, out_dtype=out_dtype, cfg=cfg,
                         interpret=bool(interpret))


@functools.partial(jax.jit, static_argnames=("element", "out_dtype", "cfg", "interpret"))
def _mxfp6_mm_jit(x, w_packed, w_scales, bias, *, element, out_dtype, cfg, interpret):
    m, k = x.shape
    n = w_packed.shape[0]
    bm, bn, splits = cfg.block_m, cfg.block_n, cfg.split_k
    n_tiles_m = pl.cdiv(m, bm)
    n_tiles_n = n // bn
    dtype = jnp.dtype(x.dtype)
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    kq_split = k // 4 // splits
    ks_split = k // formats.MX_BLOCK_SIZE // splits
    k_steps = kq_split // (cfg.block_k // 4)
    fused_bias = bias is not None and splits == 1
    grid = (n_tiles_n * n_tiles_m, splits)

    def coords(pid):  # (m tile, n tile)
        return tiling.grouped_program(pid, n_tiles_m, n_tiles_n, cfg.group_m)

    x_spec = pl.BlockSpec((bm, kq_split), lambda pid, s: (coords(pid)[0], s))
    in_specs = [x_spec] * 4 + [
        pl.BlockSpec((bn, kq_split, 3), lambda pid, s: (coords(pid)[1], s, 0)),
        pl.BlockSpec((bn, ks_split), lambda pid, s: (coords(pid)[1], s)),
    ]
    args = [*prepare_activations(x, m), w_packed.reshape(n, k // 4, 3), w_scales]
    if fused_bias:
        in_specs.append(pl.BlockSpec((bn,), lambda pid, s: (coords(pid)[1],)))
        args.append(bias)
    out_shape, out_spec, kernel_out = tiling.split_k_output(m, n, splits=splits, block_m=bm, block_n=bn,
                                                            out_dtype=out_dtype, tile=coords)
    kernel = functools.partial(_kernel, cfg=cfg, m=m, element=element, k_steps=k_steps, n_tiles_n=n_tiles_n,
                               n_tiles_m=n_tiles_m, dtype=dtype, precision=precision, has_bias=fused_bias,
                               out_dtype=kernel_out)
    name = f"mxfp6_mm_{bm}x{bn}x{cfg.block_k}_s{splits}"
    out = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=grid,
                             in_specs=in_specs, out_specs=out_spec)(*args)
    if splits > 1:
        out = tiling.finish_splits(out, bias, out_dtype)
    return out


__all__ = ["mxfp6_mm_pallas", "Config", "DEFAULTS", "default_config", "fit", "decode_codes", "prepare_activations"]
