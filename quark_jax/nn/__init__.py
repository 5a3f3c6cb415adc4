"""Flax layers and model surgery: loading checkpoints into any nnx model by module path."""

from quark_jax.nn.checkpoint_files import CheckpointTensors
from quark_jax.nn.load import CheckpointMismatchError, load_weights

__all__ = ["load_weights", "CheckpointMismatchError", "CheckpointTensors"]
