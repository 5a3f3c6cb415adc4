"""MXFP6 (fp6_e2m3 weights, bf16 activations) extra rows for benchmarks/bench_gemm.py: ``xla_bf16`` (a bf16 weight
of the same shape; the baseline). The entry's pallas / xla rows come from the tuner (checkpoint layout). Session 9
(helper int4dec): at M <= 16 one row ``planes_<name>`` per ``mxfp6_mm.pallas_planes.CANDIDATES`` entry (``fma*`` only
at M = 1) on the load-time repacked layout (``pallas_planes.repack``: a 4-bit and a 2-bit plane, scales [K/32, N]).
"""

from __future__ import annotations

import functools

from gemm_int4 import dense_bf16_case


def cases(point, sets, Case):
    out = [dense_bf16_case(point, sets, Case)]
    m, k, n = point.m, point.k, point.n
    if m > 16:
        return out
    import jax

    from quark_jax.kernels.mxfp6_mm import pallas_planes

    if not pallas_planes.supports(k, n):
        return out
    flops, nbytes = 2.0 * m * n * k, 3 * n * k // 4 + n * k // 32 + 2 * m * k + 2 * m * n
    rep_sets = [(x, *pallas_planes.repack(w, s)) for x, w, s in sets]
    for cname in pallas_planes.CANDIDATES:
        if cname.startswith("fma") and m > 1:
            continue
        cfg = pallas_planes.candidate(cname, m, k, n)
        fn = jax.jit(functools.partial(pallas_planes.mxfp6_mm_planes, element="fp6_e2m3", config=cfg))
        out.append(Case(name=f"planes_{cname}", fn=lambda x, h, lo, s, _f=fn: _f(x, h, lo, s), arg_sets=rep_sets,
                        flops=flops, bytes=nbytes))
    return out
