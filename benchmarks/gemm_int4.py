"""INT4 W4A16 (group 128) extra rows for benchmarks/bench_gemm.py (the entry's pallas / xla / auto rows come from
the tuner): ``xla_bf16`` (a bf16 weight of the same shape; the baseline) and, at decode, the repacked-layout decode
kernel (``int4_mm.pallas_nk``; the weight repacked once, outside the timing, as a scheme would at load time):
``pallas_nk`` (its defaults: 16x64x512, 80 KB of shared memory, 2 programs per SM), ``pallas_nk_k256`` (256-K
steps: 40 KB, up to 5 programs per SM) and ``pallas_nk_wz`` (offset and zero point subtracted from the decoded
weight: no row-sum pass over x, +10% instructions in the loop). The old kernel's variants (``w_major``, the "bits" decode) were measured on
the H200 on 2026-12-02 (NOTES.md, issue 19); its default (the PTX decode) is the entry's ``pallas`` row.
"""

from __future__ import annotations

import functools


def dense_bf16_case(point, sets, Case, name="xla_bf16"):
    """bf16 x [M, K] times a bf16 weight [N, K] (one copy per operand set), bf16 output: the unquantized layer."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    m, k, n = point.m, point.k, point.n
    make = jax.jit(lambda kk: jax.random.normal(kk, (n, k), jnp.bfloat16))
    bsets = [(s[0].astype(jnp.bfloat16), make(jax.random.key(i))) for i, s in enumerate(sets)]
    dense = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.bfloat16))
    return Case(name=name, fn=dense, arg_sets=bsets, flops=2.0 * m * n * k, bytes=2 * (m * k + n * k + m * n),
                baseline=True)


def cases(point, sets, Case):
    import jax

    m, k, n = point.m, point.k, point.n
    flops, nbytes = 2.0 * m * n * k, n * k // 2 + 4 * n * (k // 128) + 2 * m * k + 2 * m * n
    out = [dense_bf16_case(point, sets, Case)]
    if m <= 16:
        from quark_jax.kernels.int4_mm import pallas_nk

        rep = jax.jit(functools.partial(pallas_nk.repack, group_size=128, order="reorder", signed=True))
        nk_sets = [(x, rep(w)[0], s) for x, w, s in sets]

        def variant(**kw):
            return pallas_nk.fit(pallas_nk.Config(**kw), m, k, n, 128, target_programs=pallas_nk.AUTO_SPLIT["decode"])

        for name, cfg in (("pallas_nk", variant()), ("pallas_nk_k256", variant(block_k=256)),
                          ("pallas_nk_wz", variant(zero_in_weight=True))):
            fn = jax.jit(functools.partial(pallas_nk.int4_mm_nk_pallas, group_size=128, signed=True, config=cfg))
            out.append(Case(name=name, fn=lambda x, w, s, _f=fn: _f(x, w, s), arg_sets=nk_sets, flops=flops,
                            bytes=nbytes))
    return out
