"""How Hugging Face / Quark checkpoints name things: fused modules and their shards, FP8 KV-cache scale tensors.

One module for the names, so that the config (which resolves a fused layer per shard), the checkpoint loader
(which reads the shards) and nn (which maps module paths to tensors) agree. It sits below :mod:`quark_jax.config`
and imports nothing of quark_jax.

>>> shard_paths("model.layers.0.self_attn.qkv_proj")
('model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj')
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["FUSED_MODULES", "shard_paths", "kv_scale_tensor_names"]

FUSED_MODULES: Mapping[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
"""vLLM's packed_modules_mapping: a fused module name -> its shards, in row order."""


def shard_paths(layer_path: str, fused_modules: Mapping[str, Sequence[str]] = FUSED_MODULES) -> tuple[str, ...]:
    """The checkpoint module paths behind ``layer_path``: its shards for a fused name (last component only), else
    itself.

    >>> shard_paths("model.layers.0.mlp.gate_up_proj")
    ('model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj')
    >>> shard_paths("model.layers.0.mlp.down_proj")
    ('model.layers.0.mlp.down_proj',)
    """
    parent, _, leaf = layer_path.rpartition(".")
    if leaf in fused_modules:
        return tuple(f"{parent}.{s}" if parent else s for s in fused_modules[leaf])
    return (layer_path,)


def kv_scale_tensor_names(attn_path: str) -> dict[str, tuple[str, ...]]:
    """Checkpoint names that may hold the k / v scales of the attention module ``attn_path``, in order of
    preference: Quark's ``k_proj.output_scale`` (the exporter merges k and v to their max), then ``k_scale`` /
    ``attn.k_scale`` (vLLM's names); SPEC section 6.

    >>> kv_scale_tensor_names("m.self_attn")["v_scale"]
    ('m.self_attn.v_proj.output_scale', 'm.self_attn.v_scale', 'm.self_attn.attn.v_scale')
    """
    return {f"{c}_scale": (f"{attn_path}.{c}_proj.output_scale", f"{attn_path}.{c}_scale",
                           f"{attn_path}.attn.{c}_scale") for c in ("k", "v")}
