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


# Decode tilings timed by ``--sweep`` (M <= 16): (block_n, block_k, split_k, num_stages, num_warps); the fused
# qkv (4096x6144) / gate_up (4096x28672) shapes have no tuned row yet (session 8).
SWEEP = ((32, 256, 1, 3, 4), (32, 256, 2, 3, 4), (32, 256, 2, 4, 4), (32, 256, 4, 4, 4), (32, 512, 1, 3, 4),
         (32, 512, 2, 3, 4), (64, 256, 1, 3, 4), (64, 256, 2, 3, 4), (64, 256, 4, 3, 4), (64, 512, 1, 3, 4),
         (128, 256, 1, 3, 4), (128, 256, 2, 3, 8))


def sweep_cases(point, sets, Case):
    """One row per ``SWEEP`` tiling of the Pallas FP8 kernel (``wx`` tiles, 16 rows), named ``t<bn>x<bk>_s<split>
    _st<stages>_w<warps>``; M <= 16 only."""
    import dataclasses
    import functools

    import jax

    from quark_jax.kernels.fp8_scaled_mm import pallas_triton

    m, k, n = point.m, point.k, point.n
    if m > 16:
        return []
    base = pallas_triton.Config(block_m=16, block_n=32, block_k=256, inner="wx", num_warps=4, num_stages=3)
    out = []
    for bn, bk, split, stages, warps in SWEEP:
        if n % bn or k % (split * bk):
            continue
        cfg = pallas_triton.fit(dataclasses.replace(base, block_n=bn, block_k=bk, split_k=split, num_stages=stages,
                                                    num_warps=warps), m, k, n)
        fn = jax.jit(functools.partial(pallas_triton.fp8_scaled_mm_pallas, out_dtype=jax.numpy.bfloat16,
                                       config=cfg))
        out.append(Case(name=f"t{bn}x{bk}_s{split}_st{stages}_w{warps}", fn=fn, arg_sets=sets,
                        flops=2.0 * m * n * k, bytes=m * k + n * k + 2 * m * n))
    return out
