"""``add_rmsnorm`` as one Pallas-Triton kernel: one program per row reads x (and the residual addend) and the
weight once, writes h and the normalized row (or its FP8 codes).

The numerics are the reference's (``xla.py``) except the order of the float32 sum of squares (Triton's reduction
tree instead of XLA's): the mean divides by H as a multiply by the exact power of two ``1 / H`` (H a power of
two), ``rsqrt`` is libdevice's ``__nv_rsqrtf`` (as XLA's), the casts round to nearest even, the FP8 codes come
from ``kernels.prologue.fp8_static_tile`` (vLLM's clamp / NaN -> max / RNE cast, bit for bit
``quant.scaled_fp8_quant``). In interpret mode (CPU) the roundings use ``quant.round_to``, which XLA cannot skip.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from quark_jax.kernels import _dispatch, prologue, tiling
from quark_jax.quant import round_to

FLOAT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
MAX_H = 32768


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Launch parameters (one program per row, the whole row in one block).

    >>> Config().num_warps
    4
    """

    num_warps: int = 4
    num_stages: int = 1


def select(h: int) -> Config:
    """4 warps up to H = 4096 (32 elements a thread), 8 above.

    >>> select(8192).num_warps
    8
    """
    return Config(num_warps=4 if h <= 4096 else 8)


def supported(h: int, dtype) -> bool:
    """Whether the kernel takes rows of H elements of ``dtype``: H a power of two, 16 .. 32768, a float dtype.

    >>> supported(4096, jnp.bfloat16), supported(3072, jnp.bfloat16)
    (True, False)
    """
    return jnp.dtype(dtype) in FLOAT_DTYPES and 16 <= h <= MAX_H and h & (h - 1) == 0


def takes_split_sums(sums, h: int, dtype) -> bool:
    """Whether the kernel runs the epilogue of ``sums`` (a ``tiling.SplitSums`` [S, M, H]) itself: S a power of
    two up to 8, a per-tensor x scale, w scale per tensor or [H], output in the kernel's dtype.

    >>> takes_split_sums(tiling.SplitSums(jnp.ones((2, 1, 16)), jnp.float32(1), jnp.ones(16), jnp.bfloat16),
    ...                  16, jnp.bfloat16)
    True
    """
    s = sums.parts.shape[0]
    return (s & (s - 1) == 0 and s <= 8 and jnp.ndim(sums.x_scale) == 0 and jnp.shape(sums.w_scale) in ((), (h,))
            and jnp.dtype(sums.out_dtype) == jnp.dtype(dtype))


def _round(v, dtype, interpret):
    return round_to(v, dtype) if interpret else v.astype(dtype)


def _kernel(*refs, h, eps, has_residual, splits, per_channel, codes, has_zero_point, dtype, interpret):
    refs = list(refs)
    x_ref = refs.pop(0)
    r_ref = refs.pop(0) if has_residual else None
    xs_ref, ws_ref = (refs.pop(0), refs.pop(0)) if splits else (None, None)
    w_ref = refs.pop(0)
    q_ref = refs.pop(0) if codes else None  # fp8: 1 / scale; int8: scale
    zp_ref = refs.pop(0) if has_zero_point else None
    h_ref = refs.pop(0) if has_residual else None
    o_ref = refs.pop(0)
    x = x_ref[...]
    if has_residual:
        if splits:  # a split-K GEMM's epilogue: dtype(x_scale * (w_scale * ((p0 + p1) + ...)))
            acc = r_ref[0]
            for i in range(1, splits):
                acc = acc + r_ref[i]
            ws = ws_ref[...][None, :] if per_channel else ws_ref[0]
            a = _round(xs_ref[0] * (ws * acc), dtype, interpret)
        else:
            a = r_ref[...]
        x = _round(x.astype(jnp.float32) + a.astype(jnp.float32), dtype, interpret)
        h_ref[...] = x
    xf = x.astype(jnp.float32)
    ss = jnp.sum(xf * xf, axis=-1, keepdims=True)
    r = jax.lax.rsqrt(ss * (1.0 / h) + eps)  # 1 / H exact: H is a power of two
    y = _round(xf * r, dtype, interpret).astype(jnp.float32)
    out = _round(w_ref[...].astype(jnp.float32)[None, :] * y, dtype, interpret)
    if codes == "fp8":
        o_ref[...] = prologue.fp8_static_tile(out.astype(jnp.float32), q_ref[0])
    elif codes == "int8":  # quant.scaled_int8_quant: x / scale (symmetric) or x * (1 / scale) + zero point
        scale = q_ref[0]
        inv = prologue.static_inverse(scale, (1, h), interpret=interpret) if has_zero_point else None
        o_ref[...] = prologue.int8_static_tile(out, scale, inv, zp_ref[0] if has_zero_point else None,
                                               interpret=interpret)
    else:
        o_ref[...] = out


@functools.partial(jax.jit, static_argnames=("eps", "codes", "config", "interpret"))
def add_rmsnorm_pallas(x, weight, residual=None, scale=None, scale_reciprocal=None, zero_point=None, *, eps: float,
                       codes=None, config=None, interpret=None):
    """``(h, y)`` of :func:`quark_jax.kernels.add_rmsnorm.add_rmsnorm_xla` as one kernel, for x [M, H] (H a
    power of two, :func:`supported`); ``codes="fp8"`` with ``scale_reciprocal`` (f32 scalar,
    ``true_divide(1, scale)``) makes y float8_e4m3fn codes, ``codes="int8"`` with ``scale`` (and an int32
    ``zero_point``) int8 codes (``kernels.prologue``: bit for bit the quantizers'). Without ``residual``, h is x itself (no copy). ``residual`` may be a split-K GEMM's
    unfinished ``tiling.SplitSums``: the kernel runs its epilogue (:func:`takes_split_sums`; else XLA finishes it
    first), the same values.

    >>> h, y = add_rmsnorm_pallas(jnp.full((2, 16), 2.0), jnp.ones(16), jnp.ones((2, 16)), eps=0.0)
    >>> float(h[0, 0]), float(y[1, 3])
    (3.0, 1.0)
    """
    m, h = x.shape
    dtype = jnp.dtype(x.dtype)
    if not supported(h, dtype):
        raise ValueError(f"x: the Pallas add_rmsnorm takes [M, H] rows with H a power of two in 16..{MAX_H} of "
                         f"bf16/f16/f32, got {tuple(x.shape)} {dtype} (use impl='xla')")
    if weight.shape != (h,):
        raise ValueError(f"weight: expected shape ({h},), got {tuple(weight.shape)}")
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"residual: expected shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    sums = isinstance(residual, tiling.SplitSums)
    if sums and not takes_split_sums(residual, h, dtype):
        residual, sums = residual.finish(), False
    if interpret is None:
        interpret = _dispatch.pallas_interpret()
    from jax.experimental import pallas as pl

    cfg = select(h) if config is None else config
    if codes not in (None, "fp8", "int8"):
        raise ValueError(f"codes: expected None, 'fp8' or 'int8', got {codes!r}")
    quantize = codes is not None
    has_zp = codes == "int8" and zero_point is not None
    row = pl.BlockSpec((1, h), lambda i: (i, 0))
    operands, in_specs = [x], [row]
    if sums:
        splits, per_channel = residual.parts.shape[0], residual.w_scale.ndim == 1
        operands += [residual.parts, jnp.asarray(residual.x_scale, jnp.float32).reshape(1),
                     jnp.asarray(residual.w_scale, jnp.float32).reshape(h if per_channel else 1)]
        in_specs += [pl.BlockSpec((splits, 1, h), lambda i: (0, i, 0)), pl.BlockSpec((1,), lambda i: (0,)),
                     pl.BlockSpec((h,) if per_channel else (1,), lambda i: (0,))]
    elif residual is not None:
        operands.append(residual.astype(dtype))
        in_specs.append(row)
    operands.append(weight)
    in_specs.append(pl.BlockSpec((h,), lambda i: (0,)))
    if quantize:
        operands.append(jnp.asarray(scale_reciprocal if codes == "fp8" else scale, jnp.float32).reshape(1))
        in_specs.append(pl.BlockSpec((1,), lambda i: (0,)))
    if has_zp:
        operands.append(jnp.asarray(zero_point, jnp.int32).reshape(1))
        in_specs.append(pl.BlockSpec((1,), lambda i: (0,)))
    out_dtype = jnp.dtype({None: dtype, "fp8": jnp.float8_e4m3fn, "int8": jnp.int8}[codes])
    out_shape = [jax.ShapeDtypeStruct((m, h), out_dtype)]
    out_specs = [row]
    if residual is not None:
        out_shape.insert(0, jax.ShapeDtypeStruct((m, h), dtype))
        out_specs.insert(0, row)
    kernel = functools.partial(_kernel, h=h, eps=float(eps), has_residual=residual is not None,
                               splits=residual.parts.shape[0] if sums else 0,
                               per_channel=sums and residual.w_scale.ndim == 1, codes=codes,
                               has_zero_point=has_zp, dtype=dtype, interpret=bool(interpret))
    name = "add_rmsnorm" + ("_q" if quantize else "") if residual is not None else "rmsnorm" + ("_q" if quantize
                                                                                                  else "")
    outs = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape, grid=(m,),
                              in_specs=in_specs, out_specs=out_specs)(*operands)
    return (outs[0], outs[1]) if residual is not None else (x, outs[0])


__all__ = ["add_rmsnorm_pallas", "Config", "select", "supported", "takes_split_sums"]
