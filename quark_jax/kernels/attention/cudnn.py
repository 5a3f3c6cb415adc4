"""cuDNN's fused flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``) for a prefill.

cuDNN's causal mask has no per-row start, so left-padded rows are rotated first: row b's tokens move
``first_slot[b]`` slots to the front (real tokens at 0..n_b-1, the padding after them, where causal masking hides
it from the real queries), attended with the plain causal mask, and rotated back. Four gathers of [B, T, ., D]
(microseconds) instead of a [B, 1, T, T] mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _rotate(x, shift):
    """Row b of x [B, T, ...] rotated left by shift[b]: ``out[b, i] = x[b, (i + shift[b]) % T]``."""
    t = x.shape[1]
    idx = (jnp.arange(t, dtype=jnp.int32)[None, :] + shift[:, None]) % t
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def prefill_attention_cudnn(q, k, v, *, first_slot=None):
    """q [B, T, H, D], k/v [B, T, H_kv, D] (bf16/f16, CUDA) -> [B, T, H, D] in q's dtype; as
    :func:`quark_jax.kernels.attention.prefill_attention`."""
    d = q.shape[-1]
    if first_slot is not None:
        first_slot = jnp.asarray(first_slot, jnp.int32)
        q, k, v = (_rotate(a, first_slot) for a in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, scale=d ** -0.5, is_causal=True, implementation="cudnn")
    if first_slot is not None:
        out = _rotate(out, -first_slot)
    return out.astype(q.dtype)
