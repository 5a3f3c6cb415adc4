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

__all__ = ["write_safetensors", "ShardWriter", "save_sharded", "write_config", "DEFAULT_MAX_SHARD_BYTES"]

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


class ShardWriter:
    """Writes tensors as they come: a shard file is written (and its arrays released) as soon as the next tensor
    would push it past ``max_shard_bytes``. :meth:`close` names the files as Hugging Face does:
    ``model.safetensors`` for one shard, else ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``).

    >>> import tempfile
    >>> w = ShardWriter(tempfile.mkdtemp(), max_shard_bytes=8)
    >>> w.add("a", np.zeros(2, np.float32)); w.add("b", np.zeros(2, np.float32)); w.close()
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
    """

    def __init__(self, out_dir: str | os.PathLike, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.out_dir, self.max_shard_bytes = Path(out_dir), int(max_shard_bytes)
        self._buffer: dict[str, np.ndarray] = {}
        self._size = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._total = 0

    def add(self, name: str, array) -> None:
        a = np.asarray(array)
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise ValueError(f"tensor {name}: written twice")
        if self._buffer and self._size + a.nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = a
        self._size += a.nbytes
        self._total += a.nbytes

    def _flush(self) -> None:
        path = self.out_dir / f".shard-{len(self._shards):05d}.safetensors.tmp"
        write_safetensors(path, self._buffer)
        self._shards.append((path, sorted(self._buffer)))
        self._buffer, self._size = {}, 0

    def close(self) -> list[str]:
        """Write what is left, name the files; returns the file names written."""
        if self._buffer or not self._shards:
            self._flush()
        if len(self._shards) == 1:
            os.replace(self._shards[0][0], self.out_dir / "model.safetensors")
            return ["model.safetensors"]
        n, files, weight_map = len(self._shards), [], {}
        for i, (path, names) in enumerate(self._shards, 1):
            fname = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.out_dir / fname)
            files.append(fname)
            weight_map.update({k: fname for k in names})
        index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return files + ["model.safetensors.index.json"]


def save_sharded(out_dir: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write ``tensors`` (in name order) through a :class:`ShardWriter`; returns the file names written."""
    writer = ShardWriter(out_dir, max_shard_bytes=max_shard_bytes)
    for name in sorted(tensors):
        writer.add(name, tensors[name])
    return writer.close()


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
