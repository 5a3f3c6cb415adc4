"""Pallas (Triton lowering) FP8 W8A8 GEMM with the scales and bias fused into the epilogue.

``y[m, n] = out(x_scale[m] * (w_scale[n] * sum_k x_q[m, k] w_q[n, k]) + bias[n])`` with f32 accumulation and one
rounding to ``out_dtype``. ``x_q`` [M, K] and ``w_q`` [N, K] are float8_e4m3fn (the weight as the checkpoint stores
it, K-major: tiles are read without a transpose). One kernel body serves every shape class; a ``GemmConfig``
(``configs.py``) picks the tiling:

- decode / small M: one short row block (``block_m`` 16, masked to M, or a single row with ``inner="fma"``),
  many narrow N blocks, each streaming its weight rows over the whole of K (``k_splits=1``) or a K range;
- prefill: large tensor-core tiles, programs grouped along M for L2 reuse.

Ragged M is masked (rows past M are neither read nor written). N and K must be multiples of 16; blocks are
shrunk to divide them (``configs.fit``). With ``k_splits > 1`` the kernel writes f32 partial sums
[splits, M, N] and one XLA fusion sums, scales, adds the bias and rounds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from quark_jax.kernels import _dispatch
from quark_jax.kernels.fp8_scaled_mm import configs

SUPPORTED_DTYPES = (jnp.float8_e4m3fn,)
OUT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def _dot_nt(a, b):
    """``a[p, k] @ b[q, k]^T`` -> f32 [p, q] (both operands K-major, as FP8 tensor cores want them)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _program_coords(pid, num_m: int, num_n: int, group_m: int):
    """Row / column block of program ``pid``; with ``group_m > 1`` programs sweep ``group_m`` row blocks per
    column before moving on (the output is visited in column strips of height ``group_m * block_m``)."""
    if group_m == 1 or num_m == 1:
        return pid // num_n, pid % num_n
    per_group = group_m * num_n
    first_m = (pid // per_group) * group_m
    size_m = jnp.minimum(num_m - first_m, group_m)
    in_group = pid % per_group
    return first_m + in_group % size_m, in_group // size_m


def _kernel(x_ref, w_ref, xs_ref, ws_ref, *rest, m: int, k: int, n: int, cfg: configs.GemmConfig,
            per_token: bool, per_channel: bool, has_bias: bool, partial: bool, out_dtype):
    b_ref = rest[0] if has_bias else None
    o_ref = rest[-1]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    num_m, num_n = pl.cdiv(m, bm), n // bn
    pid_m, pid_n = _program_coords(pl.program_id(0), num_m, num_n, cfg.group_m)
    split = pl.program_id(1)
    r0 = pl.multiple_of(pid_m * bm, bm)
    c0 = pl.multiple_of(pid_n * bn, bn)
    k_len = k // cfg.k_splits
    k_first = split * k_len
    ragged = m % bm != 0
    row_mask = (r0 + jnp.arange(bm, dtype=jnp.int32)) < m if ragged else None
    zero_x = jnp.zeros((), x_ref.dtype)

    def load_x(k0):
        ref = x_ref.at[pl.ds(r0, bm), pl.ds(k0, bk)]
        return plgpu.load(ref, mask=row_mask[:, None], other=zero_x) if ragged else ref[...]

    if cfg.inner == "fma":
        def body(i, acc):
            k0 = pl.multiple_of(k_first + i * bk, bk)
            w = w_ref[pl.ds(c0, bn), pl.ds(k0, bk)].astype(jnp.float32)
            x = x_ref[pl.ds(r0, 1), pl.ds(k0, bk)].astype(jnp.float32)
            return acc + w * x

        acc = lax.fori_loop(0, k_len // bk, body, jnp.zeros((bn, bk), jnp.float32))
        acc = jnp.sum(acc, axis=1)[None, :]  # [1, bn]
    elif cfg.inner == "wx":
        def body(i, acc):
            k0 = pl.multiple_of(k_first + i * bk, bk)
            return acc + _dot_nt(w_ref[pl.ds(c0, bn), pl.ds(k0, bk)], load_x(k0))

        acc = lax.fori_loop(0, k_len // bk, body, jnp.zeros((bn, bm), jnp.float32)).T  # [bm, bn]
    else:
        def body(i, acc):
            k0 = pl.multiple_of(k_first + i * bk, bk)
            return acc + _dot_nt(load_x(k0), w_ref[pl.ds(c0, bn), pl.ds(k0, bk)])

        acc = lax.fori_loop(0, k_len // bk, body, jnp.zeros((bm, bn), jnp.float32))

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
    if x_q.dtype not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
        raise TypeError(f"x_q: the Pallas FP8 kernel takes float8_e4m3fn, got {x_q.dtype} (use impl='xla')")
    if w_q.dtype != x_q.dtype:
        raise TypeError(f"w_q: expected {x_q.dtype} like x_q, got {w_q.dtype}")
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


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def fp8_scaled_mm_pallas(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16, config=None,
                         interpret=None):
    """The fused FP8 GEMM ``out(x_scale * (w_scale * (x_q @ w_q.T)) + bias)`` as one Pallas-Triton kernel.

    Args:
      x_q: [M, K] float8_e4m3fn; any M (ragged M is masked).
      w_q: [N, K] float8_e4m3fn (checkpoint layout); N and K multiples of 16.
      x_scale: f32 () per-tensor or [M, 1] per-token.
      w_scale: f32 () per-tensor or [N] per-channel.
      bias: optional [N] (any float dtype; added in f32).
      out_dtype: bfloat16, float16 or float32.
      config: a ``configs.GemmConfig`` (fit to the shape); None picks one for this device and shape.
      interpret: run the kernel in Pallas interpret mode; None means "unless on a CUDA GPU".

    Returns [M, N] ``out_dtype``.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((3, 64), jnp.float8_e4m3fn); w = jnp.ones((32, 64), jnp.float8_e4m3fn)
    >>> y = fp8_scaled_mm_pallas(x, w, jnp.float32(0.5), jnp.full((32,), 2.0), jnp.ones(32), out_dtype=jnp.float32)
    >>> y.shape, float(y[2, 31])
    ((3, 32), 65.0)
    """
    x_scale = jnp.asarray(x_scale, jnp.float32)
    w_scale = jnp.asarray(w_scale, jnp.float32)
    _check(x_q, w_q, x_scale, w_scale, bias, out_dtype)
    m, k = x_q.shape
    n = w_q.shape[0]
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    cfg = configs.select(m, k, n, _dispatch.device_key()) if config is None else configs.fit(config, m, k, n)
    per_token, per_channel, has_bias = x_scale.ndim == 2, w_scale.ndim == 1, bias is not None
    partial = cfg.k_splits > 1
    xs = x_scale.reshape(m) if per_token else x_scale.reshape(1)
    ws = w_scale if per_channel else w_scale.reshape(1)
    operands = [x_q, w_q, xs, ws] + ([bias] if has_bias else [])
    out_shape = (jax.ShapeDtypeStruct((cfg.k_splits, m, n), jnp.float32) if partial
                 else jax.ShapeDtypeStruct((m, n), out_dtype))
    kernel = functools.partial(
        _kernel, m=m, k=k, n=n, cfg=cfg, per_token=per_token, per_channel=per_channel,
        has_bias=has_bias and not partial, partial=partial, out_dtype=jnp.dtype(out_dtype))
    if partial:  # the bias joins in the XLA epilogue below
        operands = operands[:4]
    grid = (pl.cdiv(m, cfg.block_m) * (n // cfg.block_n), cfg.k_splits)
    y = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"fp8_scaled_mm_{cfg.inner}_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{cfg.k_splits}",
    )(*operands)
    if not partial:
        return y
    y = x_scale * (w_scale * jnp.sum(y, axis=0))
    if has_bias:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


__all__ = ["fp8_scaled_mm_pallas"]
