"""Pallas (Triton lowering) FP8 W8A8 GEMM with the scales and bias fused into the epilogue; its ``Config`` and
tuned defaults.

``y[m, n] = out(x_scale[m] * (w_scale[n] * sum_k x_q[m, k] w_q[n, k]) + bias[n])`` with f32 accumulation and one
rounding to ``out_dtype``. ``x_q`` [M, K] and ``w_q`` [N, K] are float8_e4m3fn (the weight as the checkpoint stores
it, K-major: tiles are read without a transpose). One kernel body serves every shape class; a :class:`Config`
picks the tiling:

- decode / small M: one short row block (``block_m`` 16, masked to M, or a single row with ``inner="fma"``),
  many narrow N blocks, each streaming its weight rows over the whole of K (``split_k=1``) or a K range;
- prefill: large tensor-core tiles, programs grouped along M for L2 reuse.

Ragged M is masked (rows past M are neither read nor written). N and K must be multiples of 16; blocks are
shrunk to divide them (:func:`fit`). With ``split_k > 1`` the kernel writes f32 partial sums [splits, M, N] and
one XLA fusion sums, scales, adds the bias and rounds. Tuned configs: ``TUNED`` (device or family key -> table
keyed as in ``quark_jax.kernels.tiling``), else ``DEFAULTS`` with an automatic K split.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from quark_jax.kernels import _dispatch, prologue, tiling

SUPPORTED_DTYPES = (jnp.float8_e4m3fn,)
FLOAT_INPUTS = (jnp.bfloat16, jnp.float16, jnp.float32)  # x quantized in the kernel prologue (static scale)
OUT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
INNERS = ("xw", "wx", "fma")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One tiling of the FP8 GEMM ``y[M, N] = x[M, K] @ w[N, K]^T``.

    >>> Config(block_m=16, block_n=64, block_k=256, split_k=2, inner="wx").grid_programs(m=16, n=4096)
    128
    """

    block_m: int  # output rows per program
    block_n: int  # output columns per program
    block_k: int  # K step of a program's loop
    split_k: int = 1  # programs sharing one tile's K range (> 1: f32 partial sums reduced by XLA)
    group_m: int = 1  # row blocks per column strip in the program order (L2 reuse for prefill)
    # how a tile product is formed: "xw" dot(x[bm, bk], w[bn, bk]^T) on tensor cores; "wx" dot(w, x^T), the weight
    # the tall operand (skinny M); "fma" no tensor cores, f32 multiply-adds into a [bn, bk] tile (block_m == 1)
    inner: str = "xw"
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 3  # Triton software-pipelining depth

    def __post_init__(self):
        if self.inner not in INNERS:
            raise ValueError(f"Config.inner: expected one of {INNERS}, got {self.inner!r}")
        for name in ("block_m", "block_n", "block_k", "split_k", "group_m", "num_warps", "num_stages"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {v!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"Config.{name}: expected a power of two, got {v}")
        if self.inner == "fma" and self.block_m != 1:
            raise ValueError(f"Config: inner='fma' needs block_m == 1, got {self.block_m}")
        if self.inner != "fma" and (self.block_m < 16 or self.block_n < 16 or self.block_k < 32):
            raise ValueError(f"Config: tensor-core tiles need block_m, block_n >= 16 and block_k >= 32, got "
                             f"{self.block_m}x{self.block_n}x{self.block_k}")

    def grid_programs(self, m: int, n: int) -> int:
        return -(-m // self.block_m) * (n // self.block_n) * self.split_k

    def short(self) -> str:
        """A compact name, e.g. ``wx 16x64x256 s2 g1 w4 st3``."""
        return (f"{self.inner} {self.block_m}x{self.block_n}x{self.block_k} s{self.split_k} g{self.group_m} "
                f"w{self.num_warps} st{self.num_stages}")


def _largest_pow2_dividing(limit: int, size: int, floor: int) -> int:
    b = limit
    while b > floor and size % b:
        b //= 2
    return b


def fit(cfg: Config, m: int, k: int, n: int) -> Config:
    """``cfg`` adjusted to the shape: blocks divide N and K / split_k (N, K multiples of 16), ``block_m`` no
    larger than needed, ``fma`` only for one row.

    >>> fit(Config(block_m=128, block_n=256, block_k=128, group_m=8, num_warps=8), m=5, k=96, n=48).short()
    'xw 16x16x32 s1 g8 w8 st3'
    """
    if n % 16 or k % 16:
        raise ValueError(f"fp8 Pallas GEMM: N = {n} and K = {k} must be multiples of 16")
    inner, bm = cfg.inner, cfg.block_m
    if inner == "fma" and m != 1:
        inner, bm = "wx", 16
    if inner != "fma":
        bm = max(16, min(bm, tiling.pow2_ceil(m)))
    bn = _largest_pow2_dividing(cfg.block_n, n, 16)
    bk = min(cfg.block_k, tiling.pow2_ceil(k))
    floor_k = 16 if inner == "fma" else 32
    splits = cfg.split_k
    while splits > 1 and (k % splits or (k // splits) % floor_k):
        splits -= 1
    kk = k // splits
    bk = _largest_pow2_dividing(bk, kk, floor_k)
    if kk % bk:  # K = 16 * odd: only the tensor-core floor of 32 failed; fall back to one-row fma tiles of 16
        bk = 16
        inner, bm = "fma", 1
    return dataclasses.replace(cfg, block_m=bm, block_n=bn, block_k=bk, split_k=splits, inner=inner)


# Heuristic defaults (any device, any shape not in a table; keyed by M bucket): skinny M streams the weight with
# narrow N blocks over the whole of K (K is split only when N alone gives too few programs, see ``_auto_splits``);
# large M uses big tensor-core tiles with grouped ordering. Chosen from the H100 sweeps (benchmarks/NOTES.md).
DEFAULTS = {
    "1": Config(block_m=16, block_n=32, block_k=256, inner="wx", num_warps=4, num_stages=3),
    "16": Config(block_m=16, block_n=32, block_k=512, inner="wx", num_warps=4, num_stages=3),
    "64": Config(block_m=64, block_n=64, block_k=256, inner="xw", num_warps=4, num_stages=3),
    "max": Config(block_m=128, block_n=128, block_k=128, group_m=8, num_warps=4, num_stages=4),
}

_SM90 = {  # measured on an NVIDIA H100 80GB HBM3; serves every sm90 card
    # Decode rows (M = 1, 16) re-tuned 2026-11-25 by GPU kernel time (profiler trace; benchmarks/decode_retune.py):
    # all tilings within ~5% (22-26 us at 58-67 MB of weights, ~2.6 TB/s); the first tables, picked by batched wall
    # time (launch-gap bound on the lent VM), were within 0-2% of these.
    # M = 1
    "1@4096x14336": Config(block_m=16, block_n=64, block_k=256, inner="wx", num_warps=4, num_stages=3),
    "1@14336x4096": Config(block_m=16, block_n=32, block_k=256, split_k=4, inner="wx", num_warps=4, num_stages=4),
    "1@4096x4096": Config(block_m=16, block_n=32, block_k=256, split_k=2, inner="wx", num_warps=4, num_stages=4),
    "1@8192x8192": Config(block_m=16, block_n=32, block_k=512, inner="wx", num_warps=4, num_stages=3),
    # the fused qkv_proj / gate_up_proj of an 8B Llama, and 14336x4096's K split 2 -> 4: H200 sweep, session 8
    # (bench_gemm --sweep, GPU kernel time: 9.6 vs 10.2 us, 30.3 vs 30.7, 17.6 vs 18.3)
    "1@4096x6144": Config(block_m=16, block_n=64, block_k=256, split_k=4, inner="wx", num_warps=4, num_stages=3),
    "1@4096x28672": Config(block_m=16, block_n=128, block_k=256, inner="wx", num_warps=4, num_stages=3),
    # 2 <= M <= 16
    "16@4096x14336": Config(block_m=16, block_n=64, block_k=256, inner="wx", num_warps=4, num_stages=3),
    "16@14336x4096": Config(block_m=16, block_n=64, block_k=256, split_k=4, inner="wx", num_warps=4, num_stages=3),
    "16@4096x4096": Config(block_m=16, block_n=32, block_k=256, inner="wx", num_warps=4, num_stages=4),
    "16@8192x8192": Config(block_m=16, block_n=32, block_k=512, inner="wx", num_warps=4, num_stages=3),
    # 17 <= M <= 64
    "64@4096x14336": Config(block_m=64, block_n=64, block_k=256, inner="wx", num_warps=4, num_stages=3),
    "64@14336x4096": Config(block_m=64, block_n=64, block_k=256, split_k=2, inner="xw", num_warps=4, num_stages=3),
    "64@4096x4096": Config(block_m=64, block_n=64, block_k=256, inner="wx", num_warps=4, num_stages=3),
    "64@8192x8192": Config(block_m=64, block_n=64, block_k=256, inner="xw", num_warps=4, num_stages=3),
    # 65 <= M <= 256 (XLA is faster here on the H100; these are the best Pallas tilings measured)
    "256@14336x4096": Config(block_m=128, block_n=128, block_k=128, split_k=2, group_m=8, num_warps=4, num_stages=4),
    "256@4096x4096": Config(block_m=64, block_n=128, block_k=128, group_m=8, num_warps=4, num_stages=4),
}

# Tuned tables: device key or family key -> {table key: Config} (keys as in ``quark_jax.kernels.tiling``), from
# the H100 sweeps (benchmarks/NOTES.md, "FP8 W8A8"); a row is used as is (after ``fit``).
TUNED: dict[str, dict[str, Config]] = {"sm90": _SM90}

# Programs wanted for a streaming (skinny-M) kernel, ~1.5 per SM of an H100 (132 SMs): in the sweeps, splitting K
# paid where N alone gave 64-128 programs and cost where it gave 224 or more.
_MIN_PROGRAMS = 200


def _auto_splits(cfg: Config, m: int, k: int, n: int) -> Config:
    """For a default skinny config: split K (up to 4) while the N blocks give fewer than ``_MIN_PROGRAMS``."""
    if cfg.block_m > 64 or cfg.split_k != 1:
        return cfg
    programs = -(-m // cfg.block_m) * max(n // cfg.block_n, 1)
    splits = 1
    while splits < 4 and programs * splits < _MIN_PROGRAMS and (k // (2 * splits)) % cfg.block_k == 0:
        splits *= 2
    return dataclasses.replace(cfg, split_k=splits)


def select(m: int, k: int, n: int, table: dict | None = None) -> Config:
    """The config for shape (m, k, n) from ``table`` (default: this device's entry of ``TUNED``), else
    ``DEFAULTS`` with an automatic K split; already ``fit`` to the shape.

    >>> select(1, 4096, 14336, table={}).block_m
    16
    """
    cfg, _ = tiling.lookup(_dispatch.device_table(TUNED) if table is None else table, m, k, n)
    if cfg is None:
        cfg = _auto_splits(tiling.lookup(DEFAULTS, m, k, n)[0], m, k, n)
    return fit(cfg, m, k, n)


def _dot_nt(a, b):
    """``a[p, k] @ b[q, k]^T`` -> f32 [p, q] (both operands K-major, as FP8 tensor cores want them)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, *rest, m: int, k: int, n: int, cfg: Config,
            per_token: bool, per_channel: bool, has_bias: bool, partial: bool, out_dtype, quantize: bool = False,
            interpret: bool = False, transform: str = "none"):
    b_ref = rest[0] if has_bias else None
    if transform == "rmsnorm":  # the norm's inverse RMS [M] f32 and weight [K], after the bias
        nr_ref, nw_ref = rest[int(has_bias)], rest[int(has_bias) + 1]
    o_ref = rest[-1]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    num_m, num_n = pl.cdiv(m, bm), n // bn
    pid_m, pid_n = tiling.grouped_program(pl.program_id(0), num_m, num_n, cfg.group_m)
    split = pl.program_id(1)
    r0 = pl.multiple_of(pid_m * bm, bm)
    c0 = pl.multiple_of(pid_n * bn, bn)
    k_len = k // cfg.split_k
    k_first = split * k_len
    ragged = m % bm != 0
    row_mask = (r0 + jnp.arange(bm, dtype=jnp.int32)) < m if ragged else None
    zero_x = jnp.zeros((), x_ref.dtype)
    # fused prologue: x arrives in its float dtype and is quantized here with the static per-tensor scale
    # (1 / scale correctly rounded once per program; quark_jax.kernels.prologue), bit for bit vLLM's quantizer
    inv = prologue.static_inverse(xs_ref[0], (1, bk), interpret=interpret) if quantize else None
    # with a transform, one real row (M = 1) is formed and quantized as a [1, bk] row and then placed in the
    # zero-padded [bm, bk] MMA tile: the 15 padding rows cost no prologue work (they did in the measured
    # "fp8_static" prologue, benchmarks/NOTES.md "Decode fusion and compile time")
    one_row = transform != "none" and m == 1 and bm > 1
    if transform == "rmsnorm":
        if one_row or cfg.inner == "fma":
            rinv = nr_ref[pl.ds(r0, 1)][:, None]  # [1, 1]
        else:
            view = nr_ref.at[pl.ds(r0, bm)]
            rinv = (plgpu.load(view, mask=row_mask, other=0.0) if ragged else view[...])[:, None]

    # the rows a program forms: the real row (one_row), its single row (fma: block_m == 1), or its row block
    x_row0, x_rows = (0, 1) if one_row else (r0, 1) if cfg.inner == "fma" else (r0, bm)
    x_mask = row_mask[:, None] if ragged and not one_row and cfg.inner != "fma" else None

    def raw_x(k0):
        """The raw operands of the activation tile at K offset k0, as loaded (the prologue's inputs)."""
        def ld(col0):
            ref = x_ref.at[pl.ds(x_row0, x_rows), pl.ds(col0, bk)]
            return plgpu.load(ref, mask=x_mask, other=zero_x) if x_mask is not None else ref[...]

        if transform == "rmsnorm":
            return ld(k0), nw_ref[pl.ds(k0, bk)][None, :]
        if transform == "silu_mul":  # gate columns [0, K), up columns [K, 2K) of the fused gate_up output
            return ld(k0), ld(k + k0)
        return (ld(k0),)

    def tile_x(raw):
        """The quantized tile from :func:`raw_x`'s operands ([bm, bk]; [1, bk] for fma)."""
        if transform == "rmsnorm":
            x = prologue.rmsnorm_tile(raw[0], rinv, raw[1], interpret=interpret)
        elif transform == "silu_mul":
            x = prologue.silu_mul_tile(raw[0], raw[1], interpret=interpret)
        else:
            x = raw[0]
        x = prologue.fp8_static_tile(x, inv) if quantize else x
        if one_row:  # the formed row, then the zero padding rows of the MMA tile
            first = jnp.arange(bm, dtype=jnp.int32)[:, None] == 0
            x = jnp.where(first, jnp.broadcast_to(x.astype(jnp.float32), (bm, bk)), 0.0).astype(x.dtype)
        return x

    steps = k_len // bk

    def k_loop(product, acc0):
        """``acc0 + sum over the program's K steps of product(k0, x tile)``. With a transform the next step's
        raw operands are loaded one iteration ahead (carried in registers): Triton pipelines only the loads
        that feed a dot directly, and these feed the prologue's arithmetic."""
        if transform == "none":
            def body(i, acc):
                k0 = pl.multiple_of(k_first + i * bk, bk)
                return acc + product(k0, tile_x(raw_x(k0)))

            return lax.fori_loop(0, steps, body, acc0)

        def body_prefetch(i, carry):
            acc, cur = carry
            k0 = pl.multiple_of(k_first + i * bk, bk)
            nxt = raw_x(pl.multiple_of(k_first + jnp.minimum(i + 1, steps - 1) * bk, bk))  # last: reloads its own
            return acc + product(k0, tile_x(cur)), nxt

        return lax.fori_loop(0, steps, body_prefetch, (acc0, raw_x(k_first)))[0]

    if cfg.inner == "fma":
        def fma(k0, x):
            return w_ref[pl.ds(c0, bn), pl.ds(k0, bk)].astype(jnp.float32) * x.astype(jnp.float32)

        acc = k_loop(fma, jnp.zeros((bn, bk), jnp.float32))
        acc = jnp.sum(acc, axis=1)[None, :]  # [1, bn]
    elif cfg.inner == "wx":
        acc = k_loop(lambda k0, x: _dot_nt(w_ref[pl.ds(c0, bn), pl.ds(k0, bk)], x),
                     jnp.zeros((bn, bm), jnp.float32)).T  # [bm, bn]
    else:
        acc = k_loop(lambda k0, x: _dot_nt(x, w_ref[pl.ds(c0, bn), pl.ds(k0, bk)]), jnp.zeros((bm, bn), jnp.float32))

    out_mask = row_mask[:, None] if ragged else None
    if partial:
        plgpu.store(o_ref.at[split, pl.ds(r0, bm), pl.ds(c0, bn)], acc, mask=out_mask)
        return
    ws = ws_ref[pl.ds(c0, bn)][None, :] if per_channel else ws_ref[0]
    if per_token:
        xs_view = xs_ref.at[pl.ds(r0, bm)]
        xs = plgpu.load(xs_view, mask=row_mask, other=0.0) if ragged else xs_view[...]
        xs = xs[:, None]
    else:
        xs = xs_ref[0]
    y = xs * (ws * acc)
    if has_bias:
        y = y + b_ref[pl.ds(c0, bn)].astype(jnp.float32)[None, :]
    plgpu.store(o_ref.at[pl.ds(r0, bm), pl.ds(c0, bn)], y.astype(out_dtype), mask=out_mask)


def _check(x_q, w_q, x_scale, w_scale, bias, out_dtype):
    quantize = jnp.dtype(x_q.dtype) in [jnp.dtype(d) for d in FLOAT_INPUTS]
    if x_q.dtype not in [jnp.dtype(d) for d in SUPPORTED_DTYPES] and not quantize:
        raise TypeError(f"x_q: the Pallas FP8 kernel takes float8_e4m3fn, or bf16/f16/f32 activations to quantize "
                        f"with a static scale, got {x_q.dtype} (use impl='xla')")
    if quantize and x_scale.shape != ():
        raise ValueError(f"x_scale: float activations are quantized in the kernel with a static per-tensor scale "
                         f"(shape ()), got shape {tuple(x_scale.shape)}; quantize per token first")
    if w_q.dtype != jnp.float8_e4m3fn:
        raise TypeError(f"w_q: expected float8_e4m3fn, got {w_q.dtype}")
    if jnp.dtype(out_dtype) not in [jnp.dtype(d) for d in OUT_DTYPES]:
        raise TypeError(f"out_dtype: expected bfloat16, float16 or float32, got {jnp.dtype(out_dtype)}")
    m, k = x_q.shape
    n = w_q.shape[0]
    if w_q.shape[1] != k:
        raise ValueError(f"w_q: expected shape [N, {k}], got {tuple(w_q.shape)}")
    if x_scale.shape not in ((), (m, 1)):
        raise ValueError(f"x_scale: expected shape () or ({m}, 1), got {tuple(x_scale.shape)}")
    if w_scale.shape not in ((), (n,)):
        raise ValueError(f"w_scale: expected shape () or ({n},), got {tuple(w_scale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")


def _check_transform(transform, x, w_q, x_scale, norm_rinv, norm_weight):
    """Validate a prologue transform's operands; returns x's K columns as the GEMM sees them (float x [M, K]
    normalized, or [M, 2K] gate_up -> K)."""
    if transform not in prologue.TRANSFORMS:
        raise ValueError(f"transform: expected one of {prologue.TRANSFORMS}, got {transform!r}")
    if transform == "none":
        return x.shape[1]
    if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in FLOAT_INPUTS] or x_scale.shape != ():
        raise ValueError(f"transform={transform!r}: x must be float (bf16, f16, f32) with a static per-tensor "
                         f"x_scale, got {x.dtype} and x_scale of shape {tuple(x_scale.shape)}")
    m, kx = x.shape
    k = w_q.shape[1]
    if transform == "silu_mul":
        if kx != 2 * k:
            raise ValueError(f"x: transform='silu_mul' takes the gate_up output [M, 2K] = [{m}, {2 * k}], got "
                             f"{tuple(x.shape)}")
    else:
        if norm_rinv is None or norm_weight is None:
            raise ValueError("transform='rmsnorm' needs norm_rinv [M, 1] (float32) and norm_weight [K]")
        if tuple(norm_rinv.shape) not in ((m, 1), (m,)) or tuple(norm_weight.shape) != (kx,):
            raise ValueError(f"norm_rinv / norm_weight: expected [{m}, 1] and [{kx}], got "
                             f"{tuple(norm_rinv.shape)} and {tuple(norm_weight.shape)}")
    return k


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret", "finish", "transform"))
def fp8_scaled_mm_pallas(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16, config=None,
                         interpret=None, finish=True, transform="none", norm_rinv=None, norm_weight=None):
    """The fused FP8 GEMM ``out(x_scale * (w_scale * (x_q @ w_q.T)) + bias)`` as one Pallas-Triton kernel.

    Args:
      x_q: [M, K] float8_e4m3fn; any M (ragged M is masked). Or float activations (bf16, f16, f32) with a static
        per-tensor ``x_scale``: quantized inside the kernel as ``quant.scaled_fp8_quant(x, x_scale)`` does it
        (bit for bit; ``quark_jax.kernels.prologue``), x read once, no separate quantize kernel.
      w_q: [N, K] float8_e4m3fn (checkpoint layout); N and K multiples of 16.
      x_scale: f32 () per-tensor or [M, 1] per-token.
      w_scale: f32 () per-tensor or [N] per-channel.
      bias: optional [N] (any float dtype; added in f32).
      out_dtype: bfloat16, float16 or float32.
      config: a :class:`Config` (fit to the shape); None picks one for this device and shape (:func:`select`).
      interpret: run the kernel in Pallas interpret mode; None means "unless on a CUDA GPU".
      finish: False: a split-K run without bias and with a per-tensor x_scale returns its partial sums and
        scales unfinished (``tiling.SplitSums``, for a consumer kernel that applies the epilogue itself).
      transform: float x with a static scale only: what the prologue forms from x before quantizing it
        (``prologue.transform_reference``): "none"; "rmsnorm" (x the un-normalized rows h [M, K], with
        ``norm_rinv`` [M, 1] float32 = rsqrt(mean(h**2) + eps) and ``norm_weight`` [K]: the RMSNorm output);
        "silu_mul" (x the fused gate_up output [M, 2K]: ``silu(gate) * up``). At M = 1 only the real row is
        formed and quantized.

    Returns [M, N] ``out_dtype`` (or a ``tiling.SplitSums``, see ``finish``).

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((3, 64), jnp.float8_e4m3fn); w = jnp.ones((32, 64), jnp.float8_e4m3fn)
    >>> y = fp8_scaled_mm_pallas(x, w, jnp.float32(0.5), jnp.full((32,), 2.0), jnp.ones(32), out_dtype=jnp.float32)
    >>> y.shape, float(y[2, 31])
    ((3, 32), 65.0)
    >>> gu = jnp.concatenate([jnp.zeros((1, 32)), jnp.ones((1, 32))], axis=1).astype(jnp.bfloat16)  # silu(0) = 0
    >>> float(fp8_scaled_mm_pallas(gu, w[:, :32], jnp.float32(1.0), jnp.float32(1.0), transform="silu_mul")[0, 0])
    0.0
    """
    x_scale = jnp.asarray(x_scale, jnp.float32)
    w_scale = jnp.asarray(w_scale, jnp.float32)
    m = x_q.shape[0]
    k = _check_transform(transform, x_q, w_q, x_scale, norm_rinv, norm_weight)
    _check(x_q if transform != "silu_mul" else jax.ShapeDtypeStruct((m, k), x_q.dtype), w_q, x_scale, w_scale,
           bias, out_dtype)
    n = w_q.shape[0]
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    cfg = select(m, k, n) if config is None else fit(config, m, k, n)
    per_token, per_channel, has_bias = x_scale.ndim == 2, w_scale.ndim == 1, bias is not None
    partial = cfg.split_k > 1
    xs = x_scale.reshape(m) if per_token else x_scale.reshape(1)
    ws = w_scale if per_channel else w_scale.reshape(1)
    operands = [x_q, w_q, xs, ws] + ([bias] if has_bias and not partial else [])  # partial: bias in XLA below
    if transform == "rmsnorm":
        operands += [jnp.asarray(norm_rinv, jnp.float32).reshape(m), norm_weight]
    out_shape = (jax.ShapeDtypeStruct((cfg.split_k, m, n), jnp.float32) if partial
                 else jax.ShapeDtypeStruct((m, n), out_dtype))
    kernel = functools.partial(
        _kernel, m=m, k=k, n=n, cfg=cfg, per_token=per_token, per_channel=per_channel,
        has_bias=has_bias and not partial, partial=partial, out_dtype=jnp.dtype(out_dtype),
        quantize=x_q.dtype != jnp.float8_e4m3fn, interpret=bool(interpret), transform=transform)
    grid = (pl.cdiv(m, cfg.block_m) * (n // cfg.block_n), cfg.split_k)
    name = (f"fp8_scaled_mm_{cfg.inner}_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{cfg.split_k}"
            + ("_q" if x_q.dtype != jnp.float8_e4m3fn else "") + {"none": "", "rmsnorm": "_norm",
                                                                  "silu_mul": "_silu"}[transform])
    y = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=grid)(*operands)
    if not partial:
        return y
    if not finish and not has_bias and not per_token:
        return tiling.SplitSums(y, x_scale, w_scale, jnp.dtype(out_dtype))
    y = x_scale * (w_scale * tiling.sum_splits(y))
    if has_bias:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


def _round(v, dtype, interpret):
    """v rounded to dtype, as float32 (``round_to`` in interpret mode: XLA on the CPU could skip a plain cast)."""
    from quark_jax.quant import round_to

    return (round_to(v, dtype) if interpret else v.astype(dtype)).astype(jnp.float32)


def gate_up_config(m: int, k: int, inter: int) -> Config | None:
    """The tiling of :func:`fp8_gate_up_silu_pallas` for x [m, k] and a fused gate_up weight [2 * inter, k]: the
    table's config of the whole [2 * inter, k] GEMM with each program's N block split into a gate half and an up
    half (the same weight bytes per program, the same program count), or None where that config splits K or is
    not a skinny ("wx") tiling (the caller runs the unfused path).

    >>> gate_up_config(1, 4096, 14336, ).block_n in (16, 32, 64)
    True
    """
    cfg = select(m, k, 2 * inter)
    if cfg.split_k != 1 or cfg.inner != "wx" or cfg.block_n < 32:
        return None
    half = _largest_pow2_dividing(cfg.block_n // 2, inter, 16)
    return dataclasses.replace(cfg, block_n=half)


def _gate_up_silu_kernel(x_ref, w_ref, xs_ref, ws_ref, inv_ref, o_ref, *, m: int, k: int, inter: int, cfg: Config,
                         per_channel: bool, dtype, interpret: bool):
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    num_m, num_n = pl.cdiv(m, bm), inter // bn
    pid_m, pid_n = tiling.grouped_program(pl.program_id(0), num_m, num_n, cfg.group_m)
    r0 = pl.multiple_of(pid_m * bm, bm)
    c0 = pl.multiple_of(pid_n * bn, bn)
    ragged = m % bm != 0
    row_mask = (r0 + jnp.arange(bm, dtype=jnp.int32)) < m if ragged else None
    zero_x = jnp.zeros((), x_ref.dtype)

    def body(i, accs):
        acc_g, acc_u = accs
        k0 = pl.multiple_of(i * bk, bk)
        ref = x_ref.at[pl.ds(r0, bm), pl.ds(k0, bk)]
        x = plgpu.load(ref, mask=row_mask[:, None], other=zero_x) if ragged else ref[...]
        acc_g = acc_g + _dot_nt(w_ref[pl.ds(c0, bn), pl.ds(k0, bk)], x)
        acc_u = acc_u + _dot_nt(w_ref[pl.ds(inter + c0, bn), pl.ds(k0, bk)], x)
        return acc_g, acc_u

    zeros = jnp.zeros((bn, bm), jnp.float32)
    acc_g, acc_u = lax.fori_loop(0, k // bk, body, (zeros, zeros))
    xs = xs_ref[0]
    ws_g = ws_ref[pl.ds(c0, bn)][None, :] if per_channel else ws_ref[0]
    ws_u = ws_ref[pl.ds(inter + c0, bn)][None, :] if per_channel else ws_ref[0]
    # the GEMM's output as the entry returns it (one rounding to the model dtype), then the MLP's SiLU-mul and the
    # down projection's static FP8 quantizer
    g = _round(xs * (ws_g * acc_g.T), dtype, interpret).astype(dtype)
    u = _round(xs * (ws_u * acc_u.T), dtype, interpret).astype(dtype)
    y = prologue.silu_mul_tile(g, u, interpret=interpret)
    codes = prologue.fp8_static_tile(y.astype(jnp.float32), inv_ref[0])
    plgpu.store(o_ref.at[pl.ds(r0, bm), pl.ds(c0, bn)], codes, mask=row_mask[:, None] if ragged else None)


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def fp8_gate_up_silu_pallas(x_q, w_q, x_scale, w_scale, out_scale_reciprocal, *, out_dtype=jnp.bfloat16,
                            config=None, interpret=None):
    """``silu(g) * u`` of the fused gate_up GEMM, quantized to FP8 with the next GEMM's static input scale, as one
    Pallas-Triton kernel (the epilogue of :func:`fp8_scaled_mm_pallas` plus the MLP's SiLU-mul and quantizer).

    Args:
      x_q: [M, K] float8_e4m3fn codes; w_q: [2 I, K] float8_e4m3fn, gate rows then up rows (vLLM's layout).
      x_scale: f32 () per-tensor; w_scale: f32 () or [2 I].
      out_scale_reciprocal: f32 (), ``quant.true_divide(1, s)`` of the next GEMM's static input scale s.
      out_dtype: the model dtype the GEMM output and the SiLU-mul are rounded to.
      config: a :class:`Config` with the half-block width (:func:`gate_up_config`); None picks it.

    Returns [M, I] float8_e4m3fn: ``fp8(clamp(dtype(silu(f32(g)) * f32(u)) * out_scale_reciprocal))`` with
    ``g, u = dtype(x_scale * (w_scale * (x_q @ w_q.T)))`` split at I; the SiLU as ``prologue.silu_mul_tile``.

    >>> x = jnp.ones((1, 64), jnp.float8_e4m3fn); w = jnp.ones((64, 64), jnp.float8_e4m3fn)
    >>> c = fp8_gate_up_silu_pallas(x, w, jnp.float32(1 / 64), jnp.float32(1.0), jnp.float32(2.0))
    >>> c.shape, float(c[0, 0].astype(jnp.float32))   # g = u = 1: silu(1) * 1 = 0.7305 (bf16), times 2
    ((1, 32), 1.5)
    """
    x_scale = jnp.asarray(x_scale, jnp.float32)
    w_scale = jnp.asarray(w_scale, jnp.float32)
    m, k = x_q.shape
    n = w_q.shape[0]
    if x_q.dtype != jnp.float8_e4m3fn or w_q.dtype != jnp.float8_e4m3fn or w_q.shape[1] != k or n % 32:
        raise ValueError(f"fp8_gate_up_silu: expected x [M, K] and w [2 I, K] float8_e4m3fn with I a multiple of 16, "
                         f"got {x_q.dtype} {tuple(x_q.shape)} and {w_q.dtype} {tuple(w_q.shape)}")
    if x_scale.shape != () or w_scale.shape not in ((), (n,)):
        raise ValueError(f"fp8_gate_up_silu: x_scale () and w_scale () or ({n},) expected, got "
                         f"{tuple(x_scale.shape)} and {tuple(w_scale.shape)}")
    inter = n // 2
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    cfg = gate_up_config(m, k, inter) if config is None else config
    if cfg is None:
        raise ValueError(f"fp8_gate_up_silu: no unsplit skinny tiling for M = {m}, K = {k}, N = {n}")
    cfg = dataclasses.replace(cfg, block_m=max(16, min(cfg.block_m, tiling.pow2_ceil(m))),
                              block_k=_largest_pow2_dividing(min(cfg.block_k, tiling.pow2_ceil(k)), k, 32))
    per_channel = w_scale.ndim == 1
    operands = [x_q, w_q, x_scale.reshape(1), w_scale if per_channel else w_scale.reshape(1),
                jnp.asarray(out_scale_reciprocal, jnp.float32).reshape(1)]
    kernel = functools.partial(_gate_up_silu_kernel, m=m, k=k, inter=inter, cfg=cfg, per_channel=per_channel,
                               dtype=jnp.dtype(out_dtype), interpret=bool(interpret))
    grid = (pl.cdiv(m, cfg.block_m) * (inter // cfg.block_n),)
    name = f"fp8_gate_up_silu_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}"
    return tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret,
                              out_shape=jax.ShapeDtypeStruct((m, inter), jnp.float8_e4m3fn), grid=grid)(*operands)


__all__ = ["fp8_scaled_mm_pallas", "fp8_gate_up_silu_pallas", "gate_up_config", "Config", "DEFAULTS", "TUNED",
           "select", "fit"]
