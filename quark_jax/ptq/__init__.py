"""Post-training quantization in JAX: calibrate a float model with Quark's observers and write the Quark
checkpoint amd-quark would export (``quantize_checkpoint``), or quantize an NNX model in memory (``quantize``).

>>> from quark_jax.ptq import PRESETS
>>> PRESETS
('fp8', 'ptpc_fp8', 'int8', 'mxfp4', 'mxfp4_fp8', 'mxfp4_weight_only')
"""

from quark_jax.ptq.calibrate import calibrate
from quark_jax.ptq.export import save_sharded, write_safetensors
from quark_jax.ptq.presets import PRESETS, complete_config, preset_config
from quark_jax.ptq.quantize import quantize, quantize_checkpoint, quantize_tensors, resolve_quant_config

__all__ = ["quantize", "quantize_checkpoint", "quantize_tensors", "calibrate", "PRESETS", "preset_config",
           "complete_config", "resolve_quant_config", "save_sharded", "write_safetensors"]
