"""Flax layers running Quark schemes and model surgery.

* :class:`QuarkLinear` (and its :class:`QuarkParam` variable type): an NNX linear layer holding a scheme.
* :func:`quantize_model`: swap the ``nnx.Linear`` layers of any NNX model for ``QuarkLinear`` per a config.
* :func:`load_weights`: fill any NNX model (float or quantized layers) from a checkpoint by module path.
* :class:`FP8KVCacheScales` / :class:`KVScale`: the interface a module with an FP8 KV cache implements, so that
  ``quantize_model`` enables it and ``load_weights`` fills its scales without nn knowing the model.
* :class:`PartitionRules` (:mod:`quark_jax.nn.parallel`): tensor parallelism over a mesh ("data", "model") as
  data; ``load_weights(..., mesh=)`` places each variable with its sharding and Quark layers run per shard.
* :func:`warm_decode_kernels`: compile the Mosaic GPU decode kernels of loaded layers ahead, in parallel
  (``load_weights`` and ``generate`` call it; :mod:`quark_jax.nn.warmup`).
* :class:`QuarkDense`: the Linen counterpart (a drop-in for ``nn.Dense`` that resolves its scheme by path).
"""

from quark_jax.nn.experts import EXPERT_SCALE_MODES, QuarkExperts
from quark_jax.nn.kv_scales import FP8KVCacheScales, KVScale
from quark_jax.nn.linear import InputCodes, QuarkLinear, QuarkParam, TransformedInput, checkpoint_dtype
from quark_jax.nn.load import load_weights, module_path
from quark_jax.nn.linen import QuarkDense, linen_module_path
from quark_jax.nn.parallel import DEFAULT_RULES, PartitionRules, ShardLayout, kv_cache_sharding
from quark_jax.nn.substitute import as_quark_config, quantize_model, set_attr_at
from quark_jax.nn import warmup
from quark_jax.nn.warmup import decode_kernel_warmups, warm_decode_kernels

__all__ = ["QuarkLinear", "InputCodes", "TransformedInput", "QuarkParam", "checkpoint_dtype", "load_weights", "quantize_model", "module_path",
           "QuarkDense", "linen_module_path", "FP8KVCacheScales", "KVScale",
           "set_attr_at", "as_quark_config", "QuarkExperts", "EXPERT_SCALE_MODES", "PartitionRules", "DEFAULT_RULES", "ShardLayout", "kv_cache_sharding",
           "decode_kernel_warmups", "warm_decode_kernels", "warmup"]
