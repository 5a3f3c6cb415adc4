"""Writing a Quark checkpoint: safetensors files (one, or shards with ``model.safetensors.index.json``) and
``config.json`` with the ``quantization_config``, laid out as amd-quark's ``export_safetensors`` writes them."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from quark_jax.io.safetensors_file import SAFETENSORS_DTYPES

__all__ = ["write_safetensors", "save_sharded", "write_config", "DEFAULT_MAX_SHARD_BYTES"]

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
"""Shard size limit of :func:`save_sharded` (Hugging Face's ``max_shard_size="5GB"``)."""

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
_ST_NAMES = {dt: name for name, dt in SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (numpy arrays of any dtype quark_jax reads, ml_dtypes included) to one safetensors file,
    sorted by name, 8-byte aligned header, ``metadata`` (default ``{"format": "pt"}``, as torch writes).

    >>> import tempfile, ml_dtypes
    >>> from quark_jax.io.safetensors_file import SafetensorsFile
    >>> p = tempfile.mkdtemp() + "/t.safetensors"
    >>> write_safetensors(p, {"w": np.ones((2, 3), ml_dtypes.float8_e4m3fn), "s": np.float32(0.5)})
    >>> f = SafetensorsFile(p); f.get("w").dtype.name, f.get("s").shape
    ('float8_e4m3fn', ())
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        a = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (ascontiguousarray makes 0-d arrays 1-d)
        st = _ST_NAMES.get(a.dtype)
        if st is None:
            raise TypeError(f"tensor {name}: dtype {a.dtype} has no safetensors name")
        data = a.tobytes()
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def save_sharded(out_dir: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write ``tensors`` as ``model.safetensors``, or, past ``max_shard_bytes``, as
    ``model-0000i-of-0000n.safetensors`` shards (tensors in name order, a new shard when the next tensor would
    overflow) plus ``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``). Returns the file
    names written."""
    out_dir = Path(out_dir)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = np.asarray(tensors[name]).nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    if len(shards) == 1:
        write_safetensors(out_dir / "model.safetensors", shards[0])
        return ["model.safetensors"]
    n = len(shards)
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(out_dir / fname, shard)
        files.append(fname)
        weight_map.update({k: fname for k in shard})
    total = sum(np.asarray(a).nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files + ["model.safetensors.index.json"]


def write_config(out_dir: str | os.PathLike, model_config: Mapping[str, Any], quantization_config: Mapping[str, Any],
                 *, dtype_name: str) -> dict[str, Any]:
    """Write ``config.json``: the float model's config with ``dtype`` (and ``torch_dtype`` when present) set to
    ``dtype_name``, ``architectures`` filled in from ``model_type`` when missing and ``quantization_config`` added; sorted keys, indent 2, as transformers writes it."""
    cfg = {k: v for k, v in model_config.items() if not k.startswith("_fixture")}
    if not cfg.get("architectures") and cfg.get("model_type") in _ARCHITECTURES:
        cfg["architectures"] = [_ARCHITECTURES[cfg["model_type"]]]  # transformers writes the model class
    cfg["dtype"] = dtype_name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = dtype_name
    cfg["quantization_config"] = dict(quantization_config)
    Path(out_dir, "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg
