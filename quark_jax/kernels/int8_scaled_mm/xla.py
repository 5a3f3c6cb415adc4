"""XLA reference for the INT8 scaled GEMM (int32 accumulation, exact) with vLLM's azp epilogue."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def int8_accumulate(x_q, w_q):
    """``x_q @ w_q.T`` in int32 (exact): [M, K] int8 x [N, K] int8 -> [M, N] int32."""
    return lax.dot_general(x_q, w_q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


def apply_azp(acc, azp_adj=None, azp=None):
    """``acc - azp_adj[n]`` (per-tensor zero point folded in azp_adj) or ``acc - azp[m] * azp_adj[n]`` (per-token,
    azp_adj then the weight column sums). int32 throughout."""
    if azp_adj is None:
        return acc
    if azp is None:
        return acc - azp_adj[None, :]
    return acc - azp * azp_adj[None, :]


def int8_scaled_mm_xla(x_q, w_q, x_scale, w_scale, bias=None, *, azp_adj=None, azp=None, out_dtype=jnp.bfloat16):
    """``out(x_scale * (w_scale * f32(acc - azp term)) + bias)``; shapes already validated by the entry."""
    acc = apply_azp(int8_accumulate(x_q, w_q), azp_adj, azp)
    y = x_scale * (w_scale * acc.astype(jnp.float32))
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)
