"""XLA reference for the block-scaled FP8 GEMM (vLLM's ``w8a8_block_fp8_matmul`` semantics): both operands
dequantized to float32 with their block scales, one f32 dot at ``Precision.HIGHEST``."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax.quant import dequantize_fp8_per_block


def fp8_block_mm_xla(x_q, w_q, x_scale, w_scale, bias=None, *, block=(128, 128), out_dtype=jnp.bfloat16):
    """``out(sum_k (x_q * x_scale)[m, k] * (w_q * w_scale)[n, k] + bias[n])``, scales expanded per block.

    >>> x = jnp.ones((1, 4), jnp.float8_e4m3fn); w = jnp.ones((2, 4), jnp.float8_e4m3fn)
    >>> fp8_block_mm_xla(x, w, jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 0.5]]), block=(2, 2),
    ...                  out_dtype=jnp.float32).tolist()
    [[3.0, 3.0]]
    """
    bk = int(block[1])
    xd = x_q.astype(jnp.float32) * jnp.repeat(x_scale.astype(jnp.float32), bk, axis=1)[:, :x_q.shape[1]]
    wd = dequantize_fp8_per_block(w_q, w_scale, block)
    acc = lax.dot_general(xd, wd, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)
