"""XLA reference for the MXFP6 weight GEMM: vLLM's OCP MX emulation (dequantize the weight to x's dtype, one
f32-accumulated dot). This reference materializes the dequantized weight; the Pallas kernel never does."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax.quant import dequantize_mx, dot_precision


def mxfp6_mm_xla(x, w_packed, w_scales, bias=None, *, element: str = "fp6_e2m3", out_dtype=None):
    """``out(linear(x, dequantize_mx(w_packed, w_scales, element) in x's dtype) + bias)``, f32 accumulation.

    >>> from quark_jax import quant
    >>> w, s = quant.quantize_mx(jnp.full((16, 32), 0.5), "fp6_e2m3")
    >>> mxfp6_mm_xla(jnp.ones((1, 32)), w, s)[0, :2].tolist()
    [16.0, 16.0]
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    w = dequantize_mx(w_packed, w_scales, element, x.dtype)
    acc = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=dot_precision(x, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + bias.astype(jnp.float32)
    return acc.astype(out_dtype)
