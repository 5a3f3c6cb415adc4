"""MXFP6 (fp6_e2m3 weights, bf16 activations) extra rows for benchmarks/bench_gemm.py: ``xla_bf16`` (a bf16 weight
of the same shape; the baseline). The entry's pallas / xla rows come from the tuner."""

from __future__ import annotations

from gemm_int4 import dense_bf16_case


def cases(point, sets, Case):
    return [dense_bf16_case(point, sets, Case)]
