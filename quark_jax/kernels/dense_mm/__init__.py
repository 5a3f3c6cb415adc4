"""Dense (bf16 / f16 / f32) decode GEMM: ``dense_mm`` with an XLA reference and a Pallas-Triton kernel.

Layout (the same as every op): this module is the entry and its dispatch, ``xla.py`` the reference (the
``dot_general`` a float ``nnx.Linear`` runs), ``pallas_triton.py`` the kernel with its ``Config`` and tuned
defaults. The weight is the ``nnx.Linear`` ``kernel`` as stored, [K, N] (unlike the quantized GEMMs' [N, K]).
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax.kernels import _dispatch, _validate, tuning
from quark_jax.kernels.dense_mm.xla import dense_mm_xla

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
PALLAS_MAX_M = 16
"""``impl="auto"`` runs the Pallas kernel for M <= this (decode); larger M goes to XLA's GEMM."""


def dense_mm_impl(m: int, k: int, n: int, dtype) -> str:
    """What ``impl="auto"`` runs at shape (m, k, n): "pallas" on a CUDA sm90 GPU (compiled Pallas) for bf16 / f16
    operands, M <= ``PALLAS_MAX_M`` and N, K multiples of 16; "xla" anywhere else (CPU: always).

    >>> dense_mm_impl(1, 4096, 4096, jnp.bfloat16)   # on the CPU
    'xla'
    """
    _, cc = tuning.current_device()
    gpu = cc is not None and cc.startswith("9.") and not _dispatch.pallas_interpret()
    ok = (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and m <= PALLAS_MAX_M
          and n % 16 == 0 and k % 16 == 0)
    return "pallas" if gpu and ok else "xla"


def dense_mm(x, w_kn, bias=None, *, impl="auto", out_dtype=None):
    """``y[m, n] = out_dtype(sum_k x[m, k] w_kn[k, n] + bias[n])``, float32 accumulation, one rounding.

    Args:
      x: [M, K] bf16, f16 or f32 activations.
      w_kn: [K, N] of x's dtype: an ``nnx.Linear`` ``kernel`` as stored (no repack).
      bias: optional [N] (any float dtype), added in float32.
      impl: "auto" (:func:`dense_mm_impl`: the Pallas kernel for decode shapes on an sm90 GPU, else XLA), "pallas"
        (N, K multiples of 16; interpret mode off a GPU) or "xla" (``dense_mm_xla``: what ``nnx.Linear`` runs).
      out_dtype: bf16, f16 or f32; None: x's dtype.

    Returns [M, N] ``out_dtype``. f32 operands: full-f32 products (not TF32) on either path. The Pallas kernel
    sums in another float32 order than XLA (and a K split adds its partial sums in float32).

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((2, 32), jnp.bfloat16); w = jnp.full((32, 16), 0.25, jnp.bfloat16)
    >>> dense_mm(x, w, jnp.ones(16), impl="xla")[0, :3].tolist()
    [9.0, 9.0, 9.0]
    >>> dense_mm(x, w, impl="pallas", out_dtype=jnp.float32)[1, :2].tolist()
    [8.0, 8.0]
    """
    _dispatch.check_impl(impl)
    x = _validate.matrix("x", x, DTYPES, "[M, K] (bf16, f16 or f32)")
    w_kn = _validate.matrix("w_kn", w_kn, (x.dtype,), f"[K, N] (same dtype as x, {x.dtype})")
    m, k = x.shape
    n = w_kn.shape[1]
    _validate.same_k("x", k, "w_kn", w_kn.shape[0])
    bias = _validate.bias_vector(bias, n)
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    if out_dtype not in DTYPES:
        raise TypeError(f"out_dtype: expected bfloat16, float16 or float32, got {out_dtype}")
    which = dense_mm_impl(m, k, n, x.dtype) if impl == "auto" else impl
    if which == "pallas":
        _validate.multiple_of("w_kn", n, 16, "N")
        _validate.multiple_of("w_kn", k, 16, "K")
        from quark_jax.kernels.dense_mm import pallas_triton

        return pallas_triton.dense_mm_pallas(x, w_kn, bias, out_dtype=out_dtype)
    return dense_mm_xla(x, w_kn, bias, out_dtype=out_dtype)


__all__ = ["dense_mm", "dense_mm_xla", "dense_mm_impl", "PALLAS_MAX_M"]
