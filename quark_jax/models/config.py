"""The decoder's configuration, parsed from a Hugging Face ``config.json`` (Llama family).

Supported ``model_type``: ``llama``, ``qwen2`` (q/k/v biases, no o_proj bias) and ``mistral`` (without a sliding
window). RoPE comes from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (transformers
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

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
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
        if model_type == "qwen2" and d.get("use_sliding_window"):
            raise UnsupportedModelError(f"{source}: use_sliding_window true is not supported")

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
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
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
        )


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
