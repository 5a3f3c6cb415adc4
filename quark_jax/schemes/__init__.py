"""Quark schemes (mirrors vLLM's ``quark/schemes``): one lifecycle, ``create_weights`` ->
load -> ``process_weights_after_loading`` -> ``apply_weights``; see :mod:`quark_jax.schemes.base`."""

from quark_jax.schemes.base import ParamSpec, QuarkScheme, apply_params, dequantize_params, process_params
from quark_jax.schemes.unquantized import UnquantizedLinearMethod
from quark_jax.schemes.w4_mxfp4 import QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4
from quark_jax.schemes.w8a8_fp8 import QuarkW8A8Fp8
from quark_jax.schemes.w8a8_int8 import QuarkW8A8Int8

__all__ = [
    "ParamSpec",
    "QuarkScheme",
    "QuarkW8A8Fp8",
    "QuarkW8A8Int8",
    "QuarkW4A4MXFP4",
    "QuarkW4A8MXFP4Fp8",
    "QuarkW4A16MXFP4",
    "UnquantizedLinearMethod",
    "process_params",
    "apply_params",
    "dequantize_params",
]
