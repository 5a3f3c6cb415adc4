"""Rotary position embeddings in the Hugging Face layout ("rotate half": dims [0, D/2) pair with [D/2, D)).

HF Llama checkpoints store q_proj/k_proj rows permuted for this layout, so it is the one to use with them.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from quark_jax.models.config import RopeConfig
from quark_jax.quant import round_to

__all__ = ["inverse_frequencies", "rope_cos_sin", "apply_rope"]


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """The D/2 inverse frequencies ``1 / theta**(2i/D)`` (float32), scaled per ``rope.rope_type``.

    * ``linear``: divided by ``factor``.
    * ``llama3``: wavelengths shorter than ``original_max / high_freq_factor`` keep their frequency, longer than
      ``original_max / low_freq_factor`` are divided by ``factor``, and those in between interpolate smoothly.

    >>> inverse_frequencies(RopeConfig(theta=10000.0), 4).tolist()
    [1.0, 0.009999999776482582]
    """
    inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if rope.rope_type == "linear":
        inv = inv / rope.factor
    elif rope.rope_type == "llama3":
        old = float(rope.original_max_position_embeddings)
        low_wavelen, high_wavelen = old / rope.low_freq_factor, old / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        mid = (1 - smooth) * inv / rope.factor + smooth * inv
        inv = np.where(wavelen < high_wavelen, inv, np.where(wavelen > low_wavelen, inv / rope.factor, mid))
    return inv.astype(np.float32)


def rope_cos_sin(positions, inv_freq: np.ndarray, dtype):
    """cos and sin [..., D] for integer ``positions`` [...]: angles in float32, then cast to ``dtype`` (as HF).

    >>> c, s = rope_cos_sin(jnp.array([0, 1]), np.array([1.0, 0.5], np.float32), jnp.float32)
    >>> c.shape, float(c[0, 0]), round(float(s[1, 1]), 6)
    ((2, 4), 1.0, 0.479426)
    """
    ang = jnp.asarray(positions, jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    ang = jnp.concatenate([ang, ang], axis=-1)
    return round_to(jnp.cos(ang), dtype), round_to(jnp.sin(ang), dtype)


def apply_rope(x, cos, sin):
    """Rotate ``x`` [B, T, H, D] by ``cos``/``sin`` [B, T, D]: ``x * cos + rotate_half(x) * sin`` in x's dtype,
    each product and the sum rounded to it (as vLLM's rotary kernel computes in the model dtype).

    >>> x = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    >>> c, s = rope_cos_sin(jnp.array([[1]]), np.array([np.pi / 2, 0.0], np.float32), jnp.float32)
    >>> [round(float(v), 6) for v in apply_rope(x, c, s).ravel()]
    [-0.0, 0.0, 1.0, 0.0]
    """
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    cos = round_to(cos[:, :, None, :], x.dtype).astype(jnp.float32)
    sin = round_to(sin[:, :, None, :], x.dtype).astype(jnp.float32)
    a, b = round_to(xf * cos, x.dtype), round_to(rotated * sin, x.dtype)
    return round_to(a.astype(jnp.float32) + b.astype(jnp.float32), x.dtype)
