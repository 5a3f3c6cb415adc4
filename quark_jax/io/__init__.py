"""File formats at the edge: raw safetensors reading (no framework, every dtype Quark exports)."""

from quark_jax.io.safetensors_file import SafetensorsFile, TensorInfo, SafetensorsFormatError

__all__ = ["SafetensorsFile", "TensorInfo", "SafetensorsFormatError"]
