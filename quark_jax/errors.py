"""Exception types of quark_jax; every message names the file / layer / tensor / field, what was expected and what
was found.

``QuarkJaxError`` is the one base class to catch: every problem with a checkpoint, a config or a user argument
that quark_jax detects is raised as one of its subclasses (which also subclass ``ValueError`` as before, and
``FileNotFoundError`` for a checkpoint that does not exist).

* :class:`QuarkConfigError` (:class:`UnsupportedSchemeError`): the ``quantization_config``;
* :class:`CheckpointError` (:class:`CheckpointNotFoundError`): the files and tensors of a checkpoint, and a model
  used before its weights are loaded; structured fields ``file``, ``tensor``, ``layer``, ``field``, ``expected``,
  ``found`` (None where they do not apply);
* :class:`UnsupportedModelError`: a ``config.json`` (architecture, dtype) the decoder cannot run;
* :class:`InvalidArgumentError`: a bad argument (token ids, dtypes, options);
* :class:`RuntimeCheckError`: a ``checks=True`` check inside jitted code failed (out-of-range ids, non-finite
  activations), naming the layer.

>>> issubclass(UnsupportedSchemeError, QuarkConfigError) and issubclass(CheckpointError, ValueError)
True
>>> all(issubclass(e, QuarkJaxError) for e in (QuarkConfigError, CheckpointError, UnsupportedModelError))
True
>>> e = CheckpointError("bad scale", tensor="a.weight_scale", expected="finite > 0", found="nan")
>>> e.tensor, e.found, str(e)
('a.weight_scale', 'nan', 'bad scale')
"""

from __future__ import annotations

__all__ = ["QuarkJaxError", "QuarkConfigError", "UnsupportedSchemeError", "CheckpointError",
           "CheckpointNotFoundError", "UnsupportedModelError", "InvalidArgumentError", "RuntimeCheckError"]


class QuarkJaxError(Exception):
    """Base class of every error quark_jax raises for bad input (checkpoint, config, arguments)."""


class QuarkConfigError(QuarkJaxError, ValueError):
    """A ``quantization_config`` that is malformed or inconsistent (bad quant_method, missing export, fused shards
    whose configs disagree, ...)."""


class UnsupportedSchemeError(QuarkConfigError):
    """A well-formed layer config that no scheme implements (quoted weight / input specs in the message)."""


class CheckpointError(QuarkJaxError, ValueError):
    """A checkpoint whose files or tensors do not match what the config and schemes expect (missing, unexpected,
    wrong dtype or shape, non-finite / non-positive scales, truncated or missing files).

    Keyword fields (all optional, None when they do not apply): ``file``, ``tensor``, ``layer``, ``field``,
    ``expected``, ``found``; the message says the same in words."""

    def __init__(self, message: str, *, file=None, tensor=None, layer=None, field=None, expected=None, found=None):
        super().__init__(message)
        self.file, self.tensor, self.layer, self.field = file, tensor, layer, field
        self.expected, self.found = expected, found


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory (or bundled name) that does not exist."""

    def __init__(self, message: str, **fields):
        CheckpointError.__init__(self, message, **fields)


class UnsupportedModelError(QuarkJaxError, ValueError):
    """A ``config.json`` this decoder cannot run (architecture, activation, RoPE type, dtype, ...)."""


class InvalidArgumentError(QuarkJaxError, ValueError):
    """An argument quark_jax cannot use (out-of-range token ids, an unsupported dtype, an unknown option)."""


class RuntimeCheckError(QuarkJaxError, ValueError):
    """A check traced with ``checks=True`` (jax.experimental.checkify) failed inside jitted code: an out-of-range
    token id or non-finite activations, naming the layer where it was first seen."""
