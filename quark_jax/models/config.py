"""The decoder's configuration, parsed from a Hugging Face ``config.json`` (Llama family).

Supported ``model_type``: ``llama``, ``qwen2`` (q/k/v biases, no o_proj bias), ``mistral`` (without a sliding
window), ``qwen3`` (per-head q/k RMSNorm), and the mixtures of experts ``mixtral`` (every layer sparse) and
``qwen3_moe`` (``decoder_sparse_step``, ``mlp_only_layers``, ``moe_intermediate_size``, ``norm_topk_prob``). RoPE comes from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (transformers
4), with rope types ``default``, ``linear`` and ``llama3``. Anything else raises :class:`UnsupportedModelError`
naming the field.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp

from quark_jax.errors import UnsupportedModelError  # re-exported here (its historical home)

__all__ = ["ModelConfig", "UnsupportedModelError", "SUPPORTED_MODEL_TYPES", "RopeConfig"]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3", "mixtral", "qwen3_moe")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16, "float": jnp.float32,
           "half": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """RoPE parameters: ``theta`` and the scaling rule (``rope_type`` with its ``factor`` etc.)."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What the decoder needs from ``config.json``; frozen and hashable (it is static under ``jax.jit``).

    >>> cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 256, "hidden_size": 64,
    ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2})
    >>> cfg.head_dim, cfg.rope.theta, cfg.qkv_bias, cfg.dtype
    (16, 10000.0, False, 'float32')
    >>> moe = ModelConfig.from_dict({"model_type": "qwen3_moe", "vocab_size": 256, "hidden_size": 64,
    ...     "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_experts": 8,
    ...     "num_experts_per_tok": 2, "moe_intermediate_size": 32, "mlp_only_layers": [1]})
    >>> moe.moe_layers, moe.num_experts_per_tok, moe.qk_norm, moe.norm_topk_prob
    ((0, 2), 2, True, False)
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim of each q and k head (q_norm / k_norm), before RoPE
    num_experts: int = 0  # experts of each sparse (MoE) layer; 0: a dense model
    num_experts_per_tok: int = 0  # top-k experts per token
    moe_intermediate_size: int = 0  # each expert's intermediate size (Mixtral: intermediate_size)
    norm_topk_prob: bool = True  # renormalize the top-k routing weights to sum to 1 (Mixtral always)
    moe_layers: tuple[int, ...] = ()  # indices of the sparse layers; the others have a dense MLP
    round_routing_weights: bool = False  # Qwen3-MoE: routing weights rounded to the model dtype (HF), else f32

    @property
    def jnp_dtype(self):
        return jnp.dtype(_DTYPES[self.dtype])

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | os.PathLike) -> "ModelConfig":
        """Read ``checkpoint_dir/config.json``."""
        from quark_jax.io import read_config_json, resolve_checkpoint

        directory = resolve_checkpoint(checkpoint_dir)
        return cls.from_dict(read_config_json(directory), source=str(directory / "config.json"))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parse and validate an HF config dict; errors (:class:`UnsupportedModelError`) name ``source`` and the
        field."""
        if not isinstance(d, dict):
            raise UnsupportedModelError(f"{source}: expected a JSON object, got {type(d).__name__}")
        try:
            cfg = cls._parse(d, source)
        except UnsupportedModelError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError) as e:  # wrong type
            raise UnsupportedModelError(f"{source}: a field has a value of the wrong type or range "
                                        f"({type(e).__name__}: {e})") from None
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings")
        bad = [f"{k} = {getattr(cfg, k)}" for k in sizes if getattr(cfg, k) < 1]
        if bad:
            raise UnsupportedModelError(f"{source}: expected positive sizes, found {', '.join(bad)}")
        return cfg

    @classmethod
    def _parse(cls, d: dict[str, Any], source: str) -> "ModelConfig":
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(f"{source}: model_type {model_type!r} is not supported "
                                        f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")

        def need(key):
            if key not in d or d[key] is None:
                raise UnsupportedModelError(f"{source}: required field {key!r} is missing")
            return d[key]

        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        kv_heads = int(d.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise UnsupportedModelError(f"{source}: num_attention_heads {heads} is not a multiple of "
                                        f"num_key_value_heads {kv_heads}")
        head_dim = int(d.get("head_dim") or hidden // heads)
        if head_dim % 2:
            raise UnsupportedModelError(f"{source}: head_dim {head_dim} must be even for RoPE")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"{source}: hidden_act {act!r} is not supported (supported: silu)")
        if float(d.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedModelError(f"{source}: partial_rotary_factor {d['partial_rotary_factor']} is not "
                                        "supported (only 1.0)")
        sliding = d.get("sliding_window")
        if model_type == "mistral" and sliding is not None:
            raise UnsupportedModelError(f"{source}: sliding_window {sliding} is not supported (only null)")
        if model_type in ("qwen2", "qwen3", "qwen3_moe") and d.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window true is not supported")
        if model_type == "mixtral" and sliding is not None:
            raise UnsupportedModelError(f"{source}: sliding_window {sliding} is not supported (only null)")
        layer_types = d.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise UnsupportedModelError(f"{source}: layer_types {sorted(set(layer_types))} are not supported (only "
                                        "full_attention)")

        dtype = d.get("dtype") or d.get("torch_dtype") or "float32"
        if dtype not in _DTYPES:
            raise UnsupportedModelError(f"{source}: dtype {dtype!r} is not supported "
                                        "(supported: float32, bfloat16, float16)")
        dtype = jnp.dtype(_DTYPES[dtype]).name

        if model_type == "qwen2":  # Qwen2: q/k/v always carry a bias, o_proj never
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            eos = tuple(int(e) for e in eos)
        layers = int(need("num_hidden_layers"))
        moe = _parse_moe(d, model_type, layers, source)
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope=_parse_rope(d, source),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            dtype=dtype,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos,
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            **moe,
        )


def _parse_moe(d: dict[str, Any], model_type: str, layers: int, source: str) -> dict[str, Any]:
    """The MoE fields of ModelConfig: which layers are sparse, experts, top-k and the routing options."""
    if model_type == "mixtral":
        experts, inter, norm = int(d.get("num_local_experts", 8)), int(d.get("intermediate_size", 0)), True
        sparse = tuple(range(layers))
    elif model_type == "qwen3_moe":
        # transformers 4 writes num_experts, transformers 5 num_local_experts
        experts = int(d.get("num_experts") or d.get("num_local_experts") or 0)
        inter = int(d.get("moe_intermediate_size", 0))
        norm = bool(d.get("norm_topk_prob", False))
        step = int(d.get("decoder_sparse_step", 1))
        if step < 1:
            raise UnsupportedModelError(f"{source}: decoder_sparse_step {step} must be >= 1")
        only = {int(i) for i in (d.get("mlp_only_layers") or ())}
        sparse = tuple(i for i in range(layers) if i not in only and experts > 0 and (i + 1) % step == 0)
    else:
        return {}
    top_k = int(d.get("num_experts_per_tok", 2))
    if sparse and not (experts >= 1 and 1 <= top_k <= experts and inter >= 1):
        raise UnsupportedModelError(f"{source}: expected num_experts >= 1, 1 <= num_experts_per_tok <= num_experts "
                                    f"and a positive expert intermediate size, found {experts} experts, top-k "
                                    f"{top_k}, intermediate size {inter}")
    # router_jitter_noise (Mixtral) is training-time noise: inference ignores it, as HF and vLLM do
    return dict(num_experts=experts if sparse else 0, num_experts_per_tok=top_k if sparse else 0,
                moe_intermediate_size=inter if sparse else 0, norm_topk_prob=norm, moe_layers=sparse,
                round_routing_weights=model_type == "qwen3_moe")


def _parse_rope(d: dict[str, Any], source: str) -> RopeConfig:
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params and not isinstance(next(iter(params.values())), dict):
        p = dict(params)  # transformers 5: {"rope_theta": ..., "rope_type": ..., ...}
        where = "rope_parameters"
    elif isinstance(params, dict) and params:
        raise UnsupportedModelError(f"{source}: per-layer-type rope_parameters are not supported")
    else:
        p = dict(d.get("rope_scaling") or {})  # transformers 4: rope_theta at the top, scaling apart
        p.setdefault("rope_theta", d.get("rope_theta", 10000.0))
        where = "rope_scaling"
    rope_type = p.get("rope_type", p.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(f"{source}: {where}.rope_type {rope_type!r} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    theta = p.get("rope_theta", d.get("rope_theta", 10000.0))
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    if "factor" not in p:
        raise UnsupportedModelError(f"{source}: {where} of type {rope_type!r} needs a 'factor'")
    if rope_type == "linear":
        return RopeConfig(theta=float(theta), rope_type="linear", factor=float(p["factor"]))
    omax = p.get("original_max_position_embeddings")
    if omax is None:
        raise UnsupportedModelError(f"{source}: {where} of type 'llama3' needs 'original_max_position_embeddings'")
    return RopeConfig(theta=float(theta), rope_type="llama3", factor=float(p["factor"]),
                      low_freq_factor=float(p.get("low_freq_factor", 1.0)),
                      high_freq_factor=float(p.get("high_freq_factor", 4.0)),
                      original_max_position_embeddings=int(omax))
