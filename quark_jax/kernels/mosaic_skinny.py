"""Pallas Mosaic GPU (Hopper wgmma + TMA) core for skinny 8-bit GEMMs: ``acc[n, m] = sum_k w[n, k] x[m, k]``.

The shared core of the Mosaic GPU decode backends (``fp8_scaled_mm``, ``int8_scaled_mm``); nothing in it is
specific to one op: an op's own accumulator correction (e.g. INT8's zero-point term) comes in as ``correct``. The weight is the tall operand: each program owns ``block_n`` weight rows, streams them over (a range
of) K through a ``stages``-deep ring of TMA copies into shared memory and feeds wgmma with the weight tile as the
A operand ([block_n, block_k], K-major as stored) and the activation tile as the transposed B operand
([m_pad, block_k], K-major as stored), which is the layout 8-bit wgmma requires for both operands.

The op-specific epilogue runs on the accumulator [block_n, m_pad] (in registers, wgmma layout) with per-row
vectors ([N] arrays, e.g. the per-channel weight scale, loaded as [block_n]) and per-column vectors ([m_pad]
arrays, e.g. the per-token scale). The result is written as ``out_t`` [N, m_pad] (the transpose of the GEMM
output; the caller transposes, which XLA fuses into the consumer). With ``split_k > 1`` the kernel instead writes
the raw f32/int32 partial accumulators [split_k, N, m_pad] and the caller reduces and applies the epilogue.

Contract: x [m_pad, K] and w [N, K] of the same 8-bit dtype (float8_e4m3fn or int8); ``m_pad`` a multiple of 8
(<= 256), ``N`` a multiple of ``block_n`` (a multiple of 64), ``K`` a multiple of ``block_k * split_k``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from quark_jax.kernels import tiling


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiling of the skinny wgmma kernel (see the fields).

    ``exact_accumulate`` (floating point only): Hopper's FP8 wgmma adds its products into the accumulator with a
    reduced-precision adder (measured on the H100: ~1e-3 relative error at K = 1024..4096 against float64, where
    an f32 sum is ~1e-7), so each pipeline step's wgmma starts from zero and its [block_n, m_pad] partial is
    added in f32 registers ("promotion" every ``block_k``). False chains the wgmmas (faster on long K)."""

    block_n: int = 64  # weight rows per program, a power of two >= 64 (wgmma's M)
    block_k: int = 256  # K elements per pipeline step, a power of two >= 32
    stages: int = 4  # TMA copies in flight
    split_k: int = 1  # programs along K (> 1: raw partial accumulators, reduced by the caller)
    exact_accumulate: bool = True  # FP8: promote each step's wgmma partial into an f32 register sum

    def __post_init__(self):
        for name in ("block_n", "block_k", "stages", "split_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {v!r}")
        if self.block_n % 64 or self.block_n & (self.block_n - 1):
            raise ValueError(f"Config.block_n: expected a power of two >= 64 (wgmma rows), got {self.block_n}")
        if self.block_k < 32 or self.block_k & (self.block_k - 1):
            raise ValueError(f"Config.block_k: expected a power of two >= 32, got {self.block_k}")

    def fit(self, k: int, n: int) -> "Config":
        """Shrink the blocks so that they divide (n, k); n, k multiples of 64 and 32.

        >>> Config(block_n=128, block_k=256, stages=4, split_k=4).fit(k=96, n=192)
        Config(block_n=64, block_k=32, stages=4, split_k=1, exact_accumulate=True)
        """
        return tiling.halve_to_divide(self, n=n, k=k, min_n=64, min_k=32)


def gpu_interpret_params():
    """The Mosaic GPU interpreter's parameters (it simulates TMA, barriers and wgmma on the CPU). JAX exposes
    the class only privately (``InterpretGPUParams``, jax >= 0.10)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


def _load_vector(ref, reduced_dim: int, interpret: bool):
    """A 1-D shared-memory vector in the layout of the wgmma accumulator with ``reduced_dim`` dropped (the GPU
    lowering needs the layout; the interpreter has no layouts and reads the ref plainly)."""
    if interpret:
        return ref[...]
    return plgpu.load(ref, (), layout=plgpu.Layout.WGMMA.reduce(reduced_dim))


def _dot_nt(a, b, acc_dtype):
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=acc_dtype)


def _transforms(block_k: int, dtype) -> tuple:
    bits = jnp.dtype(dtype).itemsize * 8
    swizzle = plgpu.find_swizzle(block_k * bits)
    return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def skinny_wgmma(x, w, rows: Sequence[jax.Array], cols: Sequence[jax.Array], *, cfg: Config,
                 epilogue: Callable | None, out_dtype, interpret=False):
    """Run the kernel; see the module docstring. ``rows`` are [N] f32/int32 arrays, ``cols`` [m_pad] arrays.

    ``epilogue(acc, rows, cols) -> y`` gets the accumulator [block_n, m_pad] and the vectors broadcast to that
    shape; it is not used (and the raw partial accumulators are returned) when ``cfg.split_k > 1``.
    """
    m_pad, k = x.shape
    n = w.shape[0]
    bn, bk, splits = cfg.block_n, cfg.block_k, cfg.split_k
    acc_dtype = jnp.int32 if jnp.issubdtype(x.dtype, jnp.integer) else jnp.float32
    steps = k // (bk * splits)
    transforms = _transforms(bk, x.dtype)
    partial = splits > 1
    n_rows, n_cols = (0, 0) if partial else (len(rows), len(cols))
    vec_inputs = [] if partial else [*rows, *cols]

    def body(x_gmem, w_gmem, *refs):
        vec_gmem = refs[:n_rows + n_cols]
        out_gmem = refs[n_rows + n_cols]
        o_smem, vec_bar, *vec_smem = refs[n_rows + n_cols + 1:]
        pid_n = lax.axis_index("n")
        split = lax.axis_index("k")
        n0 = pid_n * bn
        # the epilogue vectors travel while the weight streams
        for i in range(n_rows):
            plgpu.copy_gmem_to_smem(vec_gmem[i].at[pl.ds(n0, bn)], vec_smem[i], vec_bar.at[i])
        for j in range(n_cols):
            plgpu.copy_gmem_to_smem(vec_gmem[n_rows + j], vec_smem[n_rows + j], vec_bar.at[n_rows + j])

        in_specs = [
            plgpu.BlockSpec((bn, bk), lambda kk: (pid_n, split * steps + kk), transforms=transforms,
                            delay_release=1),
            plgpu.BlockSpec((m_pad, bk), lambda kk: (0, split * steps + kk), transforms=transforms,
                            delay_release=1),
        ]
        if interpret:
            # jax 0.10's GPU interpreter reads neither transposed wgmma operands nor stores into accumulator
            # refs: the same shared-memory tiles go through an explicit dot carried by the pipeline
            def step_carry(_, w_smem, x_smem, carry):
                return carry + _dot_nt(w_smem[...], x_smem[...], acc_dtype)

            a = plgpu.emit_pipeline(step_carry, grid=(steps,), in_specs=in_specs, max_concurrent_steps=cfg.stages,
                                    init_carry=jnp.zeros((bn, m_pad), acc_dtype))(w_gmem, x_gmem)
        elif cfg.exact_accumulate and acc_dtype == jnp.float32:
            def step_promote(_, w_smem, x_smem, carry):
                def one_step(acc):
                    plgpu.wgmma(acc, w_smem, plgpu.transpose_ref(x_smem, (1, 0)))
                    plgpu.wgmma_wait(0)
                    return acc[...]

                return carry + pl.run_scoped(one_step, plgpu.ACC((bn, m_pad), acc_dtype))

            zero = plgpu.layout_cast(jnp.zeros((bn, m_pad), acc_dtype), plgpu.Layout.WGMMA)
            a = plgpu.emit_pipeline(step_promote, grid=(steps,), in_specs=in_specs, max_concurrent_steps=cfg.stages,
                                    init_carry=zero)(w_gmem, x_gmem)
        else:
            def accumulate(acc):
                def step(_, w_smem, x_smem):
                    plgpu.wgmma(acc, w_smem, plgpu.transpose_ref(x_smem, (1, 0)))
                    plgpu.wgmma_wait(1)

                plgpu.emit_pipeline(step, grid=(steps,), in_specs=in_specs,
                                    max_concurrent_steps=cfg.stages)(w_gmem, x_gmem)
                plgpu.wgmma_wait(0)
                return acc[...]

            # the register accumulator gets its own scope (REGS and SMEM allocations do not mix in one scope)
            a = pl.run_scoped(accumulate, plgpu.ACC((bn, m_pad), acc_dtype))
        if partial:
            o_smem[...] = a
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem, out_gmem.at[split, pl.ds(n0, bn)])
        else:
            shape = (bn, m_pad)
            row_vals, col_vals = [], []
            for i in range(n_rows):
                plgpu.barrier_wait(vec_bar.at[i])
                v = _load_vector(vec_smem[i], 1, interpret)
                row_vals.append(lax.broadcast_in_dim(v, shape, [0]))
            for j in range(n_cols):
                plgpu.barrier_wait(vec_bar.at[n_rows + j])
                v = _load_vector(vec_smem[n_rows + j], 0, interpret)
                col_vals.append(lax.broadcast_in_dim(v, shape, [1]))
            y = a if epilogue is None else epilogue(a, row_vals, col_vals)
            o_smem[...] = y.astype(o_smem.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem, out_gmem.at[pl.ds(n0, bn)])
        plgpu.wait_smem_to_gmem(0)

    if partial:
        out_shape = jax.ShapeDtypeStruct((splits, n, m_pad), acc_dtype)
        o_dtype = acc_dtype
    else:
        out_shape = jax.ShapeDtypeStruct((n, m_pad), out_dtype)
        o_dtype = out_dtype
    scratch = [
        plgpu.SMEM((bn, m_pad), o_dtype),
        plgpu.Barrier(num_barriers=max(n_rows + n_cols, 1)),
        *[plgpu.SMEM((bn,), v.dtype) for v in vec_inputs[:n_rows]],
        *[plgpu.SMEM((m_pad,), v.dtype) for v in vec_inputs[n_rows:]],
    ]
    kwargs = {}
    if interpret:
        kwargs["interpret"] = gpu_interpret_params()
    call = plgpu.kernel(
        body,
        out_type=out_shape,
        scratch_types=scratch,
        grid=(n // bn, splits),
        grid_names=("n", "k"),
        **kwargs,
    )
    return call(x, w, *vec_inputs)


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def padded_rows(m: int, dtype) -> int:
    """Rows of x the kernel computes: wgmma's N is a multiple of 8, and for 8-bit integers above 32 one of 16."""
    if jnp.issubdtype(dtype, jnp.integer) and m > 32:
        return _round_up(m, 16)
    return _round_up(m, 8)


MAX_M = 128  # accumulator [block_n, m_pad] in registers: 64 x 128 f32 is 64 registers per thread


def scaled_mm_skinny(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16, config: Config | None = None,
                     interpret: bool = False, int_rows=(), int_cols=(), correct: Callable | None = None):
    """``out(x_scale * (w_scale * f32(correct(x_q @ w_q.T))) + bias)`` for M <= 128 through ``skinny_wgmma``.

    Args (validated by the op entry points): x_q [M, K] and w_q [N, K] float8_e4m3fn or int8; x_scale f32 () or
    [M, 1]; w_scale f32 () or [N]; bias [N] or None. ``correct(acc, rows, cols)``, if given, adjusts the raw
    accumulator before the scales, with ``int_rows`` ([N] int32 arrays) and ``int_cols`` ([M] int32 arrays)
    broadcast against ``acc``, which is in [N, M] orientation (rows along dim 0). N a multiple of 64, K of 16.
    Returns [M, N] ``out_dtype``; the epilogue rounds once, as the XLA references do.
    """
    m, k = x_q.shape
    n = w_q.shape[0]
    if m > MAX_M:
        raise ValueError(f"x_q: the skinny Mosaic GPU kernel takes M <= {MAX_M}, got M = {m}")
    cfg = (config or Config()).fit(k, n)
    m_pad = padded_rows(m, x_q.dtype)
    x_p = jnp.pad(x_q, ((0, m_pad - m), (0, 0))) if m_pad != m else x_q
    f32 = jnp.float32
    xs = jnp.broadcast_to(x_scale.astype(f32).reshape(-1), (m,))
    ws = jnp.broadcast_to(w_scale.astype(f32).reshape(-1), (n,))
    int_rows = [r.astype(jnp.int32) for r in int_rows]
    int_cols = [c.reshape(m).astype(jnp.int32) for c in int_cols]
    if cfg.split_k > 1:
        parts = skinny_wgmma(x_p, w_q, [], [], cfg=cfg, epilogue=None, out_dtype=None, interpret=interpret)
        acc = jnp.sum(parts, axis=0)[:, :m]  # [N, M]
        if correct is not None:
            acc = correct(acc, [r[:, None] for r in int_rows], [c[None, :] for c in int_cols])
        y = xs[None, :] * (ws[:, None] * acc.astype(f32))
        if bias is not None:
            y = y + bias.astype(f32)[:, None]
        return y.astype(out_dtype).T
    pad_m = lambda v: jnp.pad(v, (0, m_pad - m)) if m_pad != m else v  # noqa: E731
    rows = [ws, *int_rows] + ([bias.astype(f32)] if bias is not None else [])
    cols = [pad_m(xs), *[pad_m(c) for c in int_cols]]
    n_int_rows = len(int_rows)

    def epilogue(acc, row_vals, col_vals):
        if correct is not None:
            acc = correct(acc, row_vals[1:1 + n_int_rows], col_vals[1:])
        y = col_vals[0] * (row_vals[0] * acc.astype(f32))
        if bias is not None:
            y = y + row_vals[-1]
        return y

    out_t = skinny_wgmma(x_p, w_q, rows, cols, cfg=cfg, epilogue=epilogue, out_dtype=out_dtype,
                         interpret=interpret)
    return out_t[:, :m].T
