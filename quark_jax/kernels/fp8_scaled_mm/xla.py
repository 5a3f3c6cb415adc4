"""XLA reference for the FP8 scaled GEMM: raw fp8 operands, weights [N, K], contracting dim 1 of both.

That form is what XLA hands to cuBLASLt's FP8 GEMM on Hopper (BASELINES.md); a bf16 dequant pattern would not be.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def fp8_scaled_mm_xla(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16):
    """``out_dtype(x_scale * (w_scale * (x_q @ w_q.T)_f32) + bias)``; shapes already validated by the entry."""
    acc = lax.dot_general(x_q, w_q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = x_scale * (w_scale * acc)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)
