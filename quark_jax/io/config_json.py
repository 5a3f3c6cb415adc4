"""Reading a checkpoint's ``config.json``: one function, so every loader reports a missing or broken file alike."""

from __future__ import annotations

import json
import os
from pathlib import Path

from quark_jax.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["read_config_json"]


def read_config_json(directory: str | os.PathLike, *, required: bool = True) -> dict:
    """``directory/config.json`` as a dict; ``{}`` when absent and not ``required``.

    Raises :class:`~quark_jax.errors.CheckpointNotFoundError` when it is required and absent, and
    :class:`~quark_jax.errors.CheckpointError` naming the file when it is not valid JSON or not a JSON object.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "config.json").write_text("[1, 2]")
    >>> read_config_json(d)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    quark_jax.errors.CheckpointError: .../config.json: expected a JSON object, found a list
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        if not required:
            return {}
        raise CheckpointNotFoundError(f"checkpoint {Path(directory)}: no config.json in the directory", file=str(path))
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})", file=str(path), expected="JSON", found=str(e)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {type(data).__name__}", file=str(path),
                              expected="a JSON object", found=type(data).__name__)
    return data
