"""Writing (good and deliberately bad) checkpoints for tests: a minimal safetensors writer that handles every dtype
of the fixtures (F8 via ml_dtypes), copies of fixture checkpoints with edits, sharding, truncation."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from quark_jax.io.safetensors_file import SAFETENSORS_DTYPES, SafetensorsFile

ST_NAME = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def write_safetensors(path, tensors: Mapping[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.array(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        data = arr.tobytes()
        header[name] = {"dtype": ST_NAME[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def read_tensors(src) -> dict[str, np.ndarray]:
    return SafetensorsFile(Path(src) / "model.safetensors").load_all()


def make_checkpoint(dst, tensors: Mapping[str, np.ndarray], config: dict, *, shards: int = 1) -> Path:
    """Write ``config.json`` and the tensors, in one ``model.safetensors`` or ``shards`` files plus an index."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(config))
    if shards == 1:
        write_safetensors(dst / "model.safetensors", tensors)
        return dst
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        write_safetensors(dst / fname, part)
        weight_map.update({n: fname for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def edited_copy(src, dst, *, drop=(), add: Mapping[str, np.ndarray] | None = None,
                config_edit: Callable[[dict], None] | None = None, shards: int = 1) -> Path:
    """A copy of checkpoint ``src`` with tensors dropped / added (or replaced) and the config edited in place."""
    src = Path(src)
    tensors = {k: v for k, v in read_tensors(src).items() if k not in set(drop)}
    tensors.update(add or {})
    config = json.loads((src / "config.json").read_text())
    if config_edit is not None:
        config_edit(config)
    return make_checkpoint(dst, tensors, config, shards=shards)


def truncate(path, nbytes: int) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-nbytes])


def copy_dir(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)
