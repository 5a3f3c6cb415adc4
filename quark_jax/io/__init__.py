"""Files at the edge: raw safetensors reading (no framework, every dtype Quark exports), a checkpoint folder of
them (single file or sharded with an index; :class:`CheckpointReader`) and checkpoint-name
resolution (local directory, bundled name, Hugging Face Hub id)."""

from quark_jax.io.checkpoint_files import (INDEX_FILE, SINGLE_FILE, CheckpointReader, CheckpointSlice,
                                          open_checkpoint)
from quark_jax.io.config_json import read_config_json
from quark_jax.io.hub import resolve_checkpoint
from quark_jax.io.safetensors_file import SAFETENSORS_DTYPES, SafetensorsFile, SafetensorsFormatError, TensorInfo

__all__ = ["SafetensorsFile", "TensorInfo", "SafetensorsFormatError", "resolve_checkpoint", "CheckpointReader",
           "CheckpointSlice", "open_checkpoint", "SINGLE_FILE", "INDEX_FILE", "read_config_json",
           "SAFETENSORS_DTYPES"]
