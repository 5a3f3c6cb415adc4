"""Exception types of quark_jax; every message names the layer / tensor / field, what was expected and what was found.

>>> issubclass(UnsupportedSchemeError, QuarkConfigError) and issubclass(CheckpointError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["QuarkConfigError", "UnsupportedSchemeError", "CheckpointError"]


class QuarkConfigError(ValueError):
    """A ``quantization_config`` that is malformed or inconsistent (bad quant_method, missing export, fused shards
    whose configs disagree, ...)."""


class UnsupportedSchemeError(QuarkConfigError):
    """A well-formed layer config that no scheme implements (quoted weight / input specs in the message)."""


class CheckpointError(ValueError):
    """A checkpoint whose files or tensors do not match what the config and schemes expect (missing, unexpected,
    wrong dtype or shape, truncated or missing files)."""
