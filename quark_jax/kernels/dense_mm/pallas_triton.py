"""Pallas (Triton lowering) dense decode GEMM ``y[M, N] = out(x[M, K] @ w[K, N] + bias)`` for small M (decode,
M <= 16); its ``Config`` and tuned defaults.

The weight is read in the layout a float ``nnx.Linear`` stores its ``kernel``, [K, N] (N contiguous: each weight
tile ``w[k0:k0+bk, c0:c0+bn]`` is ``bk`` rows of ``bn`` contiguous elements; no repack, loading is unchanged).
bf16 / f16 (and f32, full-precision products) operands, float32 accumulation, one rounding to ``out_dtype``.
A skinny GEMM is a weight stream: each program owns ``block_n`` output columns of one ``block_m``-row block and
walks its K range in ``block_k`` steps; a :class:`Config` picks how a tile product is formed (``inner``):

- ``"xw"``: ``dot(x[bm, bk], w[bk, bn])`` on tensor cores (``block_m`` 16, rows past M masked);
- ``"wx"``: ``dot(w^T[bn, bk], x^T[bk, bm])``: the weight the tall operand (as the FP8 decode kernel's ``wx``);
- ``"fma"``: no tensor cores: float32 multiply-adds into a [bk, bn] tile, summed over K once at the end
  (``block_m`` 1: one row per program).

With ``split_k > 1`` programs share a tile's K range and write float32 partial sums [splits, M, N]; XLA sums them
(``kernels.tiling.finish_splits``: elementwise adds that fuse into the consumer), adds the bias and rounds. N and K
must be multiples of 16; blocks are shrunk to divide them (:func:`fit`). Tuned configs: ``TUNED`` (a table of the
8B Llama decode shapes for sm90, kept in this module), else ``DEFAULTS`` with an automatic K split.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from quark_jax.kernels import _dispatch, tiling

DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
INNERS = ("xw", "wx", "fma")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One tiling of the dense decode GEMM ``y[M, N] = x[M, K] @ w[K, N]``.

    >>> Config(block_m=16, block_n=64, block_k=256, split_k=4).grid_programs(m=1, n=6144)
    384
    """

    block_m: int = 16  # output rows per program (1 with inner="fma")
    block_n: int = 64  # output columns per program
    block_k: int = 256  # K step of a program's loop
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums summed by XLA)
    inner: str = "wx"  # "xw" / "wx" (tensor cores) or "fma" (f32 multiply-adds, block_m == 1); module docstring
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth

    def __post_init__(self):
        if self.inner not in INNERS:
            raise ValueError(f"Config.inner: expected one of {INNERS}, got {self.inner!r}")
        for name in ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {v!r}")
        tiling.check_powers_of_two(self, ("block_m", "block_n", "block_k"))
        if self.inner == "fma" and self.block_m != 1:
            raise ValueError(f"Config: inner='fma' needs block_m == 1, got {self.block_m}")
        if self.inner != "fma" and (self.block_m < 16 or self.block_n < 16 or self.block_k < 16):
            raise ValueError(f"Config: tensor-core tiles need block_m, block_n, block_k >= 16, got "
                             f"{self.block_m}x{self.block_n}x{self.block_k}")

    def grid_programs(self, m: int, n: int) -> int:
        return -(-m // self.block_m) * (n // self.block_n) * self.split_k

    def short(self) -> str:
        """A compact name, e.g. ``wx 16x64x256 s4 w4 st3``."""
        return (f"{self.inner} {self.block_m}x{self.block_n}x{self.block_k} s{self.split_k} w{self.num_warps} "
                f"st{self.num_stages}")


def _largest_pow2_dividing(limit: int, size: int, floor: int) -> int:
    b = limit
    while b > floor and size % b:
        b //= 2
    return b


def fit(cfg: Config, m: int, k: int, n: int) -> Config:
    """``cfg`` adjusted to the shape: ``block_n`` divides N, ``split_k`` divides K into multiples of 16,
    ``block_k`` divides K / split_k, ``block_m`` 16 for tensor-core tiles (the smallest MMA), ``fma`` only for one
    row (else ``wx``).

    >>> fit(Config(block_n=256, block_k=512, split_k=4, inner="fma", block_m=1), m=3, k=96, n=48).short()
    'wx 16x16x32 s3 w4 st3'
    """
    if n % 16 or k % 16:
        raise ValueError(f"dense Pallas GEMM: N = {n} and K = {k} must be multiples of 16")
    inner, bm = cfg.inner, cfg.block_m
    if inner == "fma" and m != 1:
        inner, bm = "wx", 16
    if inner != "fma":
        bm = 16
    bn = _largest_pow2_dividing(cfg.block_n, n, 16)
    splits = cfg.split_k
    while splits > 1 and (k % splits or (k // splits) % 16):
        splits -= 1
    kk = k // splits
    bk = _largest_pow2_dividing(min(cfg.block_k, tiling.pow2_ceil(kk)), kk, 16)
    return dataclasses.replace(cfg, block_m=bm, block_n=bn, block_k=bk, split_k=splits, inner=inner)


# Heuristic defaults (any shape not in a table): narrow N blocks streaming the weight, K split automatically
# (``_auto_splits``) where the N blocks alone give few programs; one row with "fma", 2..16 rows with "wx".
DEFAULTS = {
    "1": Config(block_m=16, block_n=64, block_k=256, inner="wx", num_warps=4, num_stages=3),
    "16": Config(block_m=16, block_n=64, block_k=256, inner="wx", num_warps=4, num_stages=3),
}

# The 8B Llama decode shapes (K x N: fused qkv, o_proj, fused gate_up, down_proj, lm_head) on sm90. First guesses
# (session 8, helper densegemv, written without a GPU): bk 64-128 keeps a stage at 18-36 KB of shared memory, so
# 2-3 programs share an SM and one's pipeline prologue hides behind another's stream; the K split brings the
# programs to ~2-3 per SM (132 SMs). Measured once, not swept (H200, session 8, M = 1, GPU kernel time): 16.2 /
# 10.9 / 54.5 / 29.4 / 253.5 us in the order below, XLA 18.8 / 12.9 / 58.9 / 32.7 / 235.4 (the LM head stays on
# XLA: ``llama.DENSE_DECODE_GEMM = "layers"``); the ``bench_gemm --ops dense --sweep`` rows may replace them
# (benchmarks/NOTES.md, "Session 8, helper densegemv").
_SM90 = {
    "16@4096x6144": Config(block_n=64, block_k=128, split_k=4, inner="wx", num_warps=4, num_stages=4),  # 384
    "16@4096x4096": Config(block_n=64, block_k=128, split_k=4, inner="wx", num_warps=4, num_stages=4),  # 256
    "16@4096x28672": Config(block_n=128, block_k=64, split_k=1, inner="wx", num_warps=4, num_stages=4),  # 224
    "16@14336x4096": Config(block_n=64, block_k=128, split_k=4, inner="wx", num_warps=4, num_stages=4),  # 256
    "16@4096x128256": Config(block_n=128, block_k=64, split_k=1, inner="wx", num_warps=4, num_stages=4),  # 1002
}

TUNED: dict[str, dict[str, Config]] = {"sm90": _SM90}
"""Device or family key -> {table key (``kernels.tiling``): Config}; a row serves M <= its bucket."""

_MIN_PROGRAMS = 264  # two programs per SM of an H100 / H200 (132 SMs)


def _auto_splits(cfg: Config, m: int, k: int, n: int) -> Config:
    """For a default config: split K (up to 8) while the N blocks give fewer than ``_MIN_PROGRAMS``."""
    if cfg.split_k != 1:
        return cfg
    programs = -(-m // cfg.block_m) * max(n // cfg.block_n, 1)
    splits = 1
    while splits < 8 and programs * splits < _MIN_PROGRAMS and (k // (2 * splits)) % cfg.block_k == 0:
        splits *= 2
    return dataclasses.replace(cfg, split_k=splits)


def select(m: int, k: int, n: int, table: dict | None = None) -> Config:
    """The config for shape (m, k, n) from ``table`` (default: this device's entry of ``TUNED``), else
    ``DEFAULTS`` with an automatic K split; already ``fit`` to the shape.

    >>> select(1, 4096, 4096, table={}).short()
    'wx 16x64x256 s8 w4 st3'
    """
    cfg, _ = tiling.lookup(_dispatch.device_table(TUNED) if table is None else table, m, k, n)
    if cfg is None:
        base, _ = tiling.lookup(DEFAULTS, m, k, n)
        cfg = _auto_splits(base or DEFAULTS["16"], m, k, n)
    return fit(cfg, m, k, n)


def _kernel(x_ref, w_ref, *rest, m: int, k: int, n: int, cfg: Config, has_bias: bool, partial: bool, out_dtype,
            precision):
    b_ref = rest[0] if has_bias else None
    o_ref = rest[-1]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    num_n = n // bn
    pid = pl.program_id(0)
    pid_m, pid_n = pid // num_n, pid % num_n
    split = pl.program_id(1)
    r0 = pl.multiple_of(pid_m * bm, bm)
    c0 = pl.multiple_of(pid_n * bn, bn)
    k_len = k // cfg.split_k
    k_first = split * k_len
    steps = k_len // bk
    ragged = m % bm != 0
    row_mask = (r0 + jnp.arange(bm, dtype=jnp.int32)) < m if ragged else None

    def load_w(i):
        k0 = pl.multiple_of(k_first + i * bk, bk)
        return w_ref[pl.ds(k0, bk), pl.ds(c0, bn)]  # [bk, bn], N contiguous

    def load_x(i):
        k0 = pl.multiple_of(k_first + i * bk, bk)
        ref = x_ref.at[pl.ds(r0, bm), pl.ds(k0, bk)]
        return tiling.masked_load(ref, row_mask[:, None] if ragged else None)  # [bm, bk]

    if cfg.inner == "fma":  # one row: r0 == pid_m < m, nothing to mask
        def body(i, acc):
            k0 = pl.multiple_of(k_first + i * bk, bk)
            x = x_ref[pl.ds(r0, 1), pl.ds(k0, bk)].astype(jnp.float32)  # [1, bk]
            return acc + load_w(i).astype(jnp.float32) * x.T

        acc = lax.fori_loop(0, steps, body, jnp.zeros((bk, bn), jnp.float32))
        acc = jnp.sum(acc, axis=0)[None, :]  # [1, bn]
    elif cfg.inner == "wx":
        def body(i, acc):  # w^T @ x^T: [bn, bk] x [bk, bm]
            return acc + lax.dot_general(load_w(i), load_x(i), (((0,), (1,)), ((), ())), precision=precision,
                                         preferred_element_type=jnp.float32)

        acc = lax.fori_loop(0, steps, body, jnp.zeros((bn, bm), jnp.float32)).T  # [bm, bn]
    else:
        def body(i, acc):  # x @ w: [bm, bk] x [bk, bn]
            return acc + lax.dot_general(load_x(i), load_w(i), (((1,), (0,)), ((), ())), precision=precision,
                                         preferred_element_type=jnp.float32)

        acc = lax.fori_loop(0, steps, body, jnp.zeros((bm, bn), jnp.float32))

    out_mask = row_mask[:, None] if ragged else None
    if partial:
        plgpu.store(o_ref.at[split, pl.ds(r0, bm), pl.ds(c0, bn)], acc, mask=out_mask)
        return
    if has_bias:
        acc = acc + b_ref[pl.ds(c0, bn)].astype(jnp.float32)[None, :]
    plgpu.store(o_ref.at[pl.ds(r0, bm), pl.ds(c0, bn)], acc.astype(out_dtype), mask=out_mask)


def _check(x, w_kn, bias, out_dtype):
    names = ", ".join(str(jnp.dtype(d)) for d in DTYPES)
    if x.ndim != 2 or w_kn.ndim != 2:
        raise ValueError(f"x, w_kn: expected 2-D [M, K] and [K, N], got shapes {tuple(x.shape)}, "
                         f"{tuple(w_kn.shape)}")
    if x.dtype not in [jnp.dtype(d) for d in DTYPES]:
        raise TypeError(f"x: expected dtype {names}, got {x.dtype}")
    if w_kn.dtype != x.dtype:
        raise TypeError(f"w_kn: expected x's dtype {x.dtype}, got {w_kn.dtype}")
    if jnp.dtype(out_dtype) not in [jnp.dtype(d) for d in DTYPES]:
        raise TypeError(f"out_dtype: expected {names}, got {jnp.dtype(out_dtype)}")
    if w_kn.shape[0] != x.shape[1]:
        raise ValueError(f"w_kn: expected shape [{x.shape[1]}, N] ([K, N], K of x), got {tuple(w_kn.shape)}")
    if bias is not None and bias.shape != (w_kn.shape[1],):
        raise ValueError(f"bias: expected shape ({w_kn.shape[1]},), got {tuple(bias.shape)}")


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def dense_mm_pallas(x, w_kn, bias=None, *, out_dtype=None, config=None, interpret=None):
    """``out_dtype(x @ w_kn + bias)`` as one Pallas-Triton kernel (plus XLA's sum of the K split's partials).

    Args:
      x: [M, K] bf16, f16 or f32; any M (ragged M is masked; meant for M <= 16).
      w_kn: [K, N] of x's dtype (the ``nnx.Linear`` kernel layout); N and K multiples of 16.
      bias: optional [N] (any float dtype; added in f32).
      out_dtype: bf16, f16 or f32; None: x's dtype.
      config: a :class:`Config` (fit to the shape); None picks one for this device and shape (:func:`select`).
      interpret: run the kernel in Pallas interpret mode; None means "unless on a CUDA GPU".

    Returns [M, N] ``out_dtype``; float32 products (f32 operands: full precision, not TF32) summed in float32.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((3, 64), jnp.bfloat16); w = jnp.full((64, 32), 0.5, jnp.bfloat16)
    >>> y = dense_mm_pallas(x, w, jnp.ones(32), out_dtype=jnp.float32)
    >>> y.shape, float(y[2, 31])
    ((3, 32), 33.0)
    """
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    _check(x, w_kn, bias, out_dtype)
    m, k = x.shape
    n = w_kn.shape[1]
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    cfg = select(m, k, n) if config is None else fit(config, m, k, n)
    partial = cfg.split_k > 1
    has_bias = bias is not None
    precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    out_shape = (jax.ShapeDtypeStruct((cfg.split_k, m, n), jnp.float32) if partial
                 else jax.ShapeDtypeStruct((m, n), out_dtype))
    kernel = functools.partial(_kernel, m=m, k=k, n=n, cfg=cfg, has_bias=has_bias and not partial,
                               partial=partial, out_dtype=out_dtype, precision=precision)
    operands = [x, w_kn] + ([bias] if has_bias and not partial else [])
    grid = (pl.cdiv(m, cfg.block_m) * (n // cfg.block_n), cfg.split_k)
    name = f"dense_mm_{cfg.inner}_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{cfg.split_k}"
    y = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=bool(interpret), out_shape=out_shape,
                           grid=grid)(*operands)
    return tiling.finish_splits(y, bias, out_dtype) if partial else y


__all__ = ["dense_mm_pallas", "Config", "DEFAULTS", "TUNED", "select", "fit"]
