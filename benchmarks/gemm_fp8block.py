"""Block-scaled FP8 (weights [128, 128], activations per token and group of 128) extra rows for
benchmarks/bench_gemm.py: ``xla_bf16`` (the baseline) and the per-tensor FP8 GEMM of the same shape
(``fp8_per_tensor_auto``: ``fp8_scaled_mm`` with scalar scales as ``auto`` runs it; ``fp8_per_tensor_xla``:
cuBLASLt), the time the block kernel is held to (within 0.9x at prefill); at prefill two other Pallas tilings and
the FP8 wgmma variants (``Config(mma="wgmma")``, ``pallas_wgmma*``: each 128-K group's dot on Hopper FP8 wgmma,
f32 promotion every 32 K elements, or once per 128-element group with ``_p128``; 8 warps; ``_pf``: the scales
loaded one group ahead, ``Config(prefetch=True)``; experimental, benchmarks/NOTES.md "FP8 per-block on FP8 wgmma").
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
    if m >= 256:  # other prefill tilings of the Pallas kernel (to pick its defaults) and its FP8 wgmma variants
        from quark_jax.kernels.fp8_block_mm import pallas_triton

        W = functools.partial(pallas_triton.Config, num_warps=8, mma="wgmma")
        for name, cfg in (("pallas_128x256_w8", pallas_triton.Config(block_m=128, block_n=256, num_warps=8,
                                                                     num_stages=3)),
                          ("pallas_128x128_w4", pallas_triton.Config(block_m=128, block_n=128, num_warps=4,
                                                                     num_stages=4)),
                          ("pallas_128x128_w8_pf", pallas_triton.Config(block_m=128, block_n=128, num_warps=8,
                                                                        num_stages=4, prefetch=True)),
                          ("pallas_wgmma", W(block_m=128, block_n=128, num_stages=3)),
                          ("pallas_wgmma_p128", W(block_m=128, block_n=128, num_stages=3, promote=128)),
                          ("pallas_wgmma_pf", W(block_m=128, block_n=128, num_stages=3, prefetch=True)),
                          ("pallas_wgmma_p128_pf", W(block_m=128, block_n=128, num_stages=3, promote=128,
                                                     prefetch=True)),
                          ("pallas_wgmma_p128_pf_s4", W(block_m=128, block_n=128, num_stages=4, promote=128,
                                                        prefetch=True))):
            fn = jax.jit(functools.partial(pallas_triton.fp8_block_mm_pallas, block=(128, 128),
                                           out_dtype=jnp.bfloat16, config=cfg))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=2.0 * m * n * k, bytes=m * k + n * k + 2 * m * n))
    return out
