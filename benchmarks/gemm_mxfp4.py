"""MXFP4 cases for benchmarks/bench_gemm.py: the Pallas kernel (W4A4 and weight-only W4A16) against XLA bf16 dense,
the XLA emulation (vLLM's: qdq x, dequantize the whole weight, f32-accumulated dot) and ``jax.nn.scaled_matmul``.

Weights are [N, K/2] uint8 + [N, K/32] E8M0 bytes: 4.25 bits (0.53125 bytes) per parameter in HBM, against 16 bits
for bf16. Every case gets as many distinct input sets as the driver batches calls into one program, so XLA cannot
merge identical calls, and the working set stays above the 50 MB L2. ``jax.nn.scaled_matmul`` gets pre-quantized float4_e2m1fn operands
and float8_e8m0fnu scales (its activation quantization is not timed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from bench_gemm import Case

from quark_jax import quant
from quark_jax.kernels.mxfp4_mm.pallas_triton import mxfp4_mm_pallas
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla

BYTES_PER_PARAM = 0.5 + 1 / 32  # packed nibbles + one E8M0 byte per 32 elements = 4.25 bits


def make_data(m, k, n, sets, seed=0):
    """``sets`` distinct inputs: x [M, K] bf16 and an MXFP4 weight (packed [N, K/2], scales [N, K/32])."""
    quantize = jax.jit(quant.quantize_mxfp4)
    xs, ws = [], []
    for i in range(sets):
        kx, kw = jax.random.split(jax.random.key(seed * 1000 + i))
        xs.append(jax.random.normal(kx, (m, k), jnp.bfloat16))
        ws.append(quantize(jax.random.normal(kw, (n, k), jnp.float32) * 0.02))
    return xs, ws


def weight_bytes(k: int, n: int) -> int:
    return n * k // 2 + n * k // 32


def to_scaled_matmul_operands(packed, scales):
    """(values float4_e2m1fn [1, R, K], scales float8_e8m0fnu [1, R, K/32]) from packed bytes and E8M0 bytes."""
    ones = jnp.full(scales.shape, 127, jnp.uint8)
    vals = quant.dequantize_mxfp4(packed, ones, jnp.float32).astype(jnp.float4_e2m1fn)
    return vals[None], lax.bitcast_convert_type(scales, jnp.float8_e8m0fnu)[None]


def _dense(x, w):
    return lax.dot_general(x, w, (((1,), (1,)), ((), ())))  # bf16 out, f32 accumulation: one cuBLAS call


def _scaled_matmul(xv, xs, wv, ws):
    return jax.nn.scaled_matmul(xv, wv, xs, ws, preferred_element_type=jnp.bfloat16)


def _distinct_sets(nbytes: float, flops: float) -> int:
    """As many input sets as the driver's device timing batches calls (``bench_gemm.device_calls``), so that no
    two calls in one jitted program see the same inputs (XLA would merge identical calls, measuring one)."""
    from bench_gemm import device_calls

    return device_calls(Case("probe", None, [], flops, nbytes))


def cases(m: int, k: int, n: int, *, seed: int = 0, pallas_config=None, weight_only=None):
    """The MXFP4 comparison at (m, k, n); ``weight_only`` (default: m <= 16) adds the W4A16 rows."""
    wb = weight_bytes(k, n)
    flops = 2.0 * m * n * k
    act = 2 * m * k + 2 * m * n
    sets = max(_distinct_sets(wb + act, flops), _distinct_sets(2 * n * k + act, flops))
    xs, ws = make_data(m, k, n, sets, seed=seed)
    mx = [(x, p, s) for x, (p, s) in zip(xs, ws)]
    pallas = functools.partial(mxfp4_mm_pallas, config=pallas_config)
    out = [
        Case("xla_bf16_dense", jax.jit(_dense), [(x, quant.dequantize_mxfp4(p, s, jnp.bfloat16)) for x, p, s in mx],
             flops, 2 * n * k + act, baseline=True),
        Case("xla_emulation_w4a4", jax.jit(functools.partial(mxfp4_mm_xla, quantize_input=True)), mx, flops,
             wb + act, auto_candidate="xla"),
        Case("pallas_w4a4", jax.jit(functools.partial(pallas, quantize_input=True)), mx, flops, wb + act,
             auto_candidate="pallas"),
    ]
    if weight_only if weight_only is not None else m <= 16:
        out += [Case("xla_emulation_w4a16", jax.jit(functools.partial(mxfp4_mm_xla, quantize_input=False)), mx,
                     flops, wb + act),
                Case("pallas_w4a16", jax.jit(functools.partial(pallas, quantize_input=False)), mx, flops, wb + act)]
    try:
        sm = []
        for x, p, s in mx:
            xp, xsc = jax.jit(quant.quantize_mxfp4)(x)
            sm.append((*to_scaled_matmul_operands(xp, xsc), *to_scaled_matmul_operands(p, s)))
        out.append(Case("jax_nn_scaled_matmul", jax.jit(_scaled_matmul), sm, flops, wb + act))
    except Exception as e:  # older jax or a backend without it: reported, not hidden
        print(f"[mxfp4 m={m} k={k} n={n}] jax.nn.scaled_matmul unavailable: {e!r}", flush=True)
    return out
