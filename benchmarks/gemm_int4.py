"""INT4 W4A16 (group 128) extra rows for benchmarks/bench_gemm.py (the entry's pallas / xla / auto rows come from
the tuner): ``xla_bf16`` (a bf16 weight of the same shape; the baseline) and, at decode, other Pallas configs to pick
defaults (``pallas_wmajor``: the decoded weight as the left MMA operand; ``pallas_asm``: the PTX nibble decode).
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

    from quark_jax.kernels.int4_mm import pallas_triton

    m, k, n = point.m, point.k, point.n
    flops, nbytes = 2.0 * m * n * k, n * k // 2 + 4 * n * (k // 128) + 2 * m * k + 2 * m * n
    out = [dense_bf16_case(point, sets, Case)]
    if m <= 16:
        base = pallas_triton.default_config(m, k, n, 128)
        target = pallas_triton.AUTO_SPLIT["decode"]

        def variant(**kw):
            return pallas_triton.fit(pallas_triton.Config(**{**base.__dict__, "split_k": 1, **kw}), m, k // 128, n,
                                     target_programs=target)

        for name, cfg in (("pallas_wmajor", variant(w_major=True)), ("pallas_asm", variant(decode="asm"))):
            fn = jax.jit(functools.partial(pallas_triton.int4_mm_pallas, group_size=128, order="reorder", signed=True,
                                           config=cfg))
            out.append(Case(name=name, fn=lambda x, w, s, _f=fn: _f(x, w, s), arg_sets=sets, flops=flops,
                            bytes=nbytes))
    return out
