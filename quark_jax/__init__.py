"""quark_jax: run AMD Quark-quantized models (W8A8 FP8, W8A8 INT8, W4A4 MXFP4) natively in JAX."""

__version__ = "0.1.0"

from quark_jax import formats, quant  # noqa: E402
from quark_jax.config import QuarkConfig  # noqa: E402
from quark_jax.errors import (CheckpointError, CheckpointNotFoundError, InvalidArgumentError,  # noqa: E402
                              QuarkConfigError, QuarkJaxError, UnsupportedModelError, UnsupportedSchemeError)

_LAZY = ("checkpoint", "config", "errors", "kernels", "nn", "schemes", "io", "models", "data", "validation",
         "value_checks", "ptq", "naming")
_FROM_NN = ("quantize_model", "load_weights", "QuarkLinear")


def __getattr__(name):
    # submodules that import flax or read files are loaded on first use
    import importlib

    if name in _LAZY:
        return importlib.import_module(f"quark_jax.{name}")
    if name == "validate_checkpoint":
        return importlib.import_module("quark_jax.validation").validate_checkpoint
    if name in _FROM_NN:
        return getattr(importlib.import_module("quark_jax.nn"), name)
    raise AttributeError(f"module 'quark_jax' has no attribute {name!r}")


__all__ = ["formats", "quant", "QuarkConfig", "QuarkJaxError", "QuarkConfigError", "UnsupportedSchemeError",
           "CheckpointError", "CheckpointNotFoundError", "UnsupportedModelError", "InvalidArgumentError",
           "checkpoint", "kernels", "nn", "schemes", "io", "models", "data", "ptq", "naming", "quantize_model",
           "load_weights",
           "QuarkLinear", "validate_checkpoint", "__version__"]
