"""``QuarkConfig``: parse a Quark ``quantization_config`` and say, per layer, which scheme runs it (SPEC section 4).

Resolution of a module path such as ``model.layers.0.self_attn.q_proj``:

1. ``exclude`` (exact names, ``re:`` regexes matched at the start, fnmatch wildcards) -> unquantized;
2. the first ``layer_quant_config`` key that fnmatch-es the path (dict order; ``*`` crosses dots), else
   ``layer_type_quant_config["Linear"]``, else ``global_quant_config``;
3. embeddings and ``lm_head`` are never quantized unless a ``layer_quant_config`` key matches them;
4. dispatch: FP8 W8A8, then static INT8 W8A8, then MXFP4 (W4A4, then ours: FP8-static input, weight-only);
   anything else raises :class:`~quark_jax.errors.UnsupportedSchemeError` quoting the weight and input specs.

Fused paths (``qkv_proj`` = q, k, v; ``gate_up_proj`` = gate, up) resolve per shard and the shards must agree.
The k/v projections named by ``export.kv_cache_group`` carry the KV-cache spec in their ``output_tensors``
(exposed as ``QuarkConfig.kv_cache``); everywhere else a non-null ``output_tensors`` or ``bias`` spec is
unsupported. Fixed vLLM quirks (ours): missing ``layer_quant_config`` / ``layer_type_quant_config`` / ``exclude``
are treated as empty, fnmatch wildcards work in ``exclude``, ``layer_type_quant_config`` matches by type name, a
fused name is replaced only in the last path component.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.errors import CheckpointError, QuarkConfigError, UnsupportedSchemeError
from quark_jax.kernels import _dispatch
from quark_jax.schemes import (QuarkScheme, QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4, QuarkW8A8Fp8,
                               QuarkW8A8Int8)

__all__ = [
    "FUSED_MODULES",
    "shard_paths",
    "TensorQuantSpec",
    "LayerQuantConfig",
    "KVCacheConfig",
    "SchemeOptions",
    "LayerPlan",
    "QuarkConfig",
    "get_scheme",
]

FUSED_MODULES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
"""vLLM's packed_modules_mapping: a fused module name -> its shards, in row order."""

NEVER_QUANTIZED = ("embed_tokens", "lm_head")
LINEAR_TYPE_NAMES = ("Linear", "nn.Linear", "torch.nn.Linear", "torch.nn.modules.linear.Linear")


def shard_paths(layer_path: str, fused_modules: Mapping[str, Sequence[str]] = FUSED_MODULES) -> tuple[str, ...]:
    """The checkpoint module paths behind ``layer_path``: its shards for a fused name, else itself.

    >>> shard_paths("model.layers.0.self_attn.qkv_proj")
    ('model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj')
    >>> shard_paths("model.layers.0.mlp.down_proj")
    ('model.layers.0.mlp.down_proj',)
    """
    parent, _, leaf = layer_path.rpartition(".")
    if leaf in fused_modules:
        return tuple(f"{parent}.{s}" if parent else s for s in fused_modules[leaf])
    return (layer_path,)


def _is_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True)
class TensorQuantSpec:
    """The fields of a Quark tensor spec (``weight`` / ``input_tensors`` / ``output_tensors``) that matter here.

    Other fields (observer_cls, round_method, ...) are accepted and ignored; ``raw`` keeps the dict as given.

    >>> TensorQuantSpec.from_dict({"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False}).brief()
    "{dtype: 'fp8_e4m3', qscheme: 'per_tensor', is_dynamic: False}"
    """

    dtype: str
    qscheme: str | None = None
    is_dynamic: bool | None = None
    symmetric: bool | None = None
    group_size: int | None = None
    scale_format: str | None = None
    scale_calculation_mode: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    KEYS = ("dtype", "qscheme", "is_dynamic", "symmetric", "group_size", "scale_format", "scale_calculation_mode")
    FIELD_TYPES = {"qscheme": (str,), "is_dynamic": (bool,), "symmetric": (bool,), "group_size": (int,),
                   "scale_format": (str,), "scale_calculation_mode": (str,)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec") -> "TensorQuantSpec | None":
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise QuarkConfigError(f"{where}: expected a tensor spec (a JSON object) or null, got {d!r}")
        if not isinstance(d.get("dtype"), str):
            raise QuarkConfigError(f"{where}: a tensor spec needs a string 'dtype', got {d.get('dtype')!r}")
        values = {k: d.get(k) for k in cls.KEYS}
        for k, types in cls.FIELD_TYPES.items():
            v = values[k]
            if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
                raise QuarkConfigError(f"{where}.{k}: expected {' or '.join(t.__name__ for t in types)} or null, "
                                       f"got {v!r}")
        return cls(**values, raw=dict(d))

    def brief(self) -> str:
        """The relevant fields as a short dict-like string (unset fields left out)."""
        items = [f"{k}: {getattr(self, k)!r}" for k in self.KEYS if getattr(self, k) is not None]
        return "{" + ", ".join(items) + "}"


def _brief(spec: TensorQuantSpec | None) -> str:
    return "None" if spec is None else spec.brief()


@dataclass(frozen=True)
class LayerQuantConfig:
    """One layer config: the weight, input, output and bias specs (any may be None) and where it came from."""

    weight: TensorQuantSpec | None
    input_tensors: TensorQuantSpec | None
    output_tensors: TensorQuantSpec | None = None
    bias: TensorQuantSpec | None = None
    source: str = field(default="", compare=False)

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "LayerQuantConfig":
        if not isinstance(d, Mapping):
            raise QuarkConfigError(f"{source}: expected a layer config (a JSON object), got {d!r}")
        return cls(*(TensorQuantSpec.from_dict(d.get(k), f"{source}.{k}")
                     for k in ("weight", "input_tensors", "output_tensors", "bias")), source=source)

    def brief(self) -> str:
        return f"weight={_brief(self.weight)}, input_tensors={_brief(self.input_tensors)}"


@dataclass(frozen=True)
class KVCacheConfig:
    """FP8 KV-cache quantization (SPEC section 6), from the ``output_tensors`` of the ``export.kv_cache_group``
    layers. The cache stores ``fp8(clamp(k / k_scale))`` and reads ``f32(k_fp8) * k_scale`` (same for v).

    >>> kv = KVCacheConfig(group=("*k_proj", "*v_proj"))
    >>> kv.dtype, kv.fp8_max, kv.scale_tensor_names("model.layers.0.self_attn")["k_scale"][0]
    (dtype(float8_e4m3fn), 448.0, 'model.layers.0.self_attn.k_proj.output_scale')
    """

    group: tuple[str, ...]
    dtype_name: str = "float8_e4m3fn"
    qscheme: str = "per_tensor"

    @property
    def dtype(self):
        return jnp.dtype(self.dtype_name)

    @property
    def fp8_max(self) -> float:
        return formats.fp8_max(self.dtype)

    def is_kv_layer(self, layer_path: str) -> bool:
        """Whether a (unfused) module path is a member of the KV-cache group (e.g. ``...self_attn.k_proj``)."""
        return any(fnmatch.fnmatchcase(layer_path, p) for p in self.group)

    @staticmethod
    def scale_tensor_names(attn_path: str) -> dict[str, tuple[str, ...]]:
        """Checkpoint names that may hold the k / v scales of the attention module ``attn_path``, in order of
        preference: Quark's ``k_proj.output_scale`` (the exporter merges k and v to their max), then
        ``k_scale`` / ``attn.k_scale`` (vLLM's names)."""
        return {f"{c}_scale": (f"{attn_path}.{c}_proj.output_scale", f"{attn_path}.{c}_scale",
                               f"{attn_path}.attn.{c}_scale") for c in ("k", "v")}


@dataclass(frozen=True)
class SchemeOptions:
    """Options passed to every scheme a config creates.

    * ``impl``: GEMM implementation ("auto", "pallas", "xla").
    * ``azp_mode``: asymmetric INT8 input, "vllm" (reconstructed (s', z'), vLLM-exact) or "checkpoint"
      (the checkpoint's own (s, z), Quark-exact).
    * ``fp8_dtype``: "float8_e4m3fn", or "float8_e4m3fnuz" (ROCm MI300 numerics).
    * ``dequantize_mxfp4_weight``: keep MXFP4 weights dequantized (bf16) instead of packed.
    """

    impl: str = "auto"
    azp_mode: str = "vllm"
    fp8_dtype: str = "float8_e4m3fn"
    dequantize_mxfp4_weight: bool = False

    def __post_init__(self):
        _dispatch.check_impl(self.impl)
        if self.azp_mode not in ("vllm", "checkpoint"):
            raise ValueError(f"azp_mode: expected 'vllm' or 'checkpoint', got {self.azp_mode!r}")
        if self.fp8_dtype not in ("float8_e4m3fn", "float8_e4m3fnuz"):
            raise ValueError(f"fp8_dtype: expected 'float8_e4m3fn' or 'float8_e4m3fnuz', got {self.fp8_dtype!r}")


# ----------------------------------------------------------------------------------------------------- dispatch

def _is_fp8_w8a8(w: TensorQuantSpec | None, i: TensorQuantSpec | None) -> bool:
    if w is None or i is None or w.dtype != "fp8_e4m3" or i.dtype != "fp8_e4m3":
        return False
    if not (w.symmetric is True and w.is_dynamic is False and w.qscheme in ("per_tensor", "per_channel")):
        return False
    return bool(i.is_dynamic) or i.qscheme == "per_tensor"


def _is_static_tensor_w8a8(w: TensorQuantSpec | None, i: TensorQuantSpec | None) -> bool:
    if w is None or i is None or w.dtype != "int8" or i.dtype != "int8":
        return False
    is_tensor = w.qscheme in ("per_tensor", "per_channel") and i.qscheme == "per_tensor"
    is_static = not w.is_dynamic and not i.is_dynamic
    return is_tensor and is_static and w.symmetric is True


def _is_mx_fp4_weight(w: TensorQuantSpec | None) -> bool:
    return (w is not None and w.dtype == "fp4" and w.qscheme == "per_group" and w.group_size == 32
            and w.scale_format == "e8m0")


def _is_mx_fp4(w: TensorQuantSpec | None, i: TensorQuantSpec | None) -> bool:
    if not _is_mx_fp4_weight(w) or i is None:
        return False
    return (i.dtype == "fp4" and i.qscheme == "per_group" and i.group_size == 32 and i.is_dynamic is not False
            and i.scale_format == "e8m0")


def _is_mx_fp4_fp8_static(w: TensorQuantSpec | None, i: TensorQuantSpec | None) -> bool:
    return (_is_mx_fp4_weight(w) and i is not None and i.dtype == "fp8_e4m3" and i.qscheme == "per_tensor"
            and not i.is_dynamic)


def get_scheme(cfg: LayerQuantConfig, layer: str, options: SchemeOptions = SchemeOptions()) -> QuarkScheme:
    """The scheme for a layer config (vLLM's ``_get_scheme_from_config`` plus our two MXFP4 variants).

    >>> w = TensorQuantSpec("fp8_e4m3", "per_tensor", False, True)
    >>> get_scheme(LayerQuantConfig(w, w), "model.layers.0.mlp.down_proj").summary()
    'QuarkW8A8Fp8(weight fp8 per_tensor, input fp8 static)'
    """
    if cfg.output_tensors is not None or cfg.bias is not None:
        raise UnsupportedSchemeError(
            f"layer {layer}: quantized outputs or biases are not supported (config {cfg.source}: "
            f"output_tensors={_brief(cfg.output_tensors)}, bias={_brief(cfg.bias)}); only the k/v projections "
            f"named by export.kv_cache_group may have output_tensors (the FP8 KV cache)")
    w, i = cfg.weight, cfg.input_tensors
    if _is_fp8_w8a8(w, i):
        if not i.is_dynamic:
            activation = "static"
        elif i.qscheme == "per_channel":
            activation = "dynamic_per_token"
        else:
            activation = "dynamic_per_tensor"
        return QuarkW8A8Fp8(w.qscheme, activation, options.fp8_dtype, impl=options.impl)
    if _is_static_tensor_w8a8(w, i):
        return QuarkW8A8Int8(w.qscheme, input_symmetric=bool(i.symmetric), azp_mode=options.azp_mode,
                             impl=options.impl)
    mx = dict(dequantize_at_load=options.dequantize_mxfp4_weight, impl=options.impl)
    if _is_mx_fp4(w, i):
        return QuarkW4A4MXFP4(**mx)
    if _is_mx_fp4_fp8_static(w, i):
        return QuarkW4A8MXFP4Fp8(**mx)
    if _is_mx_fp4_weight(w) and i is None:
        return QuarkW4A16MXFP4(**mx)
    raise UnsupportedSchemeError(
        f"layer {layer}: no quark_jax scheme for this layer config ({cfg.source}). Weight config: {_brief(w)}, "
        f"input config: {_brief(i)}. Supported: FP8 W8A8 (fp8_e4m3 symmetric static per_tensor/per_channel "
        f"weights; static per_tensor or dynamic input), INT8 W8A8 (int8 symmetric per_tensor/per_channel weights, "
        f"static per_tensor input), MXFP4 weights (fp4 per_group 32 e8m0) with dynamic MXFP4, static per_tensor "
        f"FP8 or no input quantization")


# ----------------------------------------------------------------------------------------------------- the config

@dataclass(frozen=True)
class LayerPlan:
    """What happens to one layer: ``status`` is "quantized", "excluded", "unquantized" or "unsupported"."""

    path: str
    status: str
    scheme: QuarkScheme | None = None
    source: str = ""
    reason: str = ""
    kv_cache: bool = False

    def scheme_name(self) -> str:
        if self.scheme is not None:
            return self.scheme.summary()
        return {"excluded": "excluded", "unquantized": "unquantized", "unsupported": "UNSUPPORTED"}[self.status]


class QuarkConfig:
    """A parsed Quark ``quantization_config`` (SPEC section 4).

    >>> cfg = QuarkConfig.from_dict({"quant_method": "quark", "export": {}, "exclude": ["lm_head"],
    ...     "global_quant_config": {"weight": {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False,
    ...     "symmetric": True}, "input_tensors": {"dtype": "fp8_e4m3", "qscheme": "per_tensor",
    ...     "is_dynamic": False}}})
    >>> type(cfg.scheme_for("model.layers.0.self_attn.qkv_proj")).__name__, cfg.scheme_for("lm_head"), cfg.kv_cache
    ('QuarkW8A8Fp8', None, None)
    """

    def __init__(self, quant_config: Mapping[str, Any], *, options: SchemeOptions = SchemeOptions(),
                 checkpoint_dir: str | Path | None = None):
        if not isinstance(quant_config, Mapping):
            raise QuarkConfigError(f"quantization_config: expected a JSON object, got {type(quant_config).__name__}")
        method = quant_config.get("quant_method")
        if method != "quark":
            raise QuarkConfigError(f"quantization_config.quant_method: expected 'quark', got {method!r}")
        if not isinstance(quant_config.get("export"), Mapping):
            raise QuarkConfigError("quantization_config.export: missing (or not an object); Quark exports always "
                                   f"write it (export.kv_cache_group, ...), got {quant_config.get('export')!r}")
        self.raw = dict(quant_config)
        self.options = options
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.export = dict(quant_config["export"])
        g = quant_config.get("global_quant_config")
        self.global_quant_config = None if g is None else LayerQuantConfig.from_dict(g, "global_quant_config")
        self.layer_quant_config = self._layer_table(quant_config.get("layer_quant_config"), "layer_quant_config")
        self.layer_type_quant_config = self._layer_table(quant_config.get("layer_type_quant_config"),
                                                         "layer_type_quant_config")
        exclude = quant_config.get("exclude") or []
        if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
            raise QuarkConfigError(f"quantization_config.exclude: expected a list of names/patterns, got {exclude!r}")
        self.exclude = tuple(exclude)
        self.kv_cache = self._parse_kv_cache(quant_config)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, quantization_config: Mapping[str, Any], **options) -> "QuarkConfig":
        """From the ``quantization_config`` object of a ``config.json``; ``options`` are :class:`SchemeOptions`."""
        return cls(quantization_config, options=SchemeOptions(**options))

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, **options) -> "QuarkConfig":
        """From ``checkpoint_dir/config.json``; ``options`` are :class:`SchemeOptions` (impl, azp_mode, ...)."""
        from quark_jax.io import read_config_json, resolve_checkpoint

        checkpoint_dir = resolve_checkpoint(checkpoint_dir)
        path = checkpoint_dir / "config.json"
        try:
            config = read_config_json(checkpoint_dir)
        except CheckpointError as e:  # the config's error type, as before
            raise QuarkConfigError(str(e)) from None
        qc = config.get("quantization_config")
        if qc is None:
            raise QuarkConfigError(f"{path}: no quantization_config (not a Quark-quantized checkpoint)")
        return cls(qc, options=SchemeOptions(**options), checkpoint_dir=checkpoint_dir)

    def with_options(self, **options) -> "QuarkConfig":
        """A copy with some scheme options changed, e.g. ``cfg.with_options(impl="xla", azp_mode="checkpoint")``."""
        return QuarkConfig(self.raw, options=dataclasses.replace(self.options, **options),
                           checkpoint_dir=self.checkpoint_dir)

    @staticmethod
    def _layer_table(table: Any, name: str) -> dict[str, LayerQuantConfig]:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            raise QuarkConfigError(f"quantization_config.{name}: expected an object of layer configs, got {table!r}")
        return {k: LayerQuantConfig.from_dict(v, f"{name}[{k!r}]") for k, v in table.items()}

    def _parse_kv_cache(self, qc: Mapping[str, Any]) -> KVCacheConfig | None:
        group = self.export.get("kv_cache_group") or []
        if not group:
            return None
        if not isinstance(group, (list, tuple)) or not all(isinstance(g, str) for g in group):
            raise QuarkConfigError(f"quantization_config.export.kv_cache_group: expected a list of layer name "
                                   f"patterns, got {group!r}")
        group = tuple(group)
        kv_table = self._layer_table(qc.get("kv_cache_quant_config"), "kv_cache_quant_config")
        specs = []
        for pattern in group:
            cfg = self.layer_quant_config.get(pattern) or kv_table.get(pattern)
            if cfg is None:
                raise QuarkConfigError(f"export.kv_cache_group names {pattern!r} but neither layer_quant_config nor "
                                       f"kv_cache_quant_config has an entry for it (keys: "
                                       f"{sorted(self.layer_quant_config)})")
            if cfg.output_tensors is None:
                raise QuarkConfigError(f"export.kv_cache_group member {pattern!r}: its config ({cfg.source}) has no "
                                       f"output_tensors spec, so the KV-cache quantization is undefined")
            specs.append((pattern, cfg.output_tensors))
        first = specs[0][1]
        for pattern, spec in specs[1:]:
            if spec != first:
                raise QuarkConfigError(f"export.kv_cache_group: the members must share one KV-cache spec, but "
                                       f"{specs[0][0]!r} has {first.brief()} and {pattern!r} has {spec.brief()}")
        if first.dtype != "fp8_e4m3" or first.qscheme != "per_tensor" or first.is_dynamic:
            raise UnsupportedSchemeError(f"export.kv_cache_group: only a static per_tensor fp8_e4m3 KV cache is "
                                         f"supported, got {first.brief()}")
        return KVCacheConfig(group=group)

    # ------------------------------------------------------------------ resolution
    def shard_paths(self, layer_path: str) -> tuple[str, ...]:
        """See :func:`shard_paths`."""
        return shard_paths(layer_path)

    def exclusion_match(self, layer_path: str) -> str | None:
        """The ``exclude`` entry that matches an unfused module path, or None."""
        for target in self.exclude:
            if target.startswith("re:"):
                if re.match(target[3:], layer_path):
                    return target
            elif _is_wildcard(target):
                if fnmatch.fnmatchcase(layer_path, target):
                    return target
            elif target == layer_path:
                return target
        return None

    def is_excluded(self, layer_path: str) -> bool:
        """Whether a (possibly fused) layer is excluded; fused shards must agree."""
        return self._excluded(layer_path)[0]

    def _excluded(self, layer_path: str) -> tuple[bool, str]:
        shards = shard_paths(layer_path)
        matches = [self.exclusion_match(s) for s in shards]
        hit = [s for s, m in zip(shards, matches) if m is not None]
        if hit and len(hit) != len(shards):
            miss = [s for s in shards if s not in hit]
            raise QuarkConfigError(f"layer {layer_path}: its fused shards disagree on exclusion: {hit} are excluded "
                                   f"(by {[m for m in matches if m]}) but {miss} are not; a fused layer needs one "
                                   f"scheme")
        return bool(hit), (matches[0] or "") if hit else ""

    def _match_one(self, path: str, layer_type: str) -> LayerQuantConfig | None:
        for pattern, cfg in self.layer_quant_config.items():
            if fnmatch.fnmatchcase(path, pattern):
                break
        else:
            cfg = None
            types = (layer_type,) if layer_type not in LINEAR_TYPE_NAMES else LINEAR_TYPE_NAMES
            for t in types:
                if t in self.layer_type_quant_config:
                    cfg = self.layer_type_quant_config[t]
                    break
            else:
                cfg = self.global_quant_config
        if cfg is None:
            return None
        drop_output = self.kv_cache is not None and (
            self.kv_cache.is_kv_layer(path) or path.rpartition(".")[2] == "q_proj")
        if drop_output and cfg.output_tensors is not None:
            # the output spec of k/v is the KV cache's (SPEC 6); vLLM drops q_proj's too, for qkv consistency
            cfg = dataclasses.replace(cfg, output_tensors=None, source=cfg.source)
        return cfg

    def layer_config(self, layer_path: str, layer_type: str = "Linear") -> LayerQuantConfig | None:
        """The resolved layer config (exclusion not applied); fused shards must resolve to the same specs."""
        shards = shard_paths(layer_path)
        cfgs = [self._match_one(s, layer_type) for s in shards]
        for s, c in zip(shards[1:], cfgs[1:]):
            if c != cfgs[0]:
                def show(sh, cf):
                    return f"{sh} -> {'None' if cf is None else cf.source + ' ' + cf.brief()}"
                raise QuarkConfigError(f"layer {layer_path}: its fused shards resolve to different quantization "
                                       f"configs ({show(shards[0], cfgs[0])}; {show(s, c)}); a fused layer needs "
                                       f"one scheme")
        return cfgs[0]

    def _resolve(self, layer_path: str, layer_type: str) -> LayerPlan:
        kv = self.kv_cache is not None and any(self.kv_cache.is_kv_layer(s) for s in shard_paths(layer_path))
        excluded, by = self._excluded(layer_path)
        if excluded:
            return LayerPlan(layer_path, "excluded", source=f"exclude {by!r}", kv_cache=kv)
        leaf = layer_path.rpartition(".")[2]
        if leaf in NEVER_QUANTIZED and not any(fnmatch.fnmatchcase(s, p) for s in shard_paths(layer_path)
                                               for p in self.layer_quant_config):
            return LayerPlan(layer_path, "unquantized", source="embeddings and lm_head stay unquantized")
        cfg = self.layer_config(layer_path, layer_type)
        if cfg is None:
            return LayerPlan(layer_path, "unquantized", source="no global_quant_config", kv_cache=kv)
        if cfg.weight is None and cfg.input_tensors is None and cfg.output_tensors is None and cfg.bias is None:
            return LayerPlan(layer_path, "unquantized", source=cfg.source, kv_cache=kv)
        return LayerPlan(layer_path, "quantized", get_scheme(cfg, layer_path, self.options), source=cfg.source,
                         kv_cache=kv)

    def plan(self, layer_path: str, layer_type: str = "Linear") -> LayerPlan:
        """What happens to one layer; an unsupported layer gets status "unsupported" and the error as reason."""
        try:
            return self._resolve(layer_path, layer_type)
        except QuarkConfigError as e:
            kv = self.kv_cache is not None and any(self.kv_cache.is_kv_layer(s) for s in shard_paths(layer_path))
            return LayerPlan(layer_path, "unsupported", reason=str(e), kv_cache=kv)

    def scheme_for(self, layer_path: str, layer_type: str = "Linear") -> QuarkScheme | None:
        """The scheme instance for a module path (fused ``...qkv_proj`` / ``...gate_up_proj`` allowed), or None
        for an unquantized (excluded, embedding/lm_head, or unconfigured) layer. Raises
        :class:`~quark_jax.errors.QuarkConfigError` (or its subclass ``UnsupportedSchemeError``) otherwise."""
        return self._resolve(layer_path, layer_type).scheme

    # ------------------------------------------------------------------ reporting
    def layer_paths(self) -> list[str]:
        """Module paths of the 2-D ``.weight`` tensors of the checkpoint this config came from (linears,
        embeddings, lm_head), in checkpoint order."""
        if self.checkpoint_dir is None:
            raise ValueError("layer_paths: this config was not read from a checkpoint; pass the layer paths")
        from quark_jax.checkpoint import open_checkpoint

        reader = open_checkpoint(self.checkpoint_dir)
        return [n[: -len(".weight")] for n in reader.names()
                if n.endswith(".weight") and len(reader.info(n).shape) == 2]

    def describe(self, layer_paths: Iterable[str] | None = None) -> str:
        """A per-layer table (path, status, scheme, which config entry decided); layer paths default to the
        checkpoint's (see :meth:`layer_paths`)."""
        paths = list(self.layer_paths() if layer_paths is None else layer_paths)
        plans = [self.plan(p) for p in paths]
        width = max([len(p) for p in paths] + [5])
        lines = [f"{'layer':<{width}}  {'status':<11}  scheme / reason", "-" * (width + 60)]
        for p in plans:
            if p.status == "quantized":
                detail = f"{p.scheme.summary()}  [{p.source}]"
            elif p.status == "unsupported":
                detail = p.reason
            else:
                detail = p.source
            kv = "  (+KV cache scales)" if p.kv_cache else ""
            lines.append(f"{p.path:<{width}}  {p.status:<11}  {detail}{kv}")
        if self.kv_cache is not None:
            lines.append(f"KV cache: {self.kv_cache.dtype_name} {self.kv_cache.qscheme} (group "
                         f"{list(self.kv_cache.group)})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        g = self.global_quant_config.brief() if self.global_quant_config else "None"
        return (f"QuarkConfig(global: {g}; {len(self.layer_quant_config)} layer_quant_config entries; "
                f"exclude={list(self.exclude)}; kv_cache={self.kv_cache}; options={self.options})")
