"""MXFP4 cases for benchmarks/bench_gemm.py: the Pallas kernel (W4A4 and weight-only W4A16) against XLA bf16 dense,
the XLA emulation (vLLM's: qdq x, dequantize the whole weight, f32-accumulated dot) and ``jax.nn.scaled_matmul``.

Weights are [N, K/2] uint8 + [N, K/32] E8M0 bytes: 4.25 bits (0.53125 bytes) per parameter in HBM, against 16 bits
for bf16. Inputs rotate over enough copies to exceed the 50 MB L2. ``jax.nn.scaled_matmul`` gets pre-quantized
float4_e2m1fn operands and float8_e8m0fnu scales (its activation quantization is not timed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bench_gemm import Case
from timing import rotation_count

from quark_jax import quant
from quark_jax.kernels.mxfp4_mm.pallas_triton import mxfp4_mm_pallas
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla

BYTES_PER_PARAM = 0.5 + 1 / 32  # packed nibbles + one E8M0 byte per 32 elements = 4.25 bits


def weight_bytes(k: int, n: int) -> int:
    return n * k // 2 + n * k // 32


def make_weights(rng, k: int, n: int):
    """Packed MXFP4 weights of a Gaussian [N, K] matrix (scale bytes around 120-125, like real checkpoints)."""
    w = jnp.asarray(rng.standard_normal((n, k), np.float32) * 0.02)
    return quant.quantize_mxfp4(w)


def to_scaled_matmul_operands(packed, scales):
    """(values float4_e2m1fn [1, R, K], scales float8_e8m0fnu [1, R, K/32]) from packed bytes and E8M0 bytes."""
    ones = jnp.full(scales.shape, 127, jnp.uint8)
    vals = quant.dequantize_mxfp4(packed, ones, jnp.float32).astype(jnp.float4_e2m1fn)
    return vals[None], lax.bitcast_convert_type(scales, jnp.float8_e8m0fnu)[None]


def _dense(x, w):
    return lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32).astype(x.dtype)


def _scaled_matmul(xv, xs, wv, ws):
    return jax.nn.scaled_matmul(xv, wv, xs, ws, preferred_element_type=jnp.bfloat16)


def cases(m: int, k: int, n: int, *, seed: int = 0, pallas_config=None):
    rng = np.random.default_rng(seed)
    wb = weight_bytes(k, n)
    sets = rotation_count(wb)
    xs = [jnp.asarray(rng.standard_normal((m, k), np.float32), jnp.bfloat16) for _ in range(sets)]
    ws = [make_weights(rng, k, n) for _ in range(sets)]
    dense_sets = rotation_count(2 * n * k)
    wd = [quant.dequantize_mxfp4(p, s, jnp.bfloat16) for p, s in ws[:dense_sets]]
    flops = 2.0 * m * n * k
    act = 2 * m * k + 2 * m * n
    mx_args = [(x, p, s) for x, (p, s) in zip(xs, ws)]
    out = [
        Case("xla_bf16_dense", jax.jit(_dense), [(xs[i % sets], wd[i]) for i in range(dense_sets)], flops,
             2 * n * k + act, baseline=True),
        Case("xla_emulation_w4a4", jax.jit(functools.partial(mxfp4_mm_xla, quantize_input=True)), mx_args, flops,
             wb + act, auto_candidate="xla"),
        Case("pallas_w4a4", jax.jit(functools.partial(mxfp4_mm_pallas, quantize_input=True,
                                                      config=pallas_config)), mx_args, flops, wb + act,
             auto_candidate="pallas"),
        Case("xla_emulation_w4a16", jax.jit(functools.partial(mxfp4_mm_xla, quantize_input=False)), mx_args, flops,
             wb + act),
        Case("pallas_w4a16", jax.jit(functools.partial(mxfp4_mm_pallas, quantize_input=False,
                                                       config=pallas_config)), mx_args, flops, wb + act),
    ]
    try:
        sm_args = []
        for x, (p, s) in zip(xs, ws):
            xp, xsc = quant.quantize_mxfp4(x)
            sm_args.append((*to_scaled_matmul_operands(xp, xsc), *to_scaled_matmul_operands(p, s)))
        out.append(Case("jax_nn_scaled_matmul", jax.jit(_scaled_matmul), sm_args, flops, wb + act))
    except Exception as e:  # older jax or a backend without it: reported, not hidden
        print(f"[mxfp4 m={m} k={k} n={n}] jax.nn.scaled_matmul unavailable: {e!r}", flush=True)
    return out
