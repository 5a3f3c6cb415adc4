"""Block-scaled FP8 (weights [128, 128], activations per token and group of 128) extra rows for
benchmarks/bench_gemm.py: ``xla_bf16`` (the baseline) and the per-tensor FP8 GEMM of the same shape
(``fp8_per_tensor_auto``: ``fp8_scaled_mm`` with scalar scales as ``auto`` runs it; ``fp8_per_tensor_xla``:
cuBLASLt), the time the block kernel is held to (within 0.9x at prefill); at prefill the old native default
(``pallas_native_w8``, f16 mma.sync) and variants of the FP8 wgmma default (``pallas``: 128x128, 8 warps, 3
stages, promotion once per group, prefetched scales): ``_lag`` (the rescale one group late, overlapping the next
wgmma), ``_m64_w4`` (64-row tiles, one warpgroup, 2-3 CTAs per SM), ``_n256_sub2/4`` and ``_m256_sub2``
(256-wide tiles as 2 or 4 column slices: less L2 traffic per MAC), ``_s4`` (4 stages), ``_g16`` (16 row blocks
per column strip). ``FP8BLOCK_ROWS=a,b`` keeps only those rows (benchmarks/NOTES.md "FP8 per-block on FP8 wgmma").
"""

from __future__ import annotations

import functools

from gemm_int4 import dense_bf16_case


def cases(point, sets, Case):
    import jax
    import jax.numpy as jnp

    from quark_jax import kernels

    m, k, n = point.m, point.k, point.n
    out = [dense_bf16_case(point, sets, Case)]
    one = jnp.float32(1.0)
    psets = [(s[0], s[1], one, one) for s in sets]
    for impl in (("auto", "xla") if m <= 16 else ("xla",)):  # prefill: auto is XLA (the H200 table)
        fn = jax.jit(functools.partial(kernels.fp8_scaled_mm, out_dtype=jnp.bfloat16, impl=impl))
        out.append(Case(name=f"fp8_per_tensor_{impl}", fn=fn, arg_sets=psets, flops=2.0 * m * n * k,
                        bytes=m * k + n * k + 2 * m * n))
    if m >= 256:  # prefill: the old native default and the FP8 wgmma candidates (`pallas` is the wgmma default)
        import os

        from quark_jax.kernels.fp8_block_mm import pallas_triton

        only = {r for r in os.environ.get("FP8BLOCK_ROWS", "").split(",") if r}  # a subset of the rows below
        native = pallas_triton.Config(block_m=128, block_n=128, num_warps=8, num_stages=4)  # the old default
        rows = [("pallas_native_w8", native)] + [(f"pallas_{key}", c) for key, c in pallas_triton.CANDIDATES.items()]
        for name, cfg in rows:
            if only and name not in only:
                continue
            fn = jax.jit(functools.partial(pallas_triton.fp8_block_mm_pallas, block=(128, 128),
                                           out_dtype=jnp.bfloat16, config=cfg))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=2.0 * m * n * k, bytes=m * k + n * k + 2 * m * n))
    return out
