"""Flax NNX modules running Quark schemes: :class:`QuarkLinear` (and its :class:`QuarkParam` variable type)."""

from quark_jax.nn.linear import QuarkLinear, QuarkParam, checkpoint_dtype

__all__ = ["QuarkLinear", "QuarkParam", "checkpoint_dtype"]
