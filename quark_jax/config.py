"""``QuarkConfig``: parse a Quark ``quantization_config`` and say, per layer, which scheme runs it (SPEC section 4).

Resolution of a module path such as ``model.layers.0.self_attn.q_proj``:

1. ``exclude`` (exact names, ``re:`` regexes matched at the start, fnmatch wildcards) -> unquantized;
2. the first ``layer_quant_config`` key that fnmatch-es the path (dict order; ``*`` crosses dots), else
   ``layer_type_quant_config["Linear"]``, else ``global_quant_config``;
3. embeddings and ``lm_head`` are never quantized unless a ``layer_quant_config`` key matches them;
4. the scheme registry (:func:`quark_jax.schemes.select_scheme`) picks the scheme from the weight and input specs:
   FP8 W8A8, then static INT8 W8A8, then MXFP4 (W4A4, then ours: FP8-static input, weight-only); anything else
   raises :class:`~quark_jax.errors.UnsupportedSchemeError` quoting the weight and input specs.

Fused paths (``qkv_proj`` = q, k, v; ``gate_up_proj`` = gate, up) resolve per shard and the shards must agree.
The k/v projections named by ``export.kv_cache_group`` carry the KV-cache spec in their ``output_tensors``
(exposed as ``QuarkConfig.kv_cache``); everywhere else a non-null ``output_tensors`` or ``bias`` spec is
unsupported. Fixed vLLM quirks (ours): missing ``layer_quant_config`` / ``layer_type_quant_config`` / ``exclude``
are treated as empty, fnmatch wildcards work in ``exclude``, ``layer_type_quant_config`` matches by type name, a
fused name is replaced only in the last path component.

This module only parses: files are read through :mod:`quark_jax.io` (``from_pretrained``, ``layer_paths``), fused
module names come from :mod:`quark_jax.naming`, and checkpoint tensors are :mod:`quark_jax.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.errors import CheckpointError, QuarkConfigError, UnsupportedSchemeError
from quark_jax.io import CheckpointReader, open_checkpoint, read_config_json, resolve_checkpoint
from quark_jax.naming import shard_paths
from quark_jax.schemes import QuarkScheme, SchemeOptions, TensorQuantSpec, select_scheme, spec_brief

__all__ = [
    "TensorQuantSpec",
    "LayerQuantConfig",
    "KVCacheConfig",
    "SchemeOptions",
    "LayerPlan",
    "QuarkConfig",
    "kernel_shape",
]

NEVER_QUANTIZED = ("embed_tokens", "lm_head")
MOE_ROUTER_PARENTS = ("mlp", "block_sparse_moe")  # <parent>.gate is a MoE router: never quantized (vLLM builds it
# without a quant_config; transformers 5 makes it a plain parameter, so Quark's exports never quantize it)
LINEAR_TYPE_NAMES = ("Linear", "nn.Linear", "torch.nn.Linear", "torch.nn.modules.linear.Linear")


def _is_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True, kw_only=True)
class LayerQuantConfig:
    """One layer config: the weight, input, output and bias specs (any may be None) and where it came from."""

    weight: TensorQuantSpec | None  # the weight quantizer
    input_tensors: TensorQuantSpec | None  # the activation quantizer
    output_tensors: TensorQuantSpec | None = None  # only the KV-cache group's k/v projections may set it
    bias: TensorQuantSpec | None = None  # unsupported when set
    source: str = field(default="", compare=False)  # the config entry it came from, for messages

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "LayerQuantConfig":
        if not isinstance(d, Mapping):
            raise QuarkConfigError(f"{source}: expected a layer config (a JSON object), got {d!r}")
        return cls(**{k: TensorQuantSpec.from_dict(d.get(k), f"{source}.{k}")
                      for k in ("weight", "input_tensors", "output_tensors", "bias")}, source=source)

    def brief(self) -> str:
        return f"weight={spec_brief(self.weight)}, input_tensors={spec_brief(self.input_tensors)}"

    def scheme(self, layer: str, options: SchemeOptions = SchemeOptions()) -> QuarkScheme:
        """The scheme for this layer config (the registry's choice, :func:`quark_jax.schemes.select_scheme`);
        quantized outputs or biases are unsupported here (the KV-cache group's output specs are dropped before).

        >>> w = TensorQuantSpec(dtype="fp8_e4m3", qscheme="per_tensor", is_dynamic=False, symmetric=True)
        >>> LayerQuantConfig(weight=w, input_tensors=w).scheme("model.layers.0.mlp.down_proj").summary()
        'QuarkW8A8Fp8(weight fp8 per_tensor, input fp8 static)'
        """
        if self.output_tensors is not None or self.bias is not None:
            raise UnsupportedSchemeError(
                f"layer {layer}: quantized outputs or biases are not supported (config {self.source}: "
                f"output_tensors={spec_brief(self.output_tensors)}, bias={spec_brief(self.bias)}); only the k/v "
                f"projections named by export.kv_cache_group may have output_tensors (the FP8 KV cache)")
        return select_scheme(self.weight, self.input_tensors, options=options, layer=layer, source=self.source)


@dataclass(frozen=True, kw_only=True)
class KVCacheConfig:
    """FP8 KV-cache quantization (SPEC section 6), from the ``output_tensors`` of the ``export.kv_cache_group``
    layers. The cache stores ``fp8(clamp(k / k_scale))`` and reads ``f32(k_fp8) * k_scale`` (same for v); the
    checkpoint names of the scales are :func:`quark_jax.naming.kv_scale_tensor_names`.

    >>> kv = KVCacheConfig(group=("*k_proj", "*v_proj"))
    >>> kv.dtype, kv.fp8_max, kv.is_kv_layer("model.layers.0.self_attn.k_proj")
    (dtype(float8_e4m3fn), 448.0, True)
    """

    group: tuple[str, ...]  # export.kv_cache_group: fnmatch patterns of the k/v projections
    dtype_name: str = "float8_e4m3fn"  # the cache dtype
    qscheme: str = "per_tensor"  # one scale per layer for k and one for v

    @property
    def dtype(self):
        return jnp.dtype(self.dtype_name)

    @property
    def fp8_max(self) -> float:
        return formats.fp8_max(self.dtype)

    def is_kv_layer(self, layer_path: str) -> bool:
        """Whether a (unfused) module path is a member of the KV-cache group (e.g. ``...self_attn.k_proj``)."""
        return any(fnmatch.fnmatchcase(layer_path, p) for p in self.group)


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    """What happens to one layer: ``status`` is "quantized", "excluded", "unquantized" or "unsupported"."""

    path: str  # the module path (fused names allowed)
    status: str  # "quantized", "excluded", "unquantized" or "unsupported"
    scheme: QuarkScheme | None = None  # the scheme when quantized
    source: str = ""  # the config entry that decided
    reason: str = ""  # the error, when unsupported
    kv_cache: bool = False  # a member (or fused with a member) of the KV-cache group

    def scheme_name(self) -> str:
        if self.scheme is not None:
            return self.scheme.summary()
        return {"excluded": "excluded", "unquantized": "unquantized", "unsupported": "UNSUPPORTED"}[self.status]


def _layer_table(table: Any, name: str) -> Mapping[str, LayerQuantConfig]:
    if table is None:
        return types.MappingProxyType({})
    if not isinstance(table, Mapping):
        raise QuarkConfigError(f"quantization_config.{name}: expected an object of layer configs, got {table!r}")
    return types.MappingProxyType({k: LayerQuantConfig.from_dict(v, f"{name}[{k!r}]") for k, v in table.items()})


def _parse_kv_cache(qc: Mapping[str, Any], export: Mapping[str, Any],
                    layer_quant_config: Mapping[str, LayerQuantConfig]) -> KVCacheConfig | None:
    group = export.get("kv_cache_group") or []
    if not group:
        return None
    if not isinstance(group, (list, tuple)) or not all(isinstance(g, str) for g in group):
        raise QuarkConfigError(f"quantization_config.export.kv_cache_group: expected a list of layer name "
                               f"patterns, got {group!r}")
    group = tuple(group)
    kv_table = _layer_table(qc.get("kv_cache_quant_config"), "kv_cache_quant_config")
    specs = []
    for pattern in group:
        cfg = layer_quant_config.get(pattern) or kv_table.get(pattern)
        if cfg is None:
            raise QuarkConfigError(f"export.kv_cache_group names {pattern!r} but neither layer_quant_config nor "
                                   f"kv_cache_quant_config has an entry for it (keys: {sorted(layer_quant_config)})")
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


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class QuarkConfig:
    """A parsed Quark ``quantization_config`` (SPEC section 4): immutable; build it with :meth:`from_dict`,
    :meth:`from_pretrained` or :meth:`parse`, change options with :meth:`with_options` (a new config).

    >>> cfg = QuarkConfig.from_dict({"quant_method": "quark", "export": {}, "exclude": ["lm_head"],
    ...     "global_quant_config": {"weight": {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False,
    ...     "symmetric": True}, "input_tensors": {"dtype": "fp8_e4m3", "qscheme": "per_tensor",
    ...     "is_dynamic": False}}})
    >>> type(cfg.scheme_for("model.layers.0.self_attn.qkv_proj")).__name__, cfg.scheme_for("lm_head"), cfg.kv_cache
    ('QuarkW8A8Fp8', None, None)
    """

    raw: Mapping[str, Any]  # the quantization_config object as given
    export: Mapping[str, Any]  # its export section (kv_cache_group, ...)
    global_quant_config: LayerQuantConfig | None  # the fallback layer config
    layer_quant_config: Mapping[str, LayerQuantConfig]  # fnmatch pattern -> layer config, first match wins
    layer_type_quant_config: Mapping[str, LayerQuantConfig]  # layer type name ("Linear") -> layer config
    exclude: tuple[str, ...]  # names, "re:" regexes or wildcards of unquantized layers
    kv_cache: KVCacheConfig | None  # the FP8 KV cache, when export.kv_cache_group is set
    options: SchemeOptions = SchemeOptions()  # passed to every scheme this config creates
    checkpoint_dir: Path | None = None  # the checkpoint it was read from, if any (fused shard sizes, layer_paths)

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(cls, quant_config: Mapping[str, Any], *, options: SchemeOptions = SchemeOptions(),
              checkpoint_dir: str | os.PathLike | None = None) -> "QuarkConfig":
        """The one parser: a ``quantization_config`` object (a dict) -> a config; errors name the field."""
        if not isinstance(quant_config, Mapping):
            raise QuarkConfigError(f"quantization_config: expected a JSON object, got {type(quant_config).__name__}")
        method = quant_config.get("quant_method")
        if method != "quark":
            raise QuarkConfigError(f"quantization_config.quant_method: expected 'quark', got {method!r}")
        if not isinstance(quant_config.get("export"), Mapping):
            raise QuarkConfigError("quantization_config.export: missing (or not an object); Quark exports always "
                                   f"write it (export.kv_cache_group, ...), got {quant_config.get('export')!r}")
        export = types.MappingProxyType(dict(quant_config["export"]))
        pack = export.get("pack_method")
        if pack is not None and pack != options.int4_pack_method:  # how this checkpoint packs INT4 words
            if pack not in ("order", "reorder"):
                raise QuarkConfigError(f"quantization_config.export.pack_method: expected 'order' or 'reorder', got "
                                       f"{pack!r}")
            options = dataclasses.replace(options, int4_pack_method=pack)
        g = quant_config.get("global_quant_config")
        layers = _layer_table(quant_config.get("layer_quant_config"), "layer_quant_config")
        exclude = quant_config.get("exclude") or []
        if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
            raise QuarkConfigError(f"quantization_config.exclude: expected a list of names/patterns, got {exclude!r}")
        return cls(raw=types.MappingProxyType(dict(quant_config)), export=export,
                   global_quant_config=None if g is None else LayerQuantConfig.from_dict(g, "global_quant_config"),
                   layer_quant_config=layers,
                   layer_type_quant_config=_layer_table(quant_config.get("layer_type_quant_config"),
                                                        "layer_type_quant_config"),
                   exclude=tuple(exclude), kv_cache=_parse_kv_cache(quant_config, export, layers), options=options,
                   checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir))

    @classmethod
    def from_dict(cls, quantization_config: Mapping[str, Any], **options) -> "QuarkConfig":
        """From the ``quantization_config`` object of a ``config.json``; ``options`` are :class:`SchemeOptions`."""
        return cls.parse(quantization_config, options=SchemeOptions(**options))

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike | CheckpointReader, **options) -> "QuarkConfig":
        """From a checkpoint's ``config.json`` (a directory, a bundled name or Hub id, or an open
        :class:`~quark_jax.io.CheckpointReader`, whose parsed config.json is reused); ``options`` are
        :class:`SchemeOptions` (impl, azp_mode, ...)."""
        if isinstance(checkpoint, CheckpointReader):
            directory, config = checkpoint.directory, checkpoint.config
        else:
            directory = resolve_checkpoint(checkpoint)
            try:
                config = read_config_json(directory)
            except CheckpointError as e:  # the config's error type, as before
                raise QuarkConfigError(str(e)) from None
        qc = config.get("quantization_config")
        if qc is None:
            raise QuarkConfigError(f"{Path(directory) / 'config.json'}: no quantization_config (not a "
                                   "Quark-quantized checkpoint)")
        return cls.parse(qc, options=SchemeOptions(**options), checkpoint_dir=directory)

    def with_options(self, **options) -> "QuarkConfig":
        """A new config with some scheme options changed, e.g. ``cfg.with_options(impl="xla")``."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **options))

    # ------------------------------------------------------------------ resolution
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
            types_ = (layer_type,) if layer_type not in LINEAR_TYPE_NAMES else LINEAR_TYPE_NAMES
            for t in types_:
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

    def _is_kv(self, layer_path: str) -> bool:
        return self.kv_cache is not None and any(self.kv_cache.is_kv_layer(s) for s in shard_paths(layer_path))

    def _resolve(self, layer_path: str, layer_type: str) -> LayerPlan:
        kv = self._is_kv(layer_path)
        excluded, by = self._excluded(layer_path)
        if excluded:
            return LayerPlan(path=layer_path, status="excluded", source=f"exclude {by!r}", kv_cache=kv)
        leaf = layer_path.rpartition(".")[2]
        if leaf in NEVER_QUANTIZED and not any(fnmatch.fnmatchcase(s, p) for s in shard_paths(layer_path)
                                               for p in self.layer_quant_config):
            return LayerPlan(path=layer_path, status="unquantized",
                             source="embeddings and lm_head stay unquantized")
        parts = layer_path.split(".")
        if leaf == "gate" and len(parts) > 1 and parts[-2] in MOE_ROUTER_PARENTS and \
                not any(fnmatch.fnmatchcase(layer_path, p) for p in self.layer_quant_config):
            return LayerPlan(path=layer_path, status="unquantized", source="MoE routers stay unquantized")
        cfg = self.layer_config(layer_path, layer_type)
        if cfg is None:
            return LayerPlan(path=layer_path, status="unquantized", source="no global_quant_config", kv_cache=kv)
        if cfg.weight is None and cfg.input_tensors is None and cfg.output_tensors is None and cfg.bias is None:
            return LayerPlan(path=layer_path, status="unquantized", source=cfg.source, kv_cache=kv)
        return LayerPlan(path=layer_path, status="quantized", scheme=cfg.scheme(layer_path, self.options),
                         source=cfg.source, kv_cache=kv)

    def plan(self, layer_path: str, layer_type: str = "Linear") -> LayerPlan:
        """What happens to one layer; an unsupported layer gets status "unsupported" and the error as reason."""
        try:
            return self._resolve(layer_path, layer_type)
        except QuarkConfigError as e:
            return LayerPlan(path=layer_path, status="unsupported", reason=str(e), kv_cache=self._is_kv(layer_path))

    def scheme_for(self, layer_path: str, layer_type: str = "Linear") -> QuarkScheme | None:
        """The scheme instance for a module path (fused ``...qkv_proj`` / ``...gate_up_proj`` allowed), or None
        for an unquantized (excluded, embedding/lm_head, or unconfigured) layer. Raises
        :class:`~quark_jax.errors.QuarkConfigError` (or its subclass ``UnsupportedSchemeError``) otherwise."""
        return self._resolve(layer_path, layer_type).scheme

    # ------------------------------------------------------------------ reporting
    def layer_paths(self) -> list[str]:
        """Module paths of the 2-D ``.weight`` tensors of the checkpoint this config came from (linears,
        embeddings, lm_head), in checkpoint order (read through :mod:`quark_jax.io`)."""
        if self.checkpoint_dir is None:
            raise ValueError("layer_paths: this config was not read from a checkpoint; pass the layer paths")
        return open_checkpoint(self.checkpoint_dir).weight_layer_paths()

    def describe(self, layer_paths: Iterable[str] | None = None) -> str:
        """A per-layer table (path, status, scheme, which config entry decided); layer paths default to the
        checkpoint's (see :meth:`layer_paths`)."""
        paths = list(self.layer_paths() if layer_paths is None else layer_paths)
        plans = [self.plan(p) for p in paths]
        width = max([len(p) for p in paths] + [5])
        lines = [f"{'layer':<{width}}  {'status':<11}  scheme / reason", "-" * (width + 60)]
        auto = self._auto_decisions(plans)
        for p in plans:
            if p.status == "quantized":
                detail = f"{p.scheme.summary()}  [{p.source}]" + (f"  [auto: {auto[p.path]}]" if p.path in auto else "")
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

    def _auto_decisions(self, plans) -> dict[str, str]:
        """On a GPU, for each quantized layer of the checkpoint: what ``impl="auto"`` runs at decode and prefill
        and where that came from (``kernels.describe_auto``); {} on CPU or without a checkpoint."""
        from quark_jax.kernels import describe_auto, tuning

        if self.checkpoint_dir is None or tuning.current_device()[1] is None:
            return {}
        reader = open_checkpoint(self.checkpoint_dir)
        shapes = {p.path: kernel_shape(p, reader) for p in plans}
        return {path: describe_auto(*shape) for path, shape in shapes.items() if shape}

    def __repr__(self) -> str:
        g = self.global_quant_config.brief() if self.global_quant_config else "None"
        return (f"QuarkConfig(global: {g}; {len(self.layer_quant_config)} layer_quant_config entries; "
                f"exclude={list(self.exclude)}; kv_cache={self.kv_cache}; options={self.options})")


def kernel_shape(plan: LayerPlan, reader: CheckpointReader) -> tuple[str, int, int] | None:
    """``(kernel entry, K, N)`` of a quantized layer's GEMM (its scheme's ``kernel_op``, the weight's shape from
    the checkpoint, packed K unpacked); None where the layer calls no ``quark_jax.kernels`` GEMM."""
    op = plan.scheme.kernel_op if plan.status == "quantized" and plan.scheme is not None else None
    if not op:
        return None
    n, k = plan.scheme.weight_geometry(reader.weight_shape(plan.path))  # packed K unpacked, transposed layouts
    return op, k, n
