"""Reference decoders (Llama family) in flax.nnx that load HF checkpoints, float or Quark, and generate.

>>> from quark_jax.models import from_pretrained          # doctest: +SKIP
>>> model = from_pretrained("path/to/checkpoint")          # doctest: +SKIP
>>> model.generate(jnp.array([[1, 5, 9]]), max_new_tokens=8)  # doctest: +SKIP
"""

from quark_jax.models.config import ModelConfig, RopeConfig, UnsupportedModelError
from quark_jax.models.generation import (TRACE_COUNTS, DeviceMemoryError, GenerationStats, generate,
                                        generate_stream)
from quark_jax.models.kv_cache import KVCache
from quark_jax.models.inputs import check_token_ids
from quark_jax.models.llama import LlamaForCausalLM
from quark_jax.models.loading import from_pretrained
from quark_jax.models.moe import MoEBlock, moe_block_name
from quark_jax.models.text import generate_text, prompt_ids, stream_text
from quark_jax.models.tokenizer import StreamDecoder, Tokenizer, split_at_stop

load = from_pretrained  # the name docs/DESIGN.md uses

__all__ = ["from_pretrained", "load", "LlamaForCausalLM", "ModelConfig", "RopeConfig", "UnsupportedModelError", "KVCache",
           "generate", "generate_stream", "GenerationStats", "TRACE_COUNTS", "check_token_ids",
           "DeviceMemoryError", "Tokenizer", "StreamDecoder", "generate_text", "stream_text", "prompt_ids",
           "split_at_stop", "MoEBlock", "moe_block_name"]
