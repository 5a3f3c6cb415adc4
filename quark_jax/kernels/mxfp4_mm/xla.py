"""XLA reference for the MXFP4 GEMM: vLLM's emulation (qdq the input, dequantize the weight, f32-accumulated dot).

This reference materializes the dequantized weight; the Pallas kernel never does.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax.quant import dequantize_mxfp4, dot_precision, qdq_mxfp4


def mxfp4_mm_xla(x, w_packed, w_scales, bias=None, *, quantize_input=True, out_dtype=None):
    """``out(linear(qdq_mxfp4(x) or x, dequantize_mxfp4(w)) + bias)`` with f32 accumulation."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    xq = qdq_mxfp4(x) if quantize_input else x
    w = dequantize_mxfp4(w_packed, w_scales, x.dtype)
    acc = lax.dot_general(xq, w, (((1,), (1,)), ((), ())), precision=dot_precision(xq, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)
