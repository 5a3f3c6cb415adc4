"""quark_jax: run AMD Quark-quantized models (W8A8 FP8, W8A8 INT8, W4A4 MXFP4) natively in JAX."""

__version__ = "0.1.0"

from quark_jax import formats, quant  # noqa: E402

__all__ = ["formats", "quant", "__version__"]
