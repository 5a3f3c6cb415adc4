"""Checks on the token ids a decoder is given (below llama.py and generation.py, which both use them)."""

from __future__ import annotations

import jax
import numpy as np

from quark_jax.errors import InvalidArgumentError

__all__ = ["check_token_ids"]

try:
    _Tracer = jax.core.Tracer
except AttributeError:  # pragma: no cover - newer jax without the jax.core alias
    from jax._src.core import Tracer as _Tracer


def check_token_ids(input_ids, vocab_size: int, name: str = "input_ids") -> None:
    """Raise :class:`~quark_jax.errors.InvalidArgumentError` (a ValueError) naming the first out-of-range token id
    (negative ids included; skipped for traced values: see ``checks=True`` of the model call).

    >>> check_token_ids(np.array([[1, 300]]), 256)
    Traceback (most recent call last):
    ...
    quark_jax.errors.InvalidArgumentError: input_ids: token id 300 at [0, 1] is out of range for vocab_size 256
    >>> check_token_ids(np.array([[-1, 5]]), 256)
    Traceback (most recent call last):
    ...
    quark_jax.errors.InvalidArgumentError: input_ids: token id -1 at [0, 0] is negative; token ids are 0 .. 255
    """
    if isinstance(input_ids, _Tracer):
        return
    ids = np.asarray(input_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise InvalidArgumentError(f"{name}: expected shape [batch, tokens], got {list(ids.shape)}")
    if ids.shape[1] == 0:
        raise InvalidArgumentError(f"{name}: expected at least one token, got shape {list(ids.shape)}")
    bad = np.argwhere((ids < 0) | (ids >= vocab_size))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        where = f"{name}: token id {int(ids[idx])} at [{', '.join(map(str, idx))}]"
        if ids[idx] < 0:
            raise InvalidArgumentError(f"{where} is negative; token ids are 0 .. {vocab_size - 1}")
        raise InvalidArgumentError(f"{where} is out of range for vocab_size {vocab_size}")
