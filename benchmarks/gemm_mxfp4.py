"""MXFP4 extra rows for benchmarks/bench_gemm.py (the entry's W4A4 pallas / xla-emulation / auto rows come from the
tuner): ``xla_bf16_dense`` (the dequantized weight in bf16; the baseline), the weight-only W4A16 rows
(``pallas_w4a16``, ``xla_emulation_w4a16``) at decode, the experimental Mosaic GPU decode kernel at M <= 16
(``pallas_mosaic`` W4A4 incl. its activation quantization, ``pallas_mosaic_w4a16``, both with the PTX decode, and
``pallas_mosaic_jnp_decode`` W4A4 with the portable decode, ``pallas_mosaic_ws`` W4A4 warp-specialized), and ``jax.nn.scaled_matmul``
on pre-quantized float4_e2m1fn operands with float8_e8m0fnu scales (its activation quantization is not timed).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from gemm_int8 import bf16_case

from quark_jax import quant
from quark_jax.kernels import mxfp4_mm
from quark_jax.kernels.mxfp4_mm import pallas_mosaic_gpu

SCALED_MATMUL = True  # time jax.nn.scaled_matmul (benchmarks/tune_mxfp4.py turns it off to save device time)


def to_scaled_matmul_operands(packed, scales):
    """(values float4_e2m1fn [1, R, K], scales float8_e8m0fnu [1, R, K/32]) from packed bytes and E8M0 bytes."""
    ones = jnp.full(scales.shape, 127, jnp.uint8)
    vals = quant.dequantize_mxfp4(packed, ones, jnp.float32).astype(jnp.float4_e2m1fn)
    return vals[None], lax.bitcast_convert_type(scales, jnp.float8_e8m0fnu)[None]


def cases(point, sets, Case):
    m, k, n = point.m, point.k, point.n
    flops, nbytes = 2.0 * m * n * k, n * k // 2 + n * k // 32 + 2 * m * k + 2 * m * n
    out = [bf16_case(point, sets, Case, name="xla_bf16_dense")]
    if m <= 16:
        for impl, name in (("pallas", "pallas_w4a16"), ("xla", "xla_emulation_w4a16")):
            fn = jax.jit(functools.partial(mxfp4_mm, quantize_input=False, impl=impl))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
        for q, name in ((True, "pallas_mosaic"), (False, "pallas_mosaic_w4a16")):
            fn = jax.jit(functools.partial(mxfp4_mm, quantize_input=q, impl="mosaic"))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
        cfg = dataclasses.replace(pallas_mosaic_gpu.default_config(k, n), decode="jnp")
        fn = jax.jit(functools.partial(pallas_mosaic_gpu.mxfp4_mm_mosaic, quantize_input=True, config=cfg))
        out.append(Case(name="pallas_mosaic_jnp_decode", fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
        cfg = pallas_mosaic_gpu.default_config(k, n, warp_specialized=True)
        fn = jax.jit(functools.partial(pallas_mosaic_gpu.mxfp4_mm_mosaic, quantize_input=True, config=cfg))
        out.append(Case(name="pallas_mosaic_ws", fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
    if not SCALED_MATMUL:
        return out
    try:
        sm = [(*to_scaled_matmul_operands(*jax.jit(quant.quantize_mxfp4)(x)), *to_scaled_matmul_operands(p, s))
              for x, p, s in sets]
        fn = jax.jit(lambda xv, xs, wv, ws: jax.nn.scaled_matmul(xv, wv, xs, ws, preferred_element_type=jnp.bfloat16))
        out.append(Case(name="jax_nn_scaled_matmul", fn=fn, arg_sets=sm, flops=flops, bytes=nbytes))
    except Exception as e:  # older jax or a backend without it: reported, not hidden
        print(f"[mxfp4 m={m} k={k} n={n}] jax.nn.scaled_matmul unavailable: {e!r}", flush=True)
    return out
