"""Small checkpoints shipped with the package: a tiny random Llama quantized by amd-quark 0.13 (``BUNDLED``), and
the float model they were quantized from (``FLOAT_CHECKPOINT``, for measuring quantization error)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent

BUNDLED = {
    "tiny-llama-mxfp4": DATA_DIR / "tiny_llama_w_mxfp4_a_mxfp4",
    "tiny-llama-fp8": DATA_DIR / "tiny_llama_w_fp8_a_fp8_pertensor_static",
}
DEFAULT_CHECKPOINT = "tiny-llama-mxfp4"
FLOAT_CHECKPOINT = DATA_DIR / "tiny_llama_float"
"""The unquantized float32 tiny Llama (HF names) behind every bundled Quark checkpoint."""


def bundled_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Directory of a bundled checkpoint (``config.json`` + ``model.safetensors``)."""
    try:
        return BUNDLED[name]
    except KeyError:
        raise ValueError(f"name: no bundled checkpoint {name!r}; choose one of {sorted(BUNDLED)}") from None


def calibration_ids():
    """The token ids [4, 16] (int64) amd-quark 0.13 calibrated the bundled checkpoints on (in batches of 2), for
    :func:`quark_jax.ptq.quantize_checkpoint` on ``FLOAT_CHECKPOINT``.

    >>> calibration_ids().shape
    (4, 16)
    """
    import json

    import numpy as np

    return np.asarray(json.loads((FLOAT_CHECKPOINT / "calibration_ids.json").read_text())["input_ids"], np.int64)
