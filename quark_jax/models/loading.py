"""``from_pretrained``: build the decoder from ``config.json`` and fill it from the checkpoint's safetensors."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.config import QuarkConfig
from quark_jax.errors import CheckpointError, InvalidArgumentError
from quark_jax.io import open_checkpoint, read_config_json, resolve_checkpoint
from quark_jax.models.compile_cache import enable_compilation_cache
from quark_jax.models.config import ModelConfig
from quark_jax.models.generation import check_fits
from quark_jax.models.llama import LlamaForCausalLM
from quark_jax.models.moe import moe_block_name
from quark_jax.nn.load import load_weights
from quark_jax.nn import DEFAULT_RULES, EXPERT_SCALE_MODES
from quark_jax.nn.substitute import quantize_model

__all__ = ["from_pretrained", "LOAD_PHASES"]

LOAD_PHASES: dict = {}
"""Host seconds of the phases of the last :func:`from_pretrained` in this process (``open``, ``build``,
``quantize``, ``weights``: device work may still run after it returns), for benchmarks."""


def from_pretrained(checkpoint_dir: str | os.PathLike, dtype=None, *, fuse_projections: bool | None = None,
                    progress: bool | None = None, mesh=None, partition_rules=None, expert_scales: str = "vllm",
                    **options):
    """The Llama-family decoder of ``checkpoint_dir`` (``config.json`` + safetensors), weights loaded.

    ``checkpoint_dir`` is a directory, a bundled name or a Hugging Face Hub id (``"org/name"``, see
    :func:`quark_jax.io.resolve_checkpoint`).

    A Quark checkpoint (``quantization_config`` in config.json) gets :class:`~quark_jax.nn.QuarkLinear` layers
    where its config says (:func:`quark_jax.quantize_model`) and an FP8 KV cache when the config has a KV-cache
    group; ``options`` go to :class:`~quark_jax.QuarkConfig` (``impl``, ``azp_mode``, ...). A float checkpoint
    gives a float model. ``dtype`` (default: the config's ``dtype``/``torch_dtype``) is the activation and
    float-parameter dtype: float32, bfloat16 or float16 (anything else raises InvalidArgumentError listing them).
    ``fuse_projections=True`` (the default, except for a float checkpoint under a ``mesh``) builds vLLM's layout (fused ``qkv_proj`` and ``gate_up_proj``): one
    GEMM each (fewer kernels per decode step), and for per-tensor FP8/INT8 the shards requantized to their max
    scale exactly as vLLM does, so the logits follow vLLM rather than Quark's unfused reference (docs/SPEC.md
    bounds the difference); ``False`` keeps the checkpoint's separate projections (Quark's reference layout).
    Before any weight is read, the model's size is checked against the device's free memory
    (:class:`~quark_jax.models.DeviceMemoryError`). The model is built abstractly (no random init) and each tensor
    is read once, straight into place; ``progress`` shows a stderr progress line (default: for checkpoints over
    256 MiB). The model's ``checkpoint_dir`` (a str) is the resolved directory, where ``generate_text`` finds the
    tokenizer.

    Mixture-of-experts models (``mixtral``, ``qwen3_moe``; docs/SPEC.md section 13) stack each MoE layer's expert
    weights into [E, N, K] per projection (:class:`quark_jax.nn.QuarkExperts`); ``expert_scales="vllm"`` (default)
    shares scales as vLLM's Quark MoE methods do (gate/up requantized to their max per expert, static input scales
    the max over experts), ``"checkpoint"`` keeps every expert's own scales (Quark's reference semantics).

    ``mesh`` (a ``jax.sharding.Mesh`` with axes "data" and/or "model"): tensor-parallel inference. Every
    parameter is placed with its NamedSharding (``partition_rules``, default
    :data:`quark_jax.nn.parallel.DEFAULT_RULES`: Megatron column / row splits over "model", docs/SPEC.md), each
    device reading only its slice from the safetensors files; the quantized GEMMs run per shard; ``generate``
    shards the KV cache (heads over "model", batch over "data": the batch must be a multiple of "data").

    >>> from quark_jax.data import bundled_checkpoint                   # doctest: +SKIP
    >>> model = from_pretrained(bundled_checkpoint())                   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    dtype = check_model_dtype(dtype)
    if expert_scales not in EXPERT_SCALE_MODES:
        raise InvalidArgumentError(f"expert_scales: expected one of {', '.join(EXPERT_SCALE_MODES)}, got "
                                   f"{expert_scales!r}")
    enable_compilation_cache()  # before anything compiles (models.compile_cache: where, and how to turn it off)
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    raw = read_config_json(checkpoint_dir)  # the one parse of config.json; the reader below reuses it
    cfg = ModelConfig.from_dict(raw, source=str(checkpoint_dir / "config.json"))
    quark = raw.get("quantization_config") is not None
    if options and not quark:
        raise InvalidArgumentError(f"checkpoint {checkpoint_dir}: options {sorted(options)} apply to Quark checkpoints, and "
                         "this one has no quantization_config")
    reader = open_checkpoint(checkpoint_dir, config=raw)
    if cfg.moe_layers and mesh is not None:
        raise InvalidArgumentError(f"checkpoint {checkpoint_dir}: tensor parallelism (mesh=) does not support "
                                   f"mixture-of-experts models ({cfg.model_type}) yet; load without a mesh")
    moe_module = moe_block_name(reader, cfg)
    if fuse_projections is None:  # a float fused layer under a mesh would split [q | k | v] contiguously (XLA
        # partitions it, then moves activations between devices); a Quark layer splits per logical shard
        fuse_projections = quark or mesh is None
    t1 = time.perf_counter()
    model = LlamaForCausalLM.abstract(cfg, dtype=dtype, fuse_projections=fuse_projections, moe_module=moe_module,
                                      expert_scales=expert_scales)
    t2 = time.perf_counter()
    rules = None
    if mesh is not None:
        rules = dataclasses.replace(partition_rules or DEFAULT_RULES, head_dim=cfg.head_dim)
    if quark:
        d, q, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        widths = {"qkv_proj": (q * d, kv * d, kv * d), "gate_up_proj": (cfg.intermediate_size,) * 2}
        quantize_model(model, QuarkConfig.from_pretrained(reader, **options), logical_widths=widths, mesh=mesh,
                       partition_rules=rules)
    t3 = time.perf_counter()
    weight_bytes = sum(_nbytes(v) for _, v in nnx.to_flat_state(nnx.state(model)))
    if mesh is not None:  # each device holds about 1/model of the weights (replicated norms are small)
        weight_bytes //= dict(mesh.shape).get("model", 1)
    check_fits(weight_bytes, f"checkpoint {checkpoint_dir}: the model's weights"
                             + (" (one device's share)" if mesh is not None else ""))
    ignore = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
    load_weights(model, reader, ignore=ignore, progress=progress, mesh=mesh, partition_rules=rules)
    _require_concrete(model, checkpoint_dir)
    t4 = time.perf_counter()
    LOAD_PHASES.clear()
    LOAD_PHASES.update(open=t1 - t0, build=t2 - t1, quantize=t3 - t2, weights=t4 - t3)
    model.mesh = mesh  # static: generate shards the KV cache over it
    if mesh is not None:  # the decode attention kernel is one pallas_call, which XLA cannot partition over heads
        for _, m in nnx.iter_modules(model):
            if getattr(m, "decode_attention_impl", None) == "auto":
                m.decode_attention_impl = "xla"
    model.checkpoint_dir = str(checkpoint_dir)  # where generate_text finds the tokenizer (a str: graphdefs compare)
    return model


SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
"""Activation / float-parameter dtypes of the decoder."""


def check_model_dtype(dtype):
    """``dtype`` as a numpy dtype (None stays None: the checkpoint's), or InvalidArgumentError listing the supported
    ones (float64 would silently compute in float32 without jax_enable_x64; integer types are not activations).

    >>> check_model_dtype("bfloat16"), check_model_dtype(None)
    (dtype(bfloat16), None)
    >>> check_model_dtype("float64")
    Traceback (most recent call last):
    ...
    quark_jax.errors.InvalidArgumentError: dtype: expected one of float32, bfloat16, float16 (or None: the checkpoint's), got float64
    """
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in SUPPORTED_DTYPES:
        raise InvalidArgumentError(f"dtype: expected one of {', '.join(SUPPORTED_DTYPES)} (or None: the "
                                   f"checkpoint's), got {dt.name if dt is not None else repr(dtype)}")
    return dt


def _nbytes(v) -> int:
    v = v.get_value() if hasattr(v, "get_value") else v
    return int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize if hasattr(v, "shape") else 0


def _require_concrete(model, checkpoint_dir) -> None:
    for path, value in nnx.to_flat_state(nnx.state(model)):
        v = value.get_value() if hasattr(value, "get_value") else value
        if isinstance(v, jax.ShapeDtypeStruct):
            raise CheckpointError(f"checkpoint {checkpoint_dir}: {'.'.join(map(str, path))} was not loaded")
