"""XLA reference for the dense decode GEMM: exactly the ``dot_general`` a float ``nnx.Linear`` runs
(``x[M, K]`` contracted with the ``kernel`` [K, N] on dim 0, float32 accumulation, full-f32 products for
float32 operands (``quant.dot_precision``), the bias added in float32) and one rounding to ``out_dtype``, as
``quark_jax.models.llama._proj`` rounds the layer's float32 output."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax.quant import dot_precision

_DIMS = (((1,), (0,)), ((), ()))


def dense_mm_xla(x, w_kn, bias=None, *, out_dtype=None):
    """``out_dtype(x @ w_kn + bias)`` with float32 accumulation; ``out_dtype`` None: x's dtype.

    >>> import jax.numpy as jnp
    >>> dense_mm_xla(jnp.ones((2, 8), jnp.bfloat16), jnp.ones((8, 3), jnp.bfloat16), jnp.ones(3)).tolist()
    [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]
    """
    out_dtype = x.dtype if out_dtype is None else jnp.dtype(out_dtype)
    y = lax.dot_general(x, w_kn, _DIMS, precision=dot_precision(x, w_kn), preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)
