"""The tensors of a checkpoint directory: one ``model.safetensors``, a sharded set with
``model.safetensors.index.json``, or any ``*.safetensors`` files in the directory. Lazy: headers are read when the
directory is opened, tensor data only by :meth:`CheckpointTensors.get`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from quark_jax.io import SafetensorsFile, TensorInfo

__all__ = ["CheckpointTensors"]

INDEX_FILE = "model.safetensors.index.json"


class CheckpointTensors:
    """Name -> tensor over every safetensors file of a checkpoint directory.

    >>> import tempfile
    >>> from safetensors.numpy import save_file
    >>> d = tempfile.mkdtemp()
    >>> save_file({"a.weight": np.ones((2, 3), np.float32)}, d + "/model.safetensors")
    >>> c = CheckpointTensors(d)
    >>> c.names(), c.shape("a.weight"), c.get("a.weight").sum()
    (['a.weight'], (2, 3), np.float32(6.0))
    """

    def __init__(self, checkpoint_dir: str | os.PathLike):
        self.dir = Path(checkpoint_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"checkpoint {self.dir}: not a directory")
        index = self.dir / INDEX_FILE
        files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: expected a 'weight_map' object")
            for name, fname in weight_map.items():
                if fname not in files:
                    path = self.dir / fname
                    if not path.is_file():
                        raise FileNotFoundError(f"{index}: tensor {name} is in {fname}, which does not exist")
                    files[fname] = SafetensorsFile(path)
                if name not in files[fname]:
                    raise ValueError(f"{index}: tensor {name} is listed in {fname}, which does not hold it")
                self._where[name] = files[fname]
        else:
            paths = sorted(self.dir.glob("*.safetensors"))
            if not paths:
                raise FileNotFoundError(f"checkpoint {self.dir}: no *.safetensors file and no {INDEX_FILE}")
            for path in paths:
                f = SafetensorsFile(path)
                for name in f.names():
                    if name in self._where:
                        raise ValueError(f"checkpoint {self.dir}: tensor {name} is in both "
                                         f"{Path(self._where[name].path).name} and {path.name}")
                    self._where[name] = f

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def info(self, name: str) -> TensorInfo:
        try:
            return self._where[name].info(name)
        except KeyError:
            raise KeyError(f"checkpoint {self.dir}: no tensor named {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> np.dtype:
        return self.info(name).dtype

    def nbytes(self, name: str) -> int:
        info = self.info(name)
        return info.end - info.begin

    def get(self, name: str) -> np.ndarray:
        self.info(name)
        return self._where[name].get(name)
