"""Quark ``quantization_config`` objects for the common schemes, as amd-quark 0.13 exports them.

``preset_config(name)`` equals the ``quantization_config`` that ``export_safetensors`` writes for
``LLMTemplate.get("llama").get_config(scheme=name)`` (checked against the fixtures for every name but ``int8``,
whose template has no fixture: per-tensor symmetric INT8 weights and static inputs); ``kv_cache="fp8"`` adds the
FP8 KV-cache entries (``kv_cache_scheme="fp8"``). :func:`complete_config` turns a ``QConfig.to_dict()`` (no
``export`` block) into the exported form.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from quark_jax.errors import QuarkConfigError

__all__ = ["PRESETS", "preset_config", "complete_config", "tensor_spec"]

PRESETS = ("fp8", "ptpc_fp8", "int8", "mxfp4", "mxfp4_fp8", "mxfp4_weight_only")
"""Preset names (Quark's LLM template scheme names)."""

_KV_GROUP = ("*k_proj", "*v_proj")


def tensor_spec(dtype: str, qscheme: str, observer_cls: str, *, is_dynamic: bool, ch_axis: int | None = None,
                group_size: int | None = None, scale_format: str | None = None,
                scale_calculation_mode: str | None = None, scale_type: str | None = "float",
                symmetric: bool | None = True) -> dict[str, Any]:
    """One tensor spec with every key Quark 0.13 writes (defaults for the keys quark_jax does not vary).

    >>> tensor_spec("fp8_e4m3", "per_tensor", "PerTensorMinMaxObserver", is_dynamic=False)["max_input_numel"]
    4194304
    """
    return {"block_size": None, "ch_axis": ch_axis, "dtype": dtype, "enable_buffer_reuse": False,
            "group_size": group_size, "is_dynamic": is_dynamic, "is_scale_quant": False, "max_input_numel": 4194304,
            "mx_element_dtype": None, "observer_cls": observer_cls, "qscheme": qscheme, "round_method": "half_even",
            "scale_calculation_mode": scale_calculation_mode, "scale_format": scale_format, "scale_type": scale_type,
            "symmetric": symmetric, "zero_point_type": "int32"}


def _per_tensor(dtype, *, is_dynamic=False, scale_type="float"):
    return tensor_spec(dtype, "per_tensor", "PerTensorMinMaxObserver", is_dynamic=is_dynamic, scale_type=scale_type)


def _mxfp4(*, is_dynamic):
    return tensor_spec("fp4", "per_group", "PerBlockMXObserver", is_dynamic=is_dynamic, ch_axis=-1, group_size=32,
                       scale_format="e8m0", scale_calculation_mode="even", symmetric=None)


def _layer(weight, input_tensors, output_tensors=None) -> dict[str, Any]:
    return {"bias": None, "input_tensors": input_tensors, "output_tensors": output_tensors, "target_device": None,
            "weight": weight}


def _global(name: str) -> dict[str, Any]:
    if name == "fp8":
        return _layer(_per_tensor("fp8_e4m3"), _per_tensor("fp8_e4m3"))
    if name == "ptpc_fp8":
        return _layer(tensor_spec("fp8_e4m3", "per_channel", "PerChannelMinMaxObserver", is_dynamic=False, ch_axis=0),
                      tensor_spec("fp8_e4m3", "per_channel", "PerChannelMinMaxObserver", is_dynamic=True, ch_axis=1))
    if name == "int8":
        return _layer(_per_tensor("int8"), _per_tensor("int8"))
    if name == "mxfp4":
        return _layer(_mxfp4(is_dynamic=False), _mxfp4(is_dynamic=True))
    if name == "mxfp4_fp8":
        return _layer(_mxfp4(is_dynamic=False), _per_tensor("fp8_e4m3", scale_type=None))
    if name == "mxfp4_weight_only":
        return _layer(_mxfp4(is_dynamic=False), None)
    raise QuarkConfigError(f"preset: unknown name {name!r}; choose one of {list(PRESETS)}")


def preset_config(name: str, *, kv_cache: str | None = None, exclude=("lm_head",)) -> dict[str, Any]:
    """The exported ``quantization_config`` of Quark's LLM template scheme ``name`` (see :data:`PRESETS`).

    ``kv_cache="fp8"`` adds the static per-tensor FP8 KV cache on ``*k_proj`` / ``*v_proj`` (their
    ``output_tensors``), as ``get_config(scheme=name, kv_cache_scheme="fp8")`` does.

    >>> cfg = preset_config("fp8", kv_cache="fp8")
    >>> cfg["global_quant_config"]["weight"]["dtype"], cfg["export"]["kv_cache_group"]
    ('fp8_e4m3', ['*k_proj', '*v_proj'])
    """
    glob = _global(name)
    layers: dict[str, Any] = {}
    if kv_cache is not None:
        if kv_cache != "fp8":
            raise QuarkConfigError(f"kv_cache: only 'fp8' is supported, got {kv_cache!r}")
        for pattern in _KV_GROUP:
            layers[pattern] = dict(copy.deepcopy(glob), output_tensors=_per_tensor("fp8_e4m3", scale_type=None))
    cfg = {"algo_config": None, "exclude": list(exclude), "global_quant_config": glob, "kv_cache_post_rope": False,
           "kv_cache_quant_config": copy.deepcopy(layers), "layer_quant_config": layers,
           "layer_type_quant_config": {}, "quant_method": "quark", "quant_mode": "eager_mode",
           "softmax_quant_spec": None, "version": "0.13"}
    return complete_config(cfg)


def complete_config(quant_config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Quark config dict with the ``export`` block amd-quark's exporter adds when it is missing:
    ``kv_cache_group`` = the ``kv_cache_quant_config`` keys, ``min_kv_scale`` 0, ``pack_method`` "reorder",
    ``weight_format`` "real_quantized", ``weight_merge_groups`` null. An existing ``export`` is kept.

    >>> complete_config({"quant_method": "quark", "kv_cache_quant_config": {"*k_proj": {}}})["export"]["kv_cache_group"]
    ['*k_proj']
    """
    if not isinstance(quant_config, Mapping):
        raise QuarkConfigError(f"quant_config: expected a quantization_config dict or a preset name, got "
                               f"{type(quant_config).__name__}")
    cfg = copy.deepcopy(dict(quant_config))
    if cfg.get("quant_method", "quark") != "quark":
        raise QuarkConfigError(f"quant_config.quant_method: expected 'quark', got {cfg.get('quant_method')!r}")
    cfg["quant_method"] = "quark"
    if cfg.get("export") is None:
        cfg["export"] = {"kv_cache_group": list(cfg.get("kv_cache_quant_config") or {}), "min_kv_scale": 0.0,
                         "pack_method": "reorder", "weight_format": "real_quantized", "weight_merge_groups": None}
    weight_format = cfg["export"].get("weight_format", "real_quantized")
    if weight_format != "real_quantized":
        raise QuarkConfigError(f"quant_config.export.weight_format: only 'real_quantized' is written, got "
                               f"{weight_format!r}")
    return {k: cfg[k] for k in sorted(cfg)}
