"""FP8 W8A8 cases for benchmarks/bench_gemm.py: ``cases(m, k, n)`` -> list of ``Case``.

All with per-token x per-channel scales and a bf16 bias, bf16 output, weights [N, K] rotated over enough copies
to defeat L2:
- ``pallas``: ``fp8_scaled_mm(impl="pallas")`` (the config table's pick for this device and shape);
- ``xla_fp8``: ``fp8_scaled_mm(impl="xla")`` (cuBLASLt FP8 GEMM + XLA's scaling / bias pass);
- ``xla_bf16``: bf16 ``dot_general`` of the same shape, no scales (the baseline of the ratios);
- ``torch_scaled_mm_rowwise``: ``torch._scaled_mm`` with [M, 1] x [1, N] f32 scales and the bias, on the same card
  (skipped where torch with CUDA is absent).
"""

from __future__ import annotations

import functools

from bench_gemm import Case
from timing import rotation_count


def _jax_cases(m, k, n):
    import jax
    import jax.numpy as jnp
    from jax import lax

    from quark_jax import kernels, quant

    key = jax.random.PRNGKey(m * 7 + k * 3 + n)
    kx, kw, ks, kb = jax.random.split(key, 4)
    xq, xs = quant.scaled_fp8_quant(jax.random.normal(kx, (m, k), jnp.float32) * 2.0, per_token=True)
    ws = jax.random.uniform(ks, (n,), jnp.float32, 1e-3, 1e-2)
    b = jax.random.normal(kb, (n,), jnp.float32).astype(jnp.bfloat16)
    copies = rotation_count(n * k)
    wqs = [jnp.clip(jax.random.normal(jax.random.fold_in(kw, i), (n, k), jnp.float32) * 100.0, -448, 448)
           .astype(jnp.float8_e4m3fn) for i in range(copies)]
    fp8_sets = [(xq, w, xs, ws, b) for w in wqs]
    flops = 2.0 * m * n * k
    fp8_bytes = m * k + n * k + 2 * m * n + 4 * (m + n) + 2 * n
    bf16_bytes = 2 * (m * k + n * k) + 2 * m * n

    def entry(impl):
        return jax.jit(functools.partial(kernels.fp8_scaled_mm, out_dtype=jnp.bfloat16, impl=impl))

    bf_copies = rotation_count(2 * n * k)
    bf_sets = [(xq.astype(jnp.bfloat16), wqs[i % copies].astype(jnp.bfloat16)) for i in range(bf_copies)]
    bf16 = jax.jit(lambda a, w: lax.dot_general(a, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.bfloat16))
    return [
        Case("pallas", entry("pallas"), fp8_sets, flops, fp8_bytes, auto_candidate="pallas"),
        Case("xla_fp8", entry("xla"), fp8_sets, flops, fp8_bytes, auto_candidate="xla"),
        Case("xla_bf16", bf16, bf_sets, flops, bf16_bytes, baseline=True),
    ]


def _torch_case(m, k, n):
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    g = torch.Generator(device="cuda").manual_seed(m + k + n)
    x = (torch.randn(m, k, device="cuda", generator=g) * 2).clamp(-448, 448).to(torch.float8_e4m3fn)
    copies = rotation_count(n * k)
    ws = [(torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
          for _ in range(copies)]
    sa = torch.rand(m, 1, device="cuda", generator=g) * 0.01 + 1e-3
    sb = torch.rand(1, n, device="cuda", generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)

    def mm(a, w, sa, sb, bias):  # w [N, K] row-major -> its transpose is the column-major [K, N] _scaled_mm wants
        return torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)

    name = "torch_scaled_mm_rowwise"
    sets = [(x, w, sa, sb, bias) for w in ws]
    try:
        mm(*sets[0])
    except Exception:  # some builds refuse a bias with rowwise scales: time without it, and say so
        sets = [(x, w, sa, sb, None) for w in ws]
        name += "_nobias"
    return [Case(name, mm, sets, 2.0 * m * n * k, m * k + n * k + 2 * m * n, framework="torch")]


def cases(m, k, n):
    return _jax_cases(m, k, n) + _torch_case(m, k, n)
