"""The interface between the generic nn package and an attention module with an FP8 KV cache (SPEC section 6).

nn does not know any decoder. A module that can store its keys and values in FP8 inherits :class:`FP8KVCacheScales`
(next to ``nnx.Module``): :func:`quark_jax.quantize_model` calls its ``enable_fp8_kv_cache()`` when the Quark
config has a KV-cache group, and :func:`quark_jax.load_weights` fills its ``k_scale`` / ``v_scale`` (:class:`KVScale`
variables) from the checkpoint names :func:`quark_jax.checkpoint.kv_scale_tensor_names` lists.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

__all__ = ["KVScale", "FP8KVCacheScales"]


class KVScale(nnx.Variable):
    """A per-layer FP8 KV-cache scale (float32 scalar), loaded from ``<attn>.k_proj.output_scale`` etc."""


class FP8KVCacheScales:
    """Mixin for an NNX module whose KV cache may be FP8: ``kv_fp8`` (bool) and, once enabled, ``k_scale`` /
    ``v_scale`` (:class:`KVScale`, float32 scalars, 1.0 until a checkpoint sets them).

    >>> class Attn(FP8KVCacheScales, nnx.Module):
    ...     def __init__(self): self.kv_fp8 = False
    >>> a = Attn(); a.enable_fp8_kv_cache()
    >>> a.kv_fp8, float(a.k_scale[...]), type(a.v_scale).__name__
    (True, 1.0, 'KVScale')
    """

    kv_fp8: bool = False

    def enable_fp8_kv_cache(self) -> None:
        """Store k/v in FP8 with per-tensor ``k_scale``/``v_scale`` (1.0 until a checkpoint sets them)."""
        if not self.kv_fp8:
            self.kv_fp8 = True
            self.k_scale = KVScale(jnp.ones((), jnp.float32))
            self.v_scale = KVScale(jnp.ones((), jnp.float32))
