"""``quantize_model``: swap the ``nnx.Linear`` layers of any Flax NNX model for Quark layers, by module path.

The module path of a layer is its attribute path joined by dots (``model.layers.0.self_attn.q_proj``; list
indices are path components), optionally behind a ``prefix`` when the model is a part of the checkpoint's model.
Each ``nnx.Linear`` whose path :meth:`QuarkConfig.scheme_for` resolves to a scheme (layer patterns, type table,
global config; ``exclude``; fused names ``qkv_proj`` / ``gate_up_proj`` resolve per shard) becomes a
:class:`~quark_jax.nn.QuarkLinear` with the same sizes, bias and dtype; excluded and unquantized layers (and
``lm_head``/embeddings unless configured) stay as they are. The quantized parameters start empty (zeros, or
abstract when the model is abstract, e.g. built under ``nnx.eval_shape``); :func:`quark_jax.load_weights` fills
them from the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import jax
from flax import nnx

from quark_jax.checkpoint import FUSED_MODULES, layer_geometry, open_checkpoint
from quark_jax.config import QuarkConfig
from quark_jax.errors import InvalidArgumentError
from quark_jax.nn.experts import EXPERT_PROJECTIONS, QuarkExperts
from quark_jax.nn.kv_scales import FP8KVCacheScales
from quark_jax.nn.linear import QuarkLinear
from quark_jax.nn.load import module_path
from quark_jax.nn.parallel import DEFAULT_RULES, check_mesh

__all__ = ["quantize_model", "as_quark_config", "set_attr_at"]


def as_quark_config(config) -> QuarkConfig:
    """A :class:`QuarkConfig` from a QuarkConfig, a checkpoint directory or a ``quantization_config`` dict.

    >>> as_quark_config({"quant_method": "quark", "export": {}}).exclude
    ()
    """
    if isinstance(config, QuarkConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return QuarkConfig.from_pretrained(Path(config))
    if isinstance(config, Mapping):
        return QuarkConfig.from_dict(config)
    raise TypeError(f"config: expected a QuarkConfig, a checkpoint directory or a quantization_config dict, got "
                    f"{type(config).__name__}")


def set_attr_at(model, path: tuple, new) -> None:
    """Replace the submodule at ``path`` (attribute names and list indices) by ``new``.

    >>> class M(nnx.Module):
    ...     def __init__(self): self.blocks = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(0))])
    >>> m = M(); set_attr_at(m, ("blocks", 0), nnx.Linear(2, 3, rngs=nnx.Rngs(0))); m.blocks[0].out_features
    3
    """
    parent = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    last = path[-1]
    if isinstance(last, int):
        parent[last] = new
    else:
        setattr(parent, last, new)


def _is_abstract(var) -> bool:
    return isinstance(var.get_value(), jax.ShapeDtypeStruct)


def _fused_widths(path: str, ckpt_path: str, linear, config: QuarkConfig, logical_widths, scheme):
    leaf = path.rpartition(".")[2]
    if leaf not in FUSED_MODULES:
        return None
    given = None
    if logical_widths:
        given = logical_widths.get(ckpt_path, logical_widths.get(path, logical_widths.get(leaf)))
    if given is not None:
        return tuple(int(w) for w in given)
    if config.checkpoint_dir is not None:
        return layer_geometry(open_checkpoint(config.checkpoint_dir), ckpt_path, scheme).logical_widths
    raise ValueError(f"layer {ckpt_path}: a fused layer ({' + '.join(FUSED_MODULES[leaf])}) needs its shard "
                     f"sizes: pass logical_widths={{{leaf!r}: (...)}} or a config read from a checkpoint")


def _experts_scheme(config: QuarkConfig, module: QuarkExperts, ckpt_path: str):
    """The one scheme of every expert's projections of a stacked experts module (per-expert paths resolved by the
    config, HF spelling); experts that resolve differently are an InvalidArgumentError naming two of them."""
    parent = ckpt_path.rpartition(".")[0]
    first, seen = None, None
    for i in range(module.num_experts):
        for proj in EXPERT_PROJECTIONS[module.leaf]:
            path = f"{parent}.{i}.{proj}"
            scheme = config.scheme_for(path)
            if seen is None:
                first, seen = path, (scheme,)
            elif scheme != seen[0]:
                raise InvalidArgumentError(
                    f"layer {ckpt_path}: the experts of one MoE projection must share one scheme (they are stacked "
                    f"into one array); {first} has {seen[0].summary() if seen[0] else 'none (unquantized)'}, {path} "
                    f"has {scheme.summary() if scheme else 'none (unquantized)'}")
    return seen[0] if seen else None


def quantize_model(model, config, *, prefix: str = "", logical_widths: Mapping[str, Sequence[int]] | None = None,
                   dtype=None, mesh=None, partition_rules=None):
    """Replace ``model``'s ``nnx.Linear`` layers by :class:`QuarkLinear` per ``config``, in place; returns it.

    Args:
      model: any ``nnx.Module`` (concrete or abstract).
      config: a :class:`QuarkConfig`, a checkpoint directory, or a ``quantization_config`` dict.
      prefix: prepended (with a dot) to module paths to form checkpoint paths, e.g. ``"model"`` for a model that
        is the checkpoint's ``model`` submodule.
      logical_widths: shard sizes of fused layers (``{"qkv_proj": (q, k, v)}``, keyed by leaf name or path);
        default: read from the config's checkpoint.
      dtype: the activation dtype of the new layers (default: each Linear's ``dtype`` or ``param_dtype``).
      mesh, partition_rules: check that every new layer splits over the mesh under the rules
        (:mod:`quark_jax.nn.parallel`; an InvalidArgumentError naming the layer, before any weight is read);
        ``load_weights(..., mesh=mesh)`` then places it.

    Modules implementing :class:`~quark_jax.nn.FP8KVCacheScales` (e.g. the attention of :mod:`quark_jax.models`)
    switch to an FP8 KV cache when the config has a KV-cache group.
    Errors (unsupported scheme, fused shards that disagree) name the layer.

    >>> from quark_jax.data import bundled_checkpoint
    >>> class Block(nnx.Module):
    ...     def __init__(self):
    ...         self.q_proj = nnx.Linear(64, 64, use_bias=False, rngs=nnx.Rngs(0))
    >>> m = quantize_model(Block(), bundled_checkpoint("tiny-llama-fp8"), prefix="model.layers.0.self_attn")
    >>> type(m.q_proj).__name__, type(m.q_proj.scheme).__name__
    ('QuarkLinear', 'QuarkW8A8Fp8')
    """
    config = as_quark_config(config)
    replacements = []
    for path, module in nnx.iter_modules(model):
        p = module_path(path)
        ckpt_path = f"{prefix}.{p}" if prefix and p else (prefix or p)
        if isinstance(module, FP8KVCacheScales) and config.kv_cache is not None:
            module.enable_fp8_kv_cache()
        if isinstance(module, QuarkExperts) and module.scheme is None and path:
            scheme = _experts_scheme(config, module, ckpt_path)
            if scheme is not None:
                if mesh is not None:
                    raise InvalidArgumentError(f"layer {ckpt_path}: tensor parallelism (mesh=) does not support MoE "
                                               "experts yet; load without a mesh")

                def build_experts(module=module, scheme=scheme, ckpt_path=ckpt_path):
                    return QuarkExperts(module.num_experts, module.in_features, module.logical_widths,
                                        scheme=scheme, dtype=dtype if dtype is not None else module.dtype,
                                        name=ckpt_path, expert_scales=module.expert_scales)

                new = nnx.eval_shape(build_experts) if _is_abstract(module.weight) else build_experts()
                replacements.append((path, new))
            continue
        if not isinstance(module, nnx.Linear) or not path:
            continue
        scheme = config.scheme_for(ckpt_path)
        if scheme is None:
            continue
        widths = _fused_widths(p, ckpt_path, module, config, logical_widths, scheme)
        layer_dtype = dtype if dtype is not None else (module.dtype or module.param_dtype)

        # an abstract model gets an abstract layer (no memory, no trace per layer)
        new = QuarkLinear(module.in_features, module.out_features, scheme=scheme, logical_widths=widths,
                          use_bias=module.use_bias, dtype=layer_dtype, name=ckpt_path,
                          abstract=_is_abstract(module.kernel))
        if mesh is not None:
            new.plan_sharding(check_mesh(mesh), partition_rules or DEFAULT_RULES, ckpt_path)
        replacements.append((path, new))
    for path, new in replacements:
        set_attr_at(model, path, new)
    return model

