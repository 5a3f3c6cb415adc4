"""A checkpoint folder of safetensors files: one ``model.safetensors`` or a sharded set with its
``model.safetensors.index.json``; headers parsed at open, tensors read lazily one at a time."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from quark_jax.errors import CheckpointError
from quark_jax.io.config_json import read_config_json
from quark_jax.io.hub import resolve_checkpoint
from quark_jax.io.safetensors_file import SafetensorsFile, SafetensorsFormatError, TensorInfo

__all__ = ["CheckpointReader", "open_checkpoint", "SINGLE_FILE", "INDEX_FILE"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointReader:
    """A checkpoint folder opened lazily: headers are parsed at open (so truncated files fail early), tensors are
    read one at a time.

    ``names()``, ``info(name)`` (dtype, shape), ``get(name) -> np.ndarray``, ``tensors_of(module_path)``,
    ``config`` (config.json as a dict, {} when absent), ``files`` (the safetensors paths).

    >>> from quark_jax.data import bundled_checkpoint
    >>> r = open_checkpoint(bundled_checkpoint("tiny-llama-fp8"))
    >>> r.get("model.layers.0.self_attn.q_proj.weight").dtype, r.info("model.norm.weight").shape
    (dtype(float8_e4m3fn), (64,))
    """

    def __init__(self, directory: str | Path, *, config: dict | None = None):
        self.directory = resolve_checkpoint(directory)
        if config is not None:  # config.json already parsed by the caller
            self.__dict__["config"] = config
        index_path = self.directory / INDEX_FILE
        single_path = self.directory / SINGLE_FILE
        self._file_of: dict[str, SafetensorsFile] = {}
        if index_path.is_file():
            files = self._open_index(index_path)
        elif single_path.is_file():
            files = [self._open(single_path)]
        else:
            found = sorted(p.name for p in self.directory.iterdir())
            raise CheckpointError(f"checkpoint {self.directory}: expected {SINGLE_FILE} or {INDEX_FILE}, found "
                                  f"{found}")
        for f in files:
            for name in f.names():
                if name in self._file_of:
                    raise CheckpointError(f"checkpoint {self.directory}: tensor {name!r} is stored twice, in "
                                          f"{Path(self._file_of[name].path).name} and {Path(f.path).name}")
                self._file_of[name] = f
        self.files = [Path(f.path) for f in files]
        self._modules: dict[str, list[str]] = {}
        for name in self._file_of:
            self._modules.setdefault(name.rpartition(".")[0], []).append(name)

    def _open(self, path: Path) -> SafetensorsFile:
        try:
            return SafetensorsFile(path)
        except SafetensorsFormatError as e:
            raise CheckpointError(f"checkpoint {self.directory}: {path.name} is damaged: {e}", file=str(path),
                                  tensor=e.tensor) from None

    def _open_index(self, index_path: Path) -> list[SafetensorsFile]:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index_path}: expected JSON with a 'weight_map' object ({e!r})",
                                  file=str(index_path)) from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index_path}: expected 'weight_map' to map tensor names to file names (strings), "
                                  f"found {str(weight_map)[:80]}", file=str(index_path), field="weight_map")
        if not weight_map:
            raise CheckpointError(f"{index_path}: 'weight_map' maps no tensors", file=str(index_path),
                                  field="weight_map", expected="tensor -> file entries", found="{}")
        by_file: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, []).append(name)
        opened = {}
        for fname, names in by_file.items():
            path = self.directory / fname
            if not path.is_file():
                raise CheckpointError(f"{index_path}: tensor {names[0]!r} (and {len(names) - 1} more) is mapped to "
                                      f"{fname!r}, which does not exist in {self.directory}")
            opened[fname] = f = self._open(path)
            missing = [n for n in names if n not in f]
            if missing:
                raise CheckpointError(f"{index_path}: tensor {missing[0]!r} is mapped to {fname!r}, which does not "
                                      f"contain it ({len(missing)} such tensors)")
        return list(opened.values())

    # ------------------------------------------------------------------ access
    def names(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def __len__(self) -> int:
        return len(self._file_of)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._file_of[name].info(name)
        except KeyError:
            raise KeyError(f"checkpoint {self.directory}: no tensor named {name!r}") from None

    def get(self, name: str) -> np.ndarray:
        """Read one tensor (a new numpy array of its stored dtype; F8 via ml_dtypes)."""
        if name not in self._file_of:
            raise KeyError(f"checkpoint {self.directory}: no tensor named {name!r}")
        return self._file_of[name].get(name)

    def get_slice(self, name: str, index: tuple) -> np.ndarray:
        """Read ``tensor[index]`` (a tuple of slices) without reading the rest of the tensor."""
        if name not in self._file_of:
            raise KeyError(f"checkpoint {self.directory}: no tensor named {name!r}")
        return self._file_of[name].get_slice(name, tuple(index))

    def file_of(self, name: str) -> Path:
        """The safetensors file holding a tensor."""
        self.info(name)
        return Path(self._file_of[name].path)

    def nbytes(self, name: str) -> int:
        i = self.info(name)
        return i.end - i.begin

    def tensors_of(self, module_path: str) -> list[str]:
        """The tensors directly under a module, e.g. ``...q_proj`` -> ``[...q_proj.weight, ...q_proj.weight_scale]``."""
        return list(self._modules.get(module_path, []))

    def modules(self) -> list[str]:
        return list(self._modules)

    @functools.cached_property
    def config(self) -> dict:
        """``config.json`` as a dict ({} when absent), parsed once on first use."""
        return read_config_json(self.directory, required=False)

    def weight_shape(self, module_path: str) -> tuple[int, ...]:
        """The stored shape of ``<module_path>.weight`` (KeyError naming it when absent)."""
        return self.info(f"{module_path}.weight").shape

    def weight_layer_paths(self) -> list[str]:
        """Module paths of the 2-D ``.weight`` tensors (linears, embeddings, lm_head), in checkpoint order."""
        return [n[: -len(".weight")] for n in self.names() if n.endswith(".weight") and len(self.info(n).shape) == 2]

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.directory)!r}, {len(self)} tensors in {len(self.files)} file(s))"


class CheckpointSlice(CheckpointReader):
    """A view of a checkpoint in which some tensors are replaced by a slice of themselves: ``index_of(name,
    shape)`` returns a tuple of slices (``info`` gives the sliced shape, ``get`` reads only that slice from the
    file) or None (the whole tensor). Used to load one device's part of a layer (tensor parallelism).

    >>> from quark_jax.data import bundled_checkpoint
    >>> r = open_checkpoint(bundled_checkpoint("tiny-llama-fp8"))
    >>> v = CheckpointSlice(r, lambda name, shape: (slice(0, 2),) if name == "model.norm.weight" else None)
    >>> v.info("model.norm.weight").shape, v.get("model.norm.weight").shape, v.info("lm_head.weight").shape
    ((2,), (2,), (256, 64))
    """

    def __init__(self, base: CheckpointReader, index_of):
        self.__dict__.update(directory=base.directory, files=base.files, _file_of=base._file_of,
                             _modules=base._modules, config=base.config)
        self._base, self._index_of = base, index_of

    def _index(self, name: str):
        return self._index_of(name, tuple(self._base.info(name).shape))

    def info(self, name: str) -> TensorInfo:
        info = self._base.info(name)
        idx = self._index(name)
        if idx is None:
            return info
        shape = tuple(len(range(*s.indices(d))) for s, d in zip(idx, info.shape)) + tuple(info.shape[len(idx):])
        return dataclasses.replace(info, shape=shape)

    def get(self, name: str) -> np.ndarray:
        idx = self._index(name)
        return self._base.get(name) if idx is None else self._base.get_slice(name, idx)


def open_checkpoint(directory: str | Path, *, config: dict | None = None) -> CheckpointReader:
    """Open a checkpoint folder (see :class:`CheckpointReader`); ``config``: its config.json when already parsed."""
    return directory if isinstance(directory, CheckpointReader) else CheckpointReader(directory, config=config)
