"""XLA reference for the FP8 scaled GEMM: raw fp8 operands, weights [N, K], contracting dim 1 of both.

That form is what XLA hands to cuBLASLt's FP8 GEMM on Hopper (BASELINES.md); a bf16 dequant pattern would not be.

Accumulation: exact float32 on CPU. On an NVIDIA Hopper GPU, XLA's default (``precision=None``) is cuBLASLt's
FP8 fast accumulation, the same reduced-precision tensor-core accumulator vLLM's CUTLASS SM90 FP8 kernels use
(``KernelTmaWarpSpecializedPingpongFP8FastAccum``): measured on the H100 (2026-11-25) 5.4e-4 (M = 16, K = 4096)
to 2.9e-3 (M = 2048, K = 14336) relative Frobenius error against float64. ``Precision.HIGHEST`` (promotion to
f32 between MMA groups) lowers that to 1.3e-4 at 11-13% more prefill time (164 -> 185 us at 2048x4096x14336);
it is not used, to stay with vLLM's numerics and speed. The Pallas kernels accumulate in f32 per MMA (2e-7).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def fp8_scaled_mm_xla(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16):
    """``out_dtype(x_scale * (w_scale * (x_q @ w_q.T)_f32) + bias)``; shapes already validated by the entry."""
    acc = lax.dot_general(x_q, w_q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = x_scale * (w_scale * acc)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)
