"""INT4 W4A16 (group 128) extra rows for benchmarks/bench_gemm.py. The entry's pallas / xla / auto rows come from
the tuner: ``kernels.int4_mm_nk`` on the repacked layout the scheme stores (``pallas`` = ``pallas_nk``'s
defaults, the zero point in the weight; ``xla`` = the reference dequantizing the repacked layout). Extra rows:
``xla_bf16`` (a bf16 weight of the same shape; the baseline), ``xla_ckpt`` (the reference on Quark's checkpoint
layout) and, at decode, ``pallas_ckpt`` (the older ``pallas_triton`` kernel on the checkpoint layout, its PTX
decode; its other variants were measured on the H200 on 2026-12-02, NOTES.md issue 19), ``pallas_nk`` (the row-sum
variant: 16x64x512, 80 KB of shared memory, 2 programs per SM), ``pallas_nk_k256`` (256-K steps: 40 KB, up to 5
programs per SM) and ``pallas_nk_wz`` (offset and zero point subtracted from the decoded weight: no row-sum pass
over x, +10% instructions in the loop; the tuned default since 2026-12-02). Session 9 (helper int4dec): one row
``pallas_nk_<name>`` per ``pallas_nk.CANDIDATES`` entry (``fma*`` only at M = 1); ``--rows`` keeps a subset.
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
    from quark_jax import kernels

    unrep = jax.jit(functools.partial(kernels.int4_unrepack, group_size=128, order="reorder", signed=True))
    ck_sets = [(x, unrep(w)[0], s) for x, w, s in sets]  # the tuner's operands are the repacked layout
    ref = jax.jit(functools.partial(kernels.int4_mm, group_size=128, order="reorder", signed=True, impl="xla"))
    out.append(Case(name="xla_ckpt", fn=lambda x, w, s: ref(x, w, s), arg_sets=ck_sets, flops=flops, bytes=nbytes))
    if m <= 16:
        from quark_jax.kernels.int4_mm import pallas_nk

        old = jax.jit(functools.partial(kernels.int4_mm, group_size=128, order="reorder", signed=True, impl="pallas"))
        out.append(Case(name="pallas_ckpt", fn=lambda x, w, s: old(x, w, s), arg_sets=ck_sets, flops=flops,
                        bytes=nbytes))

        def variant(**kw):
            return pallas_nk.fit(pallas_nk.Config(**kw), m, k, n, 128, target_programs=pallas_nk.AUTO_SPLIT["decode"])

        for name, cfg in (("pallas_nk", variant()), ("pallas_nk_k256", variant(block_k=256)),
                          ("pallas_nk_wz", variant(zero_in_weight=True))):
            fn = jax.jit(functools.partial(pallas_nk.int4_mm_nk_pallas, group_size=128, signed=True, config=cfg))
            out.append(Case(name=name, fn=lambda x, w, s, _f=fn: _f(x, w, s), arg_sets=sets, flops=flops,
                            bytes=nbytes))
        for cname in pallas_nk.CANDIDATES:
            if (cname.startswith("fma") and m > 1) or f"pallas_nk_{cname}" in {c.name for c in out}:
                continue
            cfg = pallas_nk.candidate(cname, m, k, n, 128)
            fn = jax.jit(functools.partial(pallas_nk.int4_mm_nk_pallas, group_size=128, signed=True, config=cfg))
            out.append(Case(name=f"pallas_nk_{cname}", fn=lambda x, w, s, _f=fn: _f(x, w, s), arg_sets=sets,
                            flops=flops, bytes=nbytes))
    return out
