"""MXFP4 cases for benchmarks/bench_gemm.py: the Pallas kernel (W4A4 and weight-only W4A16) against XLA bf16 dense,
the XLA emulation (vLLM's: qdq x, dequantize the whole weight, f32-accumulated dot) and ``jax.nn.scaled_matmul``.

Weights are [N, K/2] uint8 + [N, K/32] E8M0 bytes: 4.25 bits (0.53125 bytes) per parameter in HBM, against 16 bits
for bf16. Each timed call runs every case on ``n_sets`` distinct input sets inside one jit (``Case.calls``), which
also keeps the working set above the 50 MB L2. ``jax.nn.scaled_matmul`` gets pre-quantized float4_e2m1fn operands
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


def weight_bytes(k: int, n: int) -> int:
    return n * k // 2 + n * k // 32


def to_scaled_matmul_operands(packed, scales):
    """(values float4_e2m1fn [1, R, K], scales float8_e8m0fnu [1, R, K/32]) from packed bytes and E8M0 bytes."""
    ones = jnp.full(scales.shape, 127, jnp.uint8)
    vals = quant.dequantize_mxfp4(packed, ones, jnp.float32).astype(jnp.float4_e2m1fn)
    return vals[None], lax.bitcast_convert_type(scales, jnp.float8_e8m0fnu)[None]


def _dense(x, w):
    return lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32).astype(x.dtype)


def _scaled_matmul(xv, xs, wv, ws):
    return jax.nn.scaled_matmul(xv, wv, xs, ws, preferred_element_type=jnp.bfloat16)


def n_sets(m: int, k: int, n: int) -> int:
    """Distinct input sets per timed call: ~400 us of estimated bf16 device work, 1..12 (decode: 9)."""
    est = max(2.0 * m * n * k / 600e12, (n * k * 2 + 2 * m * k) / 2.5e12)
    return int(max(1, min(12, -(-400e-6 // est))))


def _looped(fn):
    """One jit running ``fn`` on each of several distinct input sets (XLA cannot merge them), so that a ~10 us
    kernel is not hidden behind host dispatch; Case.calls divides the time back to one GEMM."""
    return jax.jit(lambda sets: [fn(*s) for s in sets])


def cases(m: int, k: int, n: int, *, seed: int = 0, pallas_config=None, weight_only=None):
    """The MXFP4 comparison at (m, k, n); ``weight_only`` (default: m <= 16) adds the W4A16 rows."""
    sets = n_sets(m, k, n)
    quantize = jax.jit(quant.quantize_mxfp4)
    xs, ws = [], []
    for i in range(sets):
        kx, kw = jax.random.split(jax.random.key(seed * 1000 + i))
        xs.append(jax.random.normal(kx, (m, k), jnp.bfloat16))
        ws.append(quantize(jax.random.normal(kw, (n, k), jnp.float32) * 0.02))
    wd = [quant.dequantize_mxfp4(p, s, jnp.bfloat16) for p, s in ws]
    wb = weight_bytes(k, n)
    flops = 2.0 * m * n * k
    act = 2 * m * k + 2 * m * n
    mx = [(tuple((x, p, s) for x, (p, s) in zip(xs, ws)),)]

    def case(name, fn, args, nbytes, **kw):
        return Case(name, _looped(fn), args, flops, nbytes, calls=sets, **kw)

    pallas = functools.partial(mxfp4_mm_pallas, config=pallas_config)
    out = [
        case("xla_bf16_dense", _dense, [(tuple(zip(xs, wd)),)], 2 * n * k + act, baseline=True),
        case("xla_emulation_w4a4", functools.partial(mxfp4_mm_xla, quantize_input=True), mx, wb + act,
             auto_candidate="xla"),
        case("pallas_w4a4", functools.partial(pallas, quantize_input=True), mx, wb + act, auto_candidate="pallas"),
    ]
    if weight_only if weight_only is not None else m <= 16:
        out += [case("xla_emulation_w4a16", functools.partial(mxfp4_mm_xla, quantize_input=False), mx, wb + act),
                case("pallas_w4a16", functools.partial(pallas, quantize_input=False), mx, wb + act)]
    del wd
    try:
        sm = []
        for x, (p, s) in zip(xs, ws):
            xp, xsc = quantize(x)
            sm.append((*to_scaled_matmul_operands(xp, xsc), *to_scaled_matmul_operands(p, s)))
        out.append(case("jax_nn_scaled_matmul", _scaled_matmul, [(tuple(sm),)], wb + act))
    except Exception as e:  # older jax or a backend without it: reported, not hidden
        print(f"[mxfp4 m={m} k={k} n={n}] jax.nn.scaled_matmul unavailable: {e!r}", flush=True)
    return out
