"""Grouped GEMM for mixture-of-experts: ``grouped_mm`` over rows sorted by expert, bf16 / FP8 / MXFP4 experts.

Layout (the same for every op): this module is the entry, its validation and dispatch; ``xla.py`` the reference
(``jax.lax.ragged_dot_general``); ``pallas_triton.py`` the Pallas kernel (its own ``Config``), which reads the
packed expert weights directly and, at decode, only the experts that rows were routed to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.grouped_mm.xla import grouped_mm_xla

SCHEMES = ("bf16", "fp8", "mxfp4")
FLOAT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
FP8_DTYPES = (jnp.float8_e4m3fn, jnp.float8_e4m3fnuz)
OUT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def op_name(scheme: str) -> str:
    """The ``tuning`` op name that ``impl="auto"`` looks up for ``scheme``.

    >>> op_name("fp8")
    'grouped_mm_fp8'
    """
    return f"grouped_mm_{scheme}"


def _dtype_name(dtypes) -> str:
    return ", ".join(str(jnp.dtype(d)) for d in dtypes)


def _array(name, a, ndim, dtypes, what):
    a = jnp.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array {what}, got shape {tuple(a.shape)}")
    if a.dtype not in [jnp.dtype(d) for d in dtypes]:
        raise TypeError(f"{name}: expected dtype {_dtype_name(dtypes)} {what}, got {a.dtype}")
    return a


def _group_sizes(group_sizes, e: int, m: int):
    g = jnp.asarray(group_sizes)
    if g.shape != (e,):
        raise ValueError(f"group_sizes: expected shape ({e},) (one count per expert of w), got {tuple(g.shape)}")
    if not jnp.issubdtype(g.dtype, jnp.integer):
        raise TypeError(f"group_sizes: expected an integer dtype (int32), got {g.dtype}")
    if not isinstance(g, jax.core.Tracer):  # concrete: check what a traced value cannot be checked for
        v = np.asarray(g)
        if (v < 0).any() or v.sum() > m:
            raise ValueError(f"group_sizes: expected non-negative counts summing to at most M = {m}, got "
                             f"{v.tolist()} (sum {int(v.sum())})")
    return g.astype(jnp.int32)


def _fp8_w_scale(w_scale, e: int, n: int):
    if w_scale is None:
        raise ValueError("w_scale: scheme 'fp8' needs the f32 weight scale, [E] (per tensor) or [E, N] (per channel)")
    s = jnp.asarray(w_scale, jnp.float32)
    if s.shape in ((e,), (e, 1)):
        return s.reshape(e)
    if s.shape in ((e, n), (e, n, 1)):
        return s.reshape(e, n)
    raise ValueError(f"w_scale: expected shape ({e},) per tensor or ({e}, {n}) per channel, got {tuple(s.shape)}")


def grouped_mm(x, w, group_sizes, *, w_scale=None, x_scale=None, scheme="bf16", out_dtype=jnp.bfloat16,
               impl="auto"):
    """Grouped GEMM: ``y[rows of group e] = x[rows of e] @ dequant(w[e]).T`` with f32 accumulation, times scales.

    Rows of ``x`` are sorted by expert: group e is rows ``[sum(group_sizes[:e]), sum(group_sizes[:e+1]))``; rows
    past ``sum(group_sizes)`` (<= M) are zero in the output. Empty groups are allowed.

    Args:
      x: [M, K] activations. "bf16" and "mxfp4": bf16, f16 or f32 (for "mxfp4", W4A4 / W4A8 activation
        quantization is the caller's, as a quantize-dequantize in x's dtype before the call, the same as the dense
        schemes: ``quant.qdq_mxfp4(x)`` (W4A4, exact in bf16, vLLM's emulation) or Quark's static FP8
        ``schemes.qdq_fp8_static(x, s)`` (W4A8); x_scale must then be None). "fp8" (W8A8): float8_e4m3fn (or
        e4m3fnuz) already quantized, with ``x_scale``.
      w: [E, N, K] expert weights, K-major (the checkpoint's [N, K] per expert, stacked): x's dtype for "bf16",
        x's fp8 dtype for "fp8", uint8 packed [E, N, K/2] (element 2j in the low nibble) for "mxfp4".
      group_sizes: int32 [E] rows per expert, non-negative, sum <= M (checked when concrete).
      w_scale: "fp8": f32 [E] (per tensor per expert) or [E, N] (per channel); "mxfp4": uint8 E8M0 bytes
        [E, N, K/32]; "bf16": None.
      x_scale: "fp8": f32 scalar (per tensor) or [M, 1] (per token); else None.
      scheme: "bf16", "fp8" or "mxfp4". out_dtype: bf16, f16 or f32 (one rounding).
      impl: "auto" (``kernels.choose_impl`` of op ``grouped_mm_<scheme>``; XLA off a GPU), "pallas" or "xla".

    Returns [M, N] ``out_dtype``: ``out(x_scale * (w_scale[e] * acc))`` for "fp8", ``out(acc)`` otherwise.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((3, 32), jnp.bfloat16); w = jnp.stack([jnp.ones((16, 32)), 2 * jnp.ones((16, 32))])
    >>> y = grouped_mm(x, w.astype(jnp.bfloat16), jnp.array([1, 1], jnp.int32), impl="xla")
    >>> y[:, 0].tolist()
    [32.0, 64.0, 0.0]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    if jnp.dtype(out_dtype) not in [jnp.dtype(d) for d in OUT_DTYPES]:
        raise TypeError(f"out_dtype: expected {_dtype_name(OUT_DTYPES)}, got {jnp.dtype(out_dtype)}")
    x_dtypes = FP8_DTYPES if scheme == "fp8" else FLOAT_DTYPES
    x = _array("x", x, 2, x_dtypes, f"[M, K] for scheme {scheme!r}")
    m, k = x.shape
    if scheme == "mxfp4":
        w = _array("w", w, 3, (jnp.uint8,), "[E, N, K/2] uint8 (packed MXFP4)")
        e, n = w.shape[:2]
        _validate.multiple_of("x", k, formats.MX_BLOCK_SIZE, "K")
        if w.shape[2] * 2 != k:
            raise ValueError(f"w: expected shape ({e}, {n}, {k // 2}) (packed K/2) for x with K = {k}, got "
                             f"{tuple(w.shape)}")
        if w_scale is None:
            raise ValueError("w_scale: scheme 'mxfp4' needs the uint8 E8M0 block scales [E, N, K/32]")
        w_scale = _array("w_scale", w_scale, 3, (jnp.uint8,), "[E, N, K/32] uint8 (E8M0)")
        if w_scale.shape != (e, n, k // formats.MX_BLOCK_SIZE):
            raise ValueError(f"w_scale: expected shape ({e}, {n}, {k // formats.MX_BLOCK_SIZE}), got "
                             f"{tuple(w_scale.shape)}")
    else:
        w = _array("w", w, 3, (x.dtype,), f"[E, N, K] of x's dtype ({x.dtype})")
        e, n = w.shape[:2]
        _validate.same_k("x", k, "w", w.shape[2])
    if scheme == "fp8":
        w_scale = _fp8_w_scale(w_scale, e, n)
        if x_scale is None:
            raise ValueError("x_scale: scheme 'fp8' needs the f32 activation scale, a scalar or [M, 1]")
        x_scale = _validate.row_scale("x_scale", x_scale, m)
    else:
        if x_scale is not None:
            raise ValueError(f"x_scale: scheme {scheme!r} takes no activation scale (quantize-dequantize x before "
                             f"the call), got one")
        if scheme == "bf16" and w_scale is not None:
            raise ValueError("w_scale: scheme 'bf16' takes no weight scale, got one")
    group_sizes = _group_sizes(group_sizes, e, m)
    # the kernel takes e4m3fn (FP8), N a multiple of 16 and K of 32; auto never fails where XLA works
    supported = n % 16 == 0 and k % 32 == 0 and (scheme != "fp8" or x.dtype == jnp.float8_e4m3fn)
    which = _dispatch.resolve_impl(op_name(scheme), impl, m, k, n, supported=supported)
    if which == "pallas":
        _validate.multiple_of("w", n, 16, "N")
        _validate.multiple_of("x", k, 32, "K")
        from quark_jax.kernels.grouped_mm import pallas_triton

        return pallas_triton.grouped_mm_pallas(x, w, group_sizes, w_scale=w_scale, x_scale=x_scale, scheme=scheme,
                                               out_dtype=jnp.dtype(out_dtype))
    return grouped_mm_xla(x, w, group_sizes, w_scale=w_scale, x_scale=x_scale, scheme=scheme,
                          out_dtype=jnp.dtype(out_dtype))


__all__ = ["grouped_mm", "grouped_mm_xla", "SCHEMES", "op_name"]
