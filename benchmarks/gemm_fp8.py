"""FP8 W8A8 extra rows for benchmarks/bench_gemm.py (the entry's pallas / xla / auto rows come from the tuner):

- ``xla_bf16``: a bf16 ``dot_general`` of the same shape, no scales (the unquantized layer; the baseline);
- ``torch_scaled_mm_rowwise``: ``torch._scaled_mm`` with [M, 1] x [1, N] f32 scales and the bias (skipped where
  torch with CUDA is absent).
"""

from __future__ import annotations

from gemm_int8 import bf16_case, torch_sets


def cases(point, sets, Case):
    m, k, n = point.m, point.k, point.n
    out = [bf16_case(point, sets, Case)]
    tsets = torch_sets(point, len(sets), "fp8")
    if tsets:
        import torch

        def mm(a, w, sa, sb, bias):  # w [N, K] row-major: its transpose is the column-major [K, N] wanted
            return torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)

        out.append(Case(name="torch_scaled_mm_rowwise", fn=mm, arg_sets=tsets, flops=2.0 * m * n * k,
                        bytes=m * k + n * k + 2 * m * n, framework="torch"))
    return out
