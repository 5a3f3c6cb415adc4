"""Quark schemes (mirrors vLLM's ``quark/schemes``): one lifecycle, ``create_weights`` ->
load -> ``process_weights_after_loading`` -> ``apply_weights``; see :mod:`quark_jax.schemes.base`.

Which scheme runs a layer is decided by the registry (:mod:`quark_jax.schemes.registry`): an ordered table of
(predicate on the layer's weight / input :class:`TensorQuantSpec`, factory); a new scheme adds an entry."""

from quark_jax.schemes.base import (SCALE_DTYPES, ParamSpec, QuarkScheme, StaticInputQuant, apply_params,
                                    dequantize_params, logical_widths_of, process_params)
from quark_jax.schemes.spec import SchemeOptions, TensorQuantSpec, spec_brief
from quark_jax.schemes.nvfp4 import QuarkNVFP4
from quark_jax.schemes.ocp_mx import QuarkOCP_MX
from quark_jax.schemes.unquantized import UnquantizedLinearMethod
from quark_jax.schemes.w4a16_int4 import QuarkW4A16Int4
from quark_jax.schemes.w8a8_fp8_block import QuarkW8A8Fp8PerBlock
from quark_jax.schemes.w4_mxfp4 import QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4, qdq_fp8_static
from quark_jax.schemes.w8a8_fp8 import QuarkW8A8Fp8
from quark_jax.schemes.w8a8_int8 import QuarkW8A8Int8
from quark_jax.schemes.registry import SchemeEntry, register_scheme, scheme_registry, select_scheme

__all__ = [
    "ParamSpec",
    "QuarkScheme",
    "StaticInputQuant",
    "QuarkW8A8Fp8",
    "QuarkW8A8Int8",
    "QuarkW4A4MXFP4",
    "QuarkW4A8MXFP4Fp8",
    "QuarkW4A16MXFP4",
    "qdq_fp8_static",
    "QuarkOCP_MX",
    "QuarkW8A8Fp8PerBlock",
    "QuarkW4A16Int4",
    "QuarkNVFP4",
    "UnquantizedLinearMethod",
    "process_params",
    "apply_params",
    "dequantize_params",
    "logical_widths_of",
    "SCALE_DTYPES",
    "TensorQuantSpec",
    "spec_brief",
    "SchemeOptions",
    "SchemeEntry",
    "scheme_registry",
    "register_scheme",
    "select_scheme",
]
