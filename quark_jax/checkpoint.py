"""Reading Quark checkpoints (SPEC section 5): per-layer raw params with validation, KV-cache scales.

* :func:`open_checkpoint` / :class:`CheckpointReader` (from :mod:`quark_jax.io`, re-exported): a single
  ``model.safetensors`` or a sharded one (``model.safetensors.index.json``), read lazily one tensor at a time.
* naming (from :mod:`quark_jax.naming`, re-exported): :data:`FUSED_MODULES`, :func:`shard_paths`,
  :func:`kv_scale_tensor_names`.
* :func:`load_layer_params`: the raw params of one (possibly fused) layer for a scheme, as its ``create_weights``
  declares them: dtypes checked and normalised (scales -> float32), shapes checked, fused shards placed in row
  order (q, k, v / gate, up); every error names the layer, the tensor, what was expected and what was found.
* :func:`check_unexpected_tensors`: after a whole model is loaded, the tensors nobody consumed.
* :func:`load_kv_scales`: the FP8 KV-cache scales of one attention module (SPEC section 6).
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from quark_jax.errors import CheckpointError
from quark_jax.io import INDEX_FILE, SINGLE_FILE, CheckpointReader, open_checkpoint
from quark_jax.naming import FUSED_MODULES, kv_scale_tensor_names, shard_paths
from quark_jax.schemes import SCALE_DTYPES, ParamSpec, QuarkScheme, UnquantizedLinearMethod
from quark_jax.value_checks import check_scale, is_scale_name

__all__ = [
    "CheckpointReader",
    "open_checkpoint",
    "checkpoint_dtype",
    "layer_tensor_names",
    "LayerGeometry",
    "layer_geometry",
    "layer_param_specs",
    "load_layer_params",
    "check_unexpected_tensors",
    "KVScales",
    "load_kv_scales",
    "SINGLE_FILE",
    "INDEX_FILE",
    "FUSED_MODULES",
    "shard_paths",
    "kv_scale_tensor_names",
]

#: tensors a linear layer's module may carry that belong to something else (the KV cache reads output_scale)
FOREIGN_SUFFIXES = ("output_scale",)


def checkpoint_dtype(config: Mapping, default=np.float32):
    """The model dtype a Hugging Face ``config.json`` declares (``dtype`` or ``torch_dtype``), else ``default``.

    >>> checkpoint_dtype({"torch_dtype": "bfloat16"})
    dtype(bfloat16)
    """
    import jax.numpy as jnp

    name = config.get("dtype") or config.get("torch_dtype")
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "float": jnp.float32,
             "half": jnp.float16}
    if name is None:
        return jnp.dtype(default)
    if name not in names:
        raise ValueError(f"config.json dtype: expected one of {sorted(names)}, got {name!r}")
    return jnp.dtype(names[name])


# ---------------------------------------------------------------------------------------------- one layer

@dataclass(frozen=True, kw_only=True)
class LayerGeometry:
    """Sizes of a (possibly fused) layer, read from its shards' stored weights."""

    input_size: int  # K (unpacked: an MXFP4 weight [N, K/2] gives K)
    logical_widths: tuple[int, ...]  # N of each shard, in row order
    has_bias: bool  # every shard has a bias

    @property
    def output_size(self) -> int:
        return sum(self.logical_widths)


def _scheme_name(scheme) -> str:
    return scheme.summary() if scheme is not None else "unquantized"


def layer_geometry(reader: CheckpointReader, layer_path: str, scheme: QuarkScheme | None = None) -> LayerGeometry:
    """``input_size`` (K), ``logical_widths`` (N of each shard) and whether the shards have a bias, read from the
    checkpoint (an MXFP4 weight [N, K/2] gives K = 2 * columns).

    >>> from quark_jax.data import bundled_checkpoint
    >>> layer_geometry(open_checkpoint(bundled_checkpoint("tiny-llama-fp8")), "model.layers.0.self_attn.qkv_proj")
    LayerGeometry(input_size=64, logical_widths=(64, 32, 32), has_bias=False)
    """
    reader = open_checkpoint(reader)
    pack = getattr(scheme, "weight_pack_factor", 1)
    widths, ks, biases = [], set(), []
    for shard in shard_paths(layer_path):
        name = f"{shard}.weight"
        if name not in reader:
            raise CheckpointError(f"layer {layer_path} ({_scheme_name(scheme)}): missing tensor {name!r} in "
                                  f"checkpoint {reader.directory}")
        shape = reader.info(name).shape
        if len(shape) != 2:
            raise CheckpointError(f"layer {layer_path}: tensor {name!r}: expected a 2-D weight [N, K], found shape "
                                  f"{list(shape)}")
        n, k = scheme.weight_geometry(shape) if scheme is not None else (shape[0], shape[1] * pack)
        widths.append(n)
        ks.add(k)
        biases.append(f"{shard}.bias" in reader)
    if len(ks) != 1:
        raise CheckpointError(f"layer {layer_path}: its fused shards have different input sizes {sorted(ks)} "
                              f"({shard_paths(layer_path)})")
    if any(biases) and not all(biases):
        raise CheckpointError(f"layer {layer_path}: some fused shards have a bias and some do not "
                              f"({dict(zip(shard_paths(layer_path), biases))})")
    return LayerGeometry(input_size=ks.pop(), logical_widths=tuple(widths), has_bias=all(biases))


def layer_param_specs(scheme: QuarkScheme | None, logical_widths: Sequence[int], input_size: int, *,
                      use_bias: bool = False, params_dtype=None) -> Mapping[str, ParamSpec]:
    """``scheme.create_weights(...)`` plus ``bias`` [N] (stored f32/bf16/f16, loaded as ``params_dtype``) when
    ``use_bias``; ``scheme`` None means :class:`~quark_jax.schemes.UnquantizedLinearMethod`. Built once per
    distinct layer (cached; the mapping is read-only).

    >>> from quark_jax.schemes import QuarkW8A8Fp8
    >>> specs = layer_param_specs(QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"), (64, 32), 16)
    >>> {k: v.describe() for k, v in specs.items()}
    {'weight': 'float8_e4m3fn [96, 16]', 'weight_scale': 'float32 [2]', 'input_scale': 'float32 [2]'}
    """
    scheme = UnquantizedLinearMethod() if scheme is None else scheme
    dtype = None if params_dtype is None else np.dtype(params_dtype)
    return _param_specs(scheme, tuple(int(w) for w in logical_widths), int(input_size), bool(use_bias), dtype)


@functools.lru_cache(maxsize=1024)
def _param_specs(scheme, widths, input_size, use_bias, params_dtype) -> Mapping[str, ParamSpec]:
    specs = dict(scheme.create_weights(widths, input_size, params_dtype))
    if use_bias:
        dtype = np.dtype(np.float32 if params_dtype is None else params_dtype)
        specs["bias"] = ParamSpec.rows(widths, dtype=dtype, checkpoint_dtypes=SCALE_DTYPES, doc="bias [N]")
    return types.MappingProxyType(specs)


def _dtype_names(dtypes) -> str:
    return " or ".join(np.dtype(d).name for d in dtypes)


def load_layer_params(reader: CheckpointReader | str | Path, layer_path: str, scheme: QuarkScheme | None, *,
                      input_size: int | None = None, logical_widths: Sequence[int] | None = None,
                      use_bias: bool | None = None, params_dtype=None) -> dict[str, np.ndarray]:
    """The raw params of one layer (fused ``...qkv_proj`` / ``...gate_up_proj`` read their shards), as
    ``scheme.create_weights`` declares them, plus ``bias`` when the layer has one. Validated:

    * a required tensor missing, a tensor of the wrong dtype or shape -> :class:`CheckpointError` naming it with
      the expected and found dtype/shape;
    * a tensor under one of the layer's modules that the scheme does not read (for example an ``input_scale``
      for a dynamic scheme, or a bias with ``use_bias=False``) -> :class:`CheckpointError` ("unexpected");
    * a scale that is not finite and > 0, or an E8M0 scale byte 255 (NaN) -> :class:`CheckpointError` naming the
      file, tensor and layer (:mod:`quark_jax.value_checks`);
    * ``scheme.check_loaded`` (e.g. INT8 weight zero points must be 0).

    Sizes default to the checkpoint's (:func:`layer_geometry`); given, they are checked. Scales come back as
    float32 whatever the stored dtype (f32, bf16, f16); per-shard scalars are stacked into ``[n_shards]``.

    >>> from quark_jax.data import bundled_checkpoint
    >>> from quark_jax.schemes import QuarkW8A8Fp8
    >>> p = load_layer_params(bundled_checkpoint("tiny-llama-fp8"), "model.layers.0.mlp.gate_up_proj",
    ...                       QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static"))
    >>> {k: (v.dtype.name, v.shape) for k, v in p.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'weight': ('float8_e4m3fn', (256, 64)), 'weight_scale': ('float32', (2,)), 'input_scale': ('float32', (2,))}
    """
    reader = open_checkpoint(reader)
    geo = layer_geometry(reader, layer_path, scheme)
    what = f"layer {layer_path} ({_scheme_name(scheme)})"
    if input_size is not None and int(input_size) != geo.input_size:
        raise CheckpointError(f"{what}: expected input size K = {input_size}, the checkpoint's weights have "
                              f"K = {geo.input_size}")
    widths = geo.logical_widths if logical_widths is None else tuple(int(w) for w in logical_widths)
    if widths != geo.logical_widths:
        raise CheckpointError(f"{what}: expected output sizes {list(widths)} (one per shard of "
                              f"{list(shard_paths(layer_path))}), the checkpoint's weights have "
                              f"{list(geo.logical_widths)}")
    use_bias = geo.has_bias if use_bias is None else bool(use_bias)
    specs = layer_param_specs(scheme, widths, geo.input_size, use_bias=use_bias, params_dtype=params_dtype)
    shards = shard_paths(layer_path)

    # anything under the layer's modules that no spec reads
    known = set(specs) | set(FOREIGN_SUFFIXES)
    for shard in shards:
        for name in reader.tensors_of(shard):
            suffix = name[len(shard) + 1:]
            if suffix not in known:
                hint = " (the layer was built with use_bias=False)" if suffix == "bias" else ""
                raise CheckpointError(f"{what}: unexpected tensor {name!r} ({reader.info(name).dtype.name} "
                                      f"{list(reader.info(name).shape)}){hint}; the scheme reads "
                                      f"{sorted(specs)} from {shard}", file=str(reader.file_of(name)), tensor=name,
                                      layer=layer_path, field=suffix, expected=f"one of {sorted(specs)}",
                                      found=suffix)

    params: dict[str, np.ndarray] = {}
    for pname, spec in specs.items():
        parts, present = [], []
        for i, shard in enumerate(shards):
            tname = f"{shard}.{pname}"
            if tname not in reader:
                present.append(False)
                continue
            present.append(True)
            info = reader.info(tname)
            where = dict(file=str(reader.file_of(tname)), tensor=tname, layer=layer_path, field=pname)
            if info.dtype not in spec.checkpoint_dtypes:
                raise CheckpointError(f"{what}: tensor {tname!r}: expected dtype {_dtype_names(spec.checkpoint_dtypes)}"
                                      f" ({spec.doc}), found {info.dtype.name} shape {list(info.shape)} in "
                                      f"{reader.file_of(tname)}", **where,
                                      expected=_dtype_names(spec.checkpoint_dtypes), found=info.dtype.name)
            if not spec.accepts(i, info.shape):
                raise CheckpointError(f"{what}: tensor {tname!r}: expected shape {list(spec.shard_shapes[i])} "
                                      f"({spec.doc}), found {list(info.shape)} ({info.dtype.name}) in "
                                      f"{reader.file_of(tname)}", **where,
                                      expected=str(list(spec.shard_shapes[i])), found=str(list(info.shape)))
            parts.append(reader.get(tname).reshape(spec.shard_shapes[i]))
            if is_scale_name(tname):  # finite and > 0 (float), not 255 (E8M0): vectorized, quark_jax.value_checks
                check_scale(parts[-1], tensor=tname, layer=layer_path, file=reader.file_of(tname))
        if not all(present):
            missing = [f"{s}.{pname}" for s, p in zip(shards, present) if not p]
            if spec.required or any(present):
                want = (f"{_dtype_names(spec.checkpoint_dtypes)} shape "
                        f"{list(spec.shard_shapes[shards.index(missing[0].rpartition('.')[0])])}")
                raise CheckpointError(f"{what}: missing tensor {missing[0]!r} (expected {want}, {spec.doc}) in "
                                      f"checkpoint {reader.directory}", file=str(reader.directory),
                                      tensor=missing[0], layer=layer_path, field=pname, expected=want,
                                      found="no such tensor")
            continue
        if spec.combine in ("concat", "concat_cols"):
            axis = 0 if spec.combine == "concat" else -1
            arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        else:
            arr = np.stack([p.reshape(()) for p in parts])
        params[pname] = arr.astype(spec.dtype, copy=False)
    bias = params.pop("bias", None)
    (scheme or UnquantizedLinearMethod()).check_loaded(params, layer_path)
    if bias is not None:
        params["bias"] = bias
    return params


def layer_tensor_names(reader: CheckpointReader, layer_path: str) -> list[str]:
    """Every tensor under a layer's (shard) modules: what :func:`load_layer_params` consumed, for
    :func:`check_unexpected_tensors`; the KV ``output_scale`` tensors are left to :func:`load_kv_scales`."""
    return [n for s in shard_paths(layer_path) for n in reader.tensors_of(s)
            if n.rpartition(".")[2] not in FOREIGN_SUFFIXES]


def check_unexpected_tensors(reader: CheckpointReader, consumed: Iterable[str], *,
                             ignore: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` listing the checkpoint tensors that are not in ``consumed`` (after a whole
    model was loaded); ``ignore`` holds fnmatch patterns of tensors to skip (e.g. ``"*.rotary_emb.inv_freq"``)."""
    import fnmatch

    consumed = set(consumed)
    ignore = tuple(ignore)
    extra = [n for n in reader.names() if n not in consumed and not any(fnmatch.fnmatchcase(n, p) for p in ignore)]
    if extra:
        shown = ", ".join(f"{n!r} ({reader.info(n).dtype.name} {list(reader.info(n).shape)})" for n in extra[:8])
        more = f" and {len(extra) - 8} more" if len(extra) > 8 else ""
        raise CheckpointError(f"checkpoint {reader.directory}: {len(extra)} unexpected tensor(s) that no layer of "
                              f"the model reads: {shown}{more}")


# ---------------------------------------------------------------------------------------------- KV cache

class KVScales(NamedTuple):
    """FP8 KV-cache scales of one attention module (float32 scalars) and the tensors they came from."""

    k_scale: np.float32
    v_scale: np.float32
    tensor_names: tuple[str, ...]


def _scalar(reader: CheckpointReader, name: str) -> np.float32:
    info = reader.info(name)
    if info.dtype not in SCALE_DTYPES or int(np.prod(info.shape)) != 1:
        raise CheckpointError(f"tensor {name!r}: expected a scalar KV-cache scale ({_dtype_names(SCALE_DTYPES)} "
                              f"shape [] or [1]), found {info.dtype.name} {list(info.shape)}")
    value = reader.get(name).astype(np.float32).reshape(())
    check_scale(value, tensor=name, layer=name.rpartition(".")[0], file=reader.file_of(name))
    return np.float32(value)


def load_kv_scales(reader: CheckpointReader | str | Path, attn_path: str) -> KVScales:
    """The k / v scales of ``attn_path`` (e.g. ``model.layers.0.self_attn``): Quark's ``k_proj.output_scale`` /
    ``v_proj.output_scale``, else ``k_scale`` / ``v_scale`` (vLLM's names). One missing -> the other; both
    missing -> 1.0 (SPEC section 6).

    >>> from quark_jax.data import bundled_checkpoint
    >>> k, v, names = load_kv_scales(bundled_checkpoint("tiny-llama-fp8"), "model.layers.0.self_attn")
    >>> float(k), float(v), names
    (1.0, 1.0, ())
    """
    reader = open_checkpoint(reader)
    found = {}
    for key, candidates in kv_scale_tensor_names(attn_path).items():
        for name in candidates:
            if name in reader:
                found[key] = (name, _scalar(reader, name))
                break
    k = found.get("k_scale", found.get("v_scale", (None, np.float32(1.0))))[1]
    v = found.get("v_scale", found.get("k_scale", (None, np.float32(1.0))))[1]
    return KVScales(np.float32(k), np.float32(v), tuple(n for n, _ in found.values()))
