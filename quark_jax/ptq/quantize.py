"""Post-training quantization in JAX: a float model (or checkpoint) -> Quark layers (or a Quark checkpoint that
amd-quark's ``export_safetensors`` would have written).

Steps: resolve each linear's Quark layer config (``layer_quant_config`` > ``layer_type_quant_config`` >
``global_quant_config``, ``exclude``; :class:`~quark_jax.QuarkConfig`); calibrate static input ranges and KV
output ranges through the float NNX model (:mod:`quark_jax.ptq.calibrate`); compute scales and quantized weights
with Quark's formulas (:mod:`quark_jax.ptq.observers`, numpy float32; MXFP4 / MXFP6 with
:func:`quark_jax.quant.quantize_mx`, jitted; INT4 / UINT4 packed as Quark exports them); merge the k/v output
scales of each attention to their max (Quark's exporter); then either substitute :class:`~quark_jax.nn.QuarkLinear` layers (``quantize``) or write
the checkpoint (``quantize_checkpoint``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from quark_jax import formats
from quark_jax.checkpoint import FUSED_MODULES, open_checkpoint, shard_paths
from quark_jax.config import QuarkConfig
from quark_jax.errors import QuarkConfigError
from quark_jax.nn.linear import QuarkLinear
from quark_jax.nn.load import module_path
from quark_jax.nn.substitute import quantize_model
from quark_jax.ptq import observers as obs
from quark_jax.ptq.calibrate import calibrate
from quark_jax.ptq.export import DEFAULT_MAX_SHARD_BYTES, ShardWriter, write_config
from quark_jax.ptq.presets import PRESETS, complete_config, preset_config
from quark_jax.quant import quantize_mx, quantize_nvfp4

__all__ = ["resolve_quant_config", "LayerTask", "plan_layers", "quantize_tensors", "quantize", "quantize_checkpoint"]

_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}


def resolve_quant_config(quant_config) -> dict[str, Any]:
    """The exported-form ``quantization_config`` dict for a preset name (:data:`PRESETS`), a Quark config dict
    (``QConfig.to_dict()`` or an exported one) or a :class:`QuarkConfig`.

    >>> resolve_quant_config("ptpc_fp8")["global_quant_config"]["input_tensors"]["qscheme"]
    'per_channel'
    """
    if isinstance(quant_config, str):
        if quant_config not in PRESETS:
            raise QuarkConfigError(f"quant_config: unknown preset {quant_config!r}; choose one of {list(PRESETS)}, "
                                   "or pass a quantization_config dict")
        return preset_config(quant_config)
    qc = complete_config(quant_config.raw if isinstance(quant_config, QuarkConfig) else quant_config)
    for key in ("algo_config", "softmax_quant_spec"):  # would change the weights / add quantizers: never ignore
        if qc.get(key):
            raise QuarkConfigError(f"quant_config.{key}: {key} is not implemented by quark_jax.ptq (min-max "
                                   f"calibration only); got {str(qc[key])[:120]}")
    return qc


class LayerTask:
    """One linear to quantize: its model path, checkpoint shard paths (q/k/v for a fused ``qkv_proj``), output
    widths per shard, raw tensor specs, and what calibration it needs."""

    def __init__(self, path: str, shards: tuple[str, ...], widths: tuple[int, ...], weight: dict | None,
                 inputs: dict | None, kv_output: dict | None, kv_shards: tuple[bool, ...]):
        self.path, self.shards, self.widths = path, shards, widths
        self.weight, self.inputs, self.kv_output, self.kv_shards = weight, inputs, kv_output, kv_shards

    @property
    def static_input(self) -> bool:
        if self.inputs is None:
            return False
        specs = self.inputs.get("specs") or [self.inputs]  # NVFP4: a dynamic element spec + a static scale spec
        return any(not sp.get("is_dynamic") for sp in specs)

    @property
    def observes_output(self) -> bool:
        return any(self.kv_shards)


def _kv_output_spec(cfg: QuarkConfig) -> dict:
    raw = cfg.raw
    for pattern in cfg.kv_cache.group:
        for table in ("layer_quant_config", "kv_cache_quant_config"):
            entry = (raw.get(table) or {}).get(pattern)
            if entry and entry.get("output_tensors"):
                return dict(entry["output_tensors"])
    return {}


def plan_layers(model, cfg: QuarkConfig, *, logical_widths: Mapping[str, Sequence[int]] | None = None
                ) -> list[LayerTask]:
    """The quantized linears of ``model`` (``nnx.Linear`` at module paths that ``cfg`` quantizes). An unsupported
    layer config raises :class:`~quark_jax.errors.QuarkConfigError` naming the layer."""
    tasks = []
    kv_spec = _kv_output_spec(cfg) if cfg.kv_cache is not None else None
    for path, module in nnx.iter_modules(model):
        if not path or not isinstance(module, nnx.Linear):
            continue
        p = module_path(path)
        plan = cfg.plan(p)
        if plan.status == "unsupported":
            raise QuarkConfigError(plan.reason)
        if plan.status != "quantized":
            continue
        lcfg = cfg.layer_config(p)
        shards = shard_paths(p)
        leaf = p.rpartition(".")[2]
        if len(shards) > 1:
            given = (logical_widths or {}).get(p, (logical_widths or {}).get(leaf))
            widths = _fused_widths(model, leaf, module.out_features) if given is None else tuple(map(int, given))
            if sum(widths) != module.out_features:
                raise ValueError(f"layer {p}: logical widths {list(widths)} do not add up to {module.out_features}")
        else:
            widths = (module.out_features,)
        kv = tuple(cfg.kv_cache is not None and cfg.kv_cache.is_kv_layer(s) for s in shards)
        raw = lambda s: None if s is None else dict(s.raw)  # noqa: E731
        tasks.append(LayerTask(p, shards, widths, raw(lcfg.weight), raw(lcfg.input_tensors),
                               kv_spec if any(kv) else None, kv))
    return tasks


def _fused_widths(model, leaf: str, out_features: int) -> tuple[int, ...]:
    c = getattr(model, "config", None)
    if c is not None and leaf == "qkv_proj":
        d = c.head_dim
        return (c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d)
    if c is not None and leaf == "gate_up_proj":
        return (c.intermediate_size, c.intermediate_size)
    raise ValueError(f"a fused {leaf} ({' + '.join(FUSED_MODULES[leaf])}) needs logical_widths={{{leaf!r}: (...)}}")


@partial(jax.jit, static_argnums=1)
def _mx(w, element):
    return quantize_mx(w, element)


_MX_ELEMENTS = {"fp4": "fp4", "fp6_e2m3": "fp6_e2m3", "fp6_e3m2": "fp6_e3m2"}


NVFP4_GLOBAL = np.float32(448.0 * 6.0)
"""NVFP4's per-tensor scales: ``amax / (448 * 6)`` (FP8 E4M3 max times E2M1 max), float32."""


def _is_nvfp4(spec) -> bool:
    """A Quark NVFP4 spec list: fp4 per_group 16 (float32 scales) + fp8_e4m3 per_tensor ``is_scale_quant``."""
    specs = (spec or {}).get("specs") or ()
    return (len(specs) == 2 and specs[0].get("dtype") == "fp4" and specs[0].get("group_size") == 16
            and specs[1].get("dtype") == "fp8_e4m3" and bool(specs[1].get("is_scale_quant")))


@jax.jit
def _nvfp4(w, global_scale):
    return quantize_nvfp4(w, global_scale)


def _nvfp4_scale_2(amax) -> np.ndarray:
    s = np.float32(np.float32(amax) / NVFP4_GLOBAL)
    return np.asarray(s if s > 0 else obs.EPS, np.float32)


def _weight_tensors(name: str, w: np.ndarray, spec: dict, model_dtype, *, pack_method: str = "reorder",
                    group_amax=None) -> dict[str, np.ndarray]:
    if _is_nvfp4(spec):  # weight_scale_2 from the merge group's amax (q/k/v, gate/up share it, as Quark)
        s2 = _nvfp4_scale_2(np.abs(w).max() if group_amax is None else group_amax)
        packed, scales = _nvfp4(w.astype(np.float32), np.float32(1.0) / s2)
        return {"weight": np.asarray(packed), "weight_scale": np.asarray(scales), "weight_scale_2": s2}
    if "specs" in spec:
        dts = [x.get("dtype") for x in spec["specs"]]
        raise QuarkConfigError(f"layer {name}: weight specs {dts} are not supported for quantization (two-level "
                               "scales: NVFP4 only)")
    dt, qs = spec.get("dtype"), spec.get("qscheme")
    if dt in _MX_ELEMENTS:
        if qs != "per_group" or spec.get("group_size") != 32 or (spec.get("scale_format") or "e8m0") != "e8m0":
            raise QuarkConfigError(f"layer {name}: weight {dt} with group_size {spec.get('group_size')} and scale "
                                   f"format {spec.get('scale_format')!r} is not supported for quantization (OCP MX: "
                                   "group 32, e8m0 scales)")
        packed, scales = _mx(w.astype(np.float32), _MX_ELEMENTS[dt])
        return {"weight": np.asarray(packed), "weight_scale": np.asarray(scales)}
    if dt in ("int4", "uint4"):
        return _int4_tensors(name, w, spec, model_dtype, pack_method)
    if qs not in ("per_tensor", "per_channel") or spec.get("is_dynamic") or spec.get("symmetric") is False:
        raise QuarkConfigError(f"layer {name}: weight spec {spec} is not supported for quantization")
    lo, hi = obs.weight_range(w, qs)
    if dt == "fp8_e4m3":
        s = obs.fp8_scale(lo, hi, model_dtype=model_dtype, spec=spec)
        return {"weight": obs.quantize_fp8_weight(w, s, model_dtype=model_dtype), "weight_scale": s}
    if dt == "int8":
        s = obs.int8_symmetric_scale(lo, hi, model_dtype=model_dtype)
        return {"weight": obs.quantize_int8_weight(w.astype(np.float32), s), "weight_scale": s,
                "weight_zero_point": np.zeros(np.shape(s), np.int8)}
    raise QuarkConfigError(f"layer {name}: weight dtype {dt!r} is not supported for quantization")


def _int4_tensors(name, w, spec, model_dtype, pack_method):
    """INT4 (symmetric) / UINT4 (asymmetric) weights in amd-quark 0.13's export layout (SPEC section 2): per group
    (ch_axis -1) ``weight`` int32 [K, N/8] (transposed, packed along N), ``weight_scale`` [K/g, N],
    ``weight_zero_point`` int32 [K/g, N/8]; per channel ``weight`` int32 [N, K/8], ``weight_scale`` [N],
    ``weight_zero_point`` int32 [N/8]."""
    dt, qs = spec.get("dtype"), spec.get("qscheme")
    signed = dt == "int4"
    if spec.get("is_dynamic") or bool(spec.get("symmetric")) != signed:
        raise QuarkConfigError(f"layer {name}: weight {dt} symmetric={spec.get('symmetric')} is not supported for "
                               "quantization (int4 symmetric or uint4 asymmetric, static)")
    w = np.asarray(w, np.float32)
    n, k = w.shape
    if qs == "per_group" and spec.get("ch_axis", -1) in (-1, 1):
        g = int(spec["group_size"])
        if g <= 0 or k % g:
            raise QuarkConfigError(f"layer {name}: weight {dt} per_group: expected a group_size dividing the input "
                                   f"width K = {k}, found {g}")
        lo, hi = obs.group_range(w, g)                                     # [N, K/g]
        s, z = obs.int4_qparams(lo, hi, signed=signed, model_dtype=model_dtype)
        q = obs.quantize_int4_weight(w.reshape(n, k // g, g), np.asarray(s, np.float32)[..., None],
                                     z[..., None], signed=signed).reshape(n, k)
        return {"weight": np.asarray(formats.pack_int4(q.T, pack_method)), "weight_scale": np.ascontiguousarray(s.T),
                "weight_zero_point": np.asarray(formats.pack_int4(z.T, pack_method))}
    if qs == "per_channel" and spec.get("ch_axis") == 0:
        s, z = obs.int4_qparams(w.min(1), w.max(1), signed=signed, model_dtype=model_dtype)
        q = obs.quantize_int4_weight(w, np.asarray(s, np.float32)[:, None], z[:, None], signed=signed)
        return {"weight": np.asarray(formats.pack_int4(q, pack_method)), "weight_scale": s,
                "weight_zero_point": np.asarray(formats.pack_int4(z[None], pack_method)).reshape(-1)}
    raise QuarkConfigError(f"layer {name}: weight {dt} qscheme {qs!r} ch_axis {spec.get('ch_axis')} is not supported "
                           "for quantization (per_group along the input, or per_channel ch_axis 0)")


def _input_tensors(name: str, spec: dict, rng: obs.MinMax, model_dtype) -> dict[str, np.ndarray]:
    if not rng.seen or not np.isfinite(rng.min) or not np.isfinite(rng.max):
        raise ValueError(f"layer {name}: no calibration data reached this layer's input")
    if _is_nvfp4(spec):  # dynamic NVFP4 blocks under a static global scale
        return {"input_scale_2": _nvfp4_scale_2(max(abs(float(rng.min)), abs(float(rng.max))))}
    dt = spec.get("dtype")
    if dt == "fp8_e4m3":
        return {"input_scale": obs.fp8_scale(rng.min, rng.max, model_dtype=model_dtype, spec=spec)}
    if dt == "int8":
        if spec.get("symmetric") is False:
            s, z = obs.int8_asymmetric_qparams(rng.min, rng.max, model_dtype=model_dtype)
            return {"input_scale": s, "input_zero_point": z}
        return {"input_scale": obs.int8_symmetric_scale(rng.min, rng.max, model_dtype=model_dtype),
                "input_zero_point": np.zeros((), np.int8)}
    raise QuarkConfigError(f"layer {name}: static input dtype {dt!r} is not supported for quantization")


class _Progress:
    def __init__(self, total: int, enabled: bool, label: str):
        self.total, self.enabled, self.label, self.n, self.t0 = total, enabled, label, 0, time.monotonic()

    def step(self, what: str) -> None:
        self.n += 1
        if self.enabled:
            width = 30
            done = int(width * self.n / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
                             f"{time.monotonic() - self.t0:5.1f}s {what[-40:]:<40}")
            if self.n == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def quantize_tensors(model, quant_config, calibration_batches: Iterable | None = None, *,
                     logical_widths: Mapping[str, Sequence[int]] | None = None, progress: bool = False,
                     numerics: str = "torch"
                     ) -> tuple[dict[str, dict[str, np.ndarray]], list[LayerTask], dict[str, Any]]:
    """Calibrate ``model`` (a float NNX model whose linears are ``nnx.Linear``) and compute the Quark tensors of
    every quantized layer. Returns ``(tensors, tasks, quantization_config)`` where ``tensors`` maps each
    checkpoint module path (shards of fused layers separately) to ``{"weight": ..., "weight_scale": ...,
    "input_scale": ..., "output_scale": ...}`` exactly as amd-quark exports them (k/v ``output_scale`` merged
    to the max of the pair). ``numerics``: the calibration forward pass (:data:`quark_jax.ptq.calibrate.NUMERICS`).
    """
    qc = resolve_quant_config(quant_config)
    tasks, layers = _quantized_layers(model, qc, calibration_batches, logical_widths, progress, numerics)
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for shard, ts in layers:
        tensors.setdefault(shard, {}).update(ts)
    return tensors, tasks, qc


def _quantized_layers(model, qc, calibration_batches, logical_widths, progress, numerics="torch"):
    """Plan and calibrate now; return (tasks, an iterator of (module path, tensors) per shard, one layer at a time,
    with the k/v ``output_scale`` tensors held back and yielded last, merged)."""
    cfg = QuarkConfig.from_dict(qc)
    tasks = plan_layers(model, cfg, logical_widths=logical_widths)
    model_dtype = np.dtype(_model_dtype(model))
    observe = {t.path: (t.static_input, t.observes_output) for t in tasks if t.static_input or t.observes_output}
    ranges = {}
    if observe:
        if calibration_batches is None:
            need = next(iter(observe))
            raise ValueError(f"calibration_batches: layer {need} needs calibration data (static input or KV-cache "
                             "scales); pass token ids")
        slices = {t.path: _slices(t.widths) for t in tasks if t.path in observe}
        ranges = calibrate(model, observe, calibration_batches, output_slices=slices, numerics=numerics)
    modules = {module_path(p): m for p, m in nnx.iter_modules(model) if p}
    pack_method = (qc.get("export") or {}).get("pack_method") or "reorder"

    group_amax = _nvfp4_group_amax(tasks, modules)

    def layers():
        kv: dict[str, dict[str, np.ndarray]] = {}
        bar = _Progress(len(tasks), progress, "quantizing")
        for t in tasks:
            w_all = np.asarray(jax.device_get(modules[t.path].kernel[...])).T
            rows = np.cumsum((0,) + t.widths)
            for i, shard in enumerate(t.shards):
                w = np.ascontiguousarray(w_all[rows[i]:rows[i + 1]])
                out = ({} if t.weight is None else
                       _weight_tensors(shard, w, t.weight, model_dtype, pack_method=pack_method,
                                       group_amax=group_amax.get(_merge_group(shard))))
                if t.static_input:
                    out.update(_input_tensors(shard, t.inputs, ranges[t.path]["input"], model_dtype))
                if t.kv_shards[i]:
                    rng = ranges[t.path]["output"][i]
                    kv[shard] = {"output_scale": obs.fp8_scale(rng.min, rng.max, model_dtype=model_dtype,
                                                               spec=t.kv_output)}
                yield shard, out
            bar.step(t.path)
        if not qc.get("kv_cache_post_rope"):
            # Quark's exporter merges k and v; with kv_cache_post_rope it writes them unmerged (fixture README 12)
            _merge_kv_scales(kv, float(qc["export"].get("min_kv_scale") or 0.0))
        yield from kv.items()

    return tasks, layers()


def _merge_group(shard: str) -> str:
    """The group whose NVFP4 weights share one ``weight_scale_2``: q/k/v, gate/up (vLLM's fused modules), else the
    layer itself."""
    parent, _, leaf = shard.rpartition(".")
    for fused, members in FUSED_MODULES.items():
        if leaf in members:
            return f"{parent}.{fused}"
    return shard


def _nvfp4_group_amax(tasks, modules) -> dict[str, np.float32]:
    """max |W| per merge group over the NVFP4-quantized shards (amd-quark 0.13 gives q/k/v and gate/up one global
    weight scale, the group's)."""
    out: dict[str, np.float32] = {}
    for t in tasks:
        if not _is_nvfp4(t.weight):
            continue
        w_all = np.abs(np.asarray(jax.device_get(modules[t.path].kernel[...])).T)
        rows = np.cumsum((0,) + t.widths)
        for i, shard in enumerate(t.shards):
            g = _merge_group(shard)
            out[g] = max(out.get(g, np.float32(0)), np.float32(w_all[rows[i]:rows[i + 1]].max()))
    return out


def _slices(widths):
    rows = np.cumsum((0,) + tuple(widths))
    return [(int(rows[i]), int(rows[i + 1])) for i in range(len(widths))]


def _merge_kv_scales(tensors, min_kv_scale: float) -> None:
    """Quark's exporter: the k and v output scales of one attention become their max (at least min_kv_scale)."""
    groups: dict[str, list[str]] = {}
    for shard, t in tensors.items():
        if "output_scale" in t:
            groups.setdefault(shard.rpartition(".")[0], []).append(shard)
    for members in groups.values():
        scales = [tensors[m]["output_scale"] for m in members]
        merged = scales[0]
        for s in scales[1:]:
            merged = np.maximum(merged, s)
        if min_kv_scale > 0:
            merged = np.maximum(merged, np.asarray(min_kv_scale, merged.dtype))
        for m in members:
            tensors[m]["output_scale"] = np.asarray(merged, scales[0].dtype)


def _model_dtype(model):
    dt = getattr(model, "dtype", None)
    if dt is not None:
        return np.dtype(dt)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear):
            return np.dtype(m.kernel[...].dtype)
    return np.dtype(np.float32)


def _batches(ids, batch_size: int):
    if isinstance(ids, (list, tuple)) and ids and all(np.ndim(b) == 2 for b in ids):
        return [np.asarray(b) for b in ids]  # already batches (they may differ in length)
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"calibration_ids: expected integer token ids [N, T], got {ids.dtype} {list(ids.shape)}")
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def quantize(model, quant_config, calibration_batches: Iterable | None = None, *,
             logical_widths: Mapping[str, Sequence[int]] | None = None, progress: bool = False,
             numerics: str = "torch"):
    """Calibrate and quantize a float Flax NNX model in place; returns it with
    :class:`~quark_jax.nn.QuarkLinear` layers (and an FP8 KV cache with the calibrated k/v scales when the config
    has a KV-cache group), each layer's params processed for its scheme (jitted once per layer), exactly as
    :func:`quark_jax.models.from_pretrained` would load the checkpoint :func:`quantize_checkpoint` writes.

    Args:
      model: a float NNX model whose linears are ``nnx.Linear`` at Hugging Face module paths (e.g.
        :class:`quark_jax.models.LlamaForCausalLM`); fused ``qkv_proj`` / ``gate_up_proj`` are quantized per shard.
      quant_config: a preset name (:data:`~quark_jax.ptq.PRESETS`), a Quark ``quantization_config`` dict or a
        :class:`~quark_jax.QuarkConfig`.
      calibration_batches: token-id batches [B, T] (each run as ``model(ids)``); needed for static input scales
        and KV-cache scales, unused otherwise.
      numerics: the calibration forward pass: ``"torch"`` (default; rounds as amd-quark's torch CPU run, so the
        scales equal Quark's; quark_jax Llama-family models) or ``"xla"`` (the model's own forward: any NNX
        model, faster, scales a few ulps from Quark's); :data:`quark_jax.ptq.calibrate.NUMERICS`.

    >>> import jax.numpy as jnp
    >>> from quark_jax.models import from_pretrained
    >>> from quark_jax.data import FLOAT_CHECKPOINT
    >>> m = quantize(from_pretrained(FLOAT_CHECKPOINT), "mxfp4")
    >>> type(m.model.layers[0].mlp.down_proj.scheme).__name__, m(jnp.array([[1, 2, 3]])).shape
    ('QuarkW4A4MXFP4', (1, 3, 256))
    """
    tensors, tasks, qc = quantize_tensors(model, quant_config, calibration_batches, logical_widths=logical_widths,
                                          progress=progress, numerics=numerics)
    cfg = QuarkConfig.from_dict(qc)
    widths = {t.path: t.widths for t in tasks if len(t.shards) > 1}
    quantize_model(model, cfg, logical_widths=widths)
    for path, module in nnx.iter_modules(model):
        p = module_path(path)
        if isinstance(module, QuarkLinear) and p in {t.path for t in tasks}:
            module.load_params(_raw_params(module, [tensors[s] for s in shard_paths(p)]))
        kv = [tensors.get(f"{p}.{c}_proj", {}).get("output_scale") for c in ("k", "v")]
        if getattr(module, "kv_fp8", False) and hasattr(module, "k_scale") and kv[0] is not None:
            module.k_scale.set_value(np.float32(kv[0]))
            module.v_scale.set_value(np.float32(kv[1] if kv[1] is not None else kv[0]))
    return model


def _raw_params(layer: QuarkLinear, parts: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    raw = {}
    for name, spec in layer.raw_param_specs().items():
        if name == "bias":
            if layer.use_bias:
                raw["bias"] = np.asarray(layer.bias[...])
            continue
        if any(name not in p for p in parts):
            if spec.required:
                raise AssertionError(f"{layer.name}: quantization produced no {name!r}")
            continue
        arrs = [np.asarray(p[name]).reshape(spec.shard_shapes[i]) for i, p in enumerate(parts)]
        if spec.combine == "concat":
            a = arrs[0] if len(arrs) == 1 else np.concatenate(arrs, axis=0)
        else:
            a = np.stack([x.reshape(()) for x in arrs])
        raw[name] = a.astype(spec.dtype)
    return raw


def quantize_checkpoint(float_dir: str | os.PathLike, out_dir: str | os.PathLike, quant_config,
                        calibration_ids=None, *, dtype=None, batch_size: int = 8,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool | None = None,
                        numerics: str = "torch") -> Path:
    """Quantize a float Hugging Face checkpoint (Llama family) into a Quark checkpoint in ``out_dir``: the
    tensors, names, dtypes and shapes amd-quark's ``export_safetensors`` writes, ``config.json`` with the
    ``quantization_config``, ``generation_config.json``; sharded with an index past ``max_shard_bytes``.

    Args:
      float_dir: ``config.json`` + safetensors of the float model.
      out_dir: created if needed; existing checkpoint files there are overwritten.
      quant_config: a preset name (fp8, ptpc_fp8, int8, mxfp4, mxfp4_fp8, mxfp4_weight_only), a Quark
        ``quantization_config`` dict (``QConfig.to_dict()`` or as exported) or a :class:`~quark_jax.QuarkConfig`.
      calibration_ids: token ids [N, T] (numpy) run through the float model in batches of ``batch_size`` rows,
        or a list of [B, T] batches (lengths may differ); required when the config has static inputs or a
        KV-cache group.
      dtype: the model dtype ("float32", "bfloat16", "float16"; default the config's): float tensors are cast to
        it (round to nearest even) before quantization, and scales follow it as in Quark.
      progress: a progress bar over layers on stderr (default: when stderr is a terminal).
      numerics: the calibration forward pass, as :func:`quantize` (default ``"torch"``: Quark's scales bit for
        bit on the fixtures but cos/sin, SPEC section 8).

    Memory: the float model is held whole (calibration needs it); the quantized tensors are written shard by
    shard as the layers are quantized (:class:`~quark_jax.ptq.export.ShardWriter`). Returns ``Path(out_dir)``.
    """
    float_dir, out_dir = Path(float_dir), Path(out_dir)
    from quark_jax.models import from_pretrained

    reader = open_checkpoint(float_dir)
    model_config = dict(reader.config)
    if model_config.get("quantization_config") is not None:
        raise ValueError(f"float_dir {float_dir}: config.json already has a quantization_config; quantize a float "
                         "checkpoint")
    model = from_pretrained(float_dir, dtype=dtype, fuse_projections=False)  # Quark's layout: one observer per projection
    model_dtype = np.dtype(model.dtype)
    batches = None if calibration_ids is None else _batches(calibration_ids, batch_size)
    show = sys.stderr.isatty() if progress is None else progress
    qc = resolve_quant_config(quant_config)
    _, layers = _quantized_layers(model, qc, batches, None, show, numerics)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob("model.safetensors.index.json")):
        old.unlink()
    writer = ShardWriter(out_dir, max_shard_bytes=max_shard_bytes)
    quantized = set()
    for module, ts in layers:  # written shard by shard as the layers are quantized
        quantized.add(f"{module}.weight")
        for suffix, a in ts.items():
            writer.add(f"{module}.{suffix}", np.asarray(a))
    for name in reader.names():
        if name in quantized:
            continue
        a = reader.get(name)
        writer.add(name, a.astype(model_dtype) if a.dtype.kind == "f" or a.dtype == ml_dtypes.bfloat16 else a)
    writer.close()
    write_config(out_dir, model_config, qc, dtype_name=_dtype_name(model_dtype))
    gen = float_dir / "generation_config.json"
    if gen.is_file():
        (out_dir / "generation_config.json").write_text(gen.read_text())
    else:
        g = {"_from_model_config": True, **{k: model_config[k] for k in ("bos_token_id", "eos_token_id",
                                                                          "pad_token_id") if model_config.get(k) is not None}}
        (out_dir / "generation_config.json").write_text(json.dumps(g, indent=2, sort_keys=True) + "\n")
    return out_dir


def _dtype_name(dt) -> str:
    for name, d in _NP_DTYPES.items():
        if d == np.dtype(dt):
            return name
    raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dt}")
