"""Quantizers and weight processing as jittable pure functions, bit-exact to vLLM (SPEC sections 2-3)."""

from quark_jax.quant.fp8 import fp8_saturating_cast, scaled_fp8_quant
from quark_jax.quant.int8 import scaled_int8_quant
from quark_jax.quant.division import true_divide
from quark_jax.quant.mxfp4 import (apply_e8m0_scale, dequantize_mxfp4, mxfp4_block_scale_bytes, qdq_mxfp4,
                                   quantize_mxfp4, round_to_e2m1)
from quark_jax.quant.mx import (dequantize_mx, mx_block_scale_bytes, mx_packed_width, qdq_mx, quantize_mx,
                                round_to_mx_element)
from quark_jax.quant.fp8_block import (dequantize_fp8_per_block, e8m0_ceil_bytes, expand_block_scales,
                                      per_token_group_quant_fp8, quantize_fp8_per_block)
from quark_jax.quant.int4 import dequantize_int4, dequantize_int4_nk, dequantize_int4_per_channel
from quark_jax.quant.nvfp4 import NVFP4_BLOCK_SIZE, dequantize_nvfp4, qdq_nvfp4, quantize_nvfp4
from quark_jax.quant import rounding
from quark_jax.quant.rounding import dot_precision, exact_f32, round_to
from quark_jax.quant.weights import (
    compute_azp_adj,
    convert_to_channelwise,
    normalize_e4m3fn_to_e4m3fnuz,
    reconstruct_static_azp,
    requantize_with_max_scale,
)

__all__ = [
    "scaled_fp8_quant",
    "fp8_saturating_cast",
    "scaled_int8_quant",
    "quantize_mxfp4",
    "dequantize_mxfp4",
    "qdq_mxfp4",
    "mxfp4_block_scale_bytes",
    "round_to_e2m1",
    "requantize_with_max_scale",
    "convert_to_channelwise",
    "normalize_e4m3fn_to_e4m3fnuz",
    "reconstruct_static_azp",
    "compute_azp_adj",
    "round_to",
    "exact_f32",
    "dot_precision",
    "true_divide",
    "apply_e8m0_scale",
    "quantize_mx",
    "dequantize_mx",
    "qdq_mx",
    "mx_block_scale_bytes",
    "mx_packed_width",
    "round_to_mx_element",
    "per_token_group_quant_fp8",
    "quantize_fp8_per_block",
    "dequantize_fp8_per_block",
    "expand_block_scales",
    "e8m0_ceil_bytes",
    "dequantize_int4",
    "dequantize_int4_per_channel",
    "dequantize_int4_nk",
    "NVFP4_BLOCK_SIZE",
    "quantize_nvfp4",
    "dequantize_nvfp4",
    "qdq_nvfp4",
    "rounding",
]
