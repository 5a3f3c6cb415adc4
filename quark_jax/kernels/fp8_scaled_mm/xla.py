"""XLA reference for the FP8 scaled GEMM: raw fp8 operands, weights [N, K], contracting dim 1 of both.

That form is what XLA hands to cuBLASLt's FP8 GEMM on Hopper (BASELINES.md); a bf16 dequant pattern would not be.

Accumulation: exact float32 on CPU. On an NVIDIA Hopper GPU, XLA's default (``precision=None``) is cuBLASLt's
FP8 fast accumulation, the same reduced-precision tensor-core accumulator vLLM's CUTLASS SM90 FP8 kernels use
(``KernelTmaWarpSpecializedPingpongFP8FastAccum``): measured on the H100 (2026-11-25) 5.4e-4 (M = 16, K = 4096)
to 2.9e-3 (M = 2048, K = 14336) relative Frobenius error against float64. ``Precision.HIGHEST`` (promotion to
f32 between MMA groups) lowers that to 1.3e-4 at 11-13% more prefill time (164 -> 185 us at 2048x4096x14336);
it is not used, to stay with vLLM's numerics and speed. The Pallas kernels accumulate in f32 per MMA (2e-7).

Epilogue (``EPILOGUE``): XLA's GPU GEMM rewriter folds only *one* output scalar into the cuBLASLt FP8 call and no
float convert, so today's ``out(x_scale * (w_scale * acc))`` runs as an f32 GEMM (``w_scale`` folded) plus an
elementwise kernel that reads the f32 result back (x_scale, bias, convert): 129 us per 8B layer at 2048 tokens
(benchmarks/NOTES.md, session 7). ``"cublaslt"`` states the GEMM as the rewriter's FP8 pattern instead,
``dot(f32(x_q) * x_scale, f32(w_q) * w_scale) -> out_dtype``, meant to become one cuBLASLt call with both scales
as its ``scale_a`` / ``scale_b`` and the bf16 / f16 output written by the GEMM (torch._scaled_mm's form). Measured on
the H200 (jax 0.11.2, session 7): XLA still writes an f32 GEMM output and converts it in a second kernel -- the same
bits and the same time as "separate" -- so it stays off (kept for the probe, benchmarks/fp8_epilogue_probe.py).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

EPILOGUE = "separate"
"""How the XLA path states per-tensor FP8 GEMMs with a bf16 / f16 output and no bias (read when traced):
"separate" (``out(x_scale * (w_scale * acc))``, the CPU reference's order and vLLM CUTLASS's ``ScaledEpilogue``
order) or "cublaslt" (on CUDA only, through ``lax.platform_dependent``: the rewriter's FP8 pattern, one cuBLASLt
call whose epilogue applies ``scale_a * scale_b`` in cuBLASLt's own order; every other platform keeps
"separate", so CPU results do not change). Off: on the H200 it measured no different from "separate"
(benchmarks/NOTES.md, session 7, helper fp8pf; docs/SPEC.md section 3 states the rounding difference)."""

EPILOGUES = ("separate", "cublaslt")
_DIMS = (((1,), (1,)), ((), ()))


def _separate(x_q, w_q, x_scale, w_scale, bias, out_dtype):
    acc = lax.dot_general(x_q, w_q, _DIMS, preferred_element_type=jnp.float32)
    y = x_scale * (w_scale * acc)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


def fp8_dequant_dot(x_q, w_q, x_scale, w_scale, *, out_dtype=jnp.bfloat16):
    """``dot(f32(x_q) * x_scale, f32(w_q) * w_scale) -> out_dtype``: XLA-GPU's FP8 GEMM pattern, which its gemm
    rewriter turns into one cuBLASLt FP8 call (``scale_a = x_scale``, ``scale_b = w_scale``, output written in
    ``out_dtype``). x_q [M, K], w_q [N, K] float8_e4m3fn; scalar f32 scales. Evaluated as written (e.g. on CPU),
    the f32 products of scaled values round, so it is *not* the reference there: only CUDA lowers it this way.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((2, 32), jnp.float8_e4m3fn); w = jnp.ones((16, 32), jnp.float8_e4m3fn)
    >>> fp8_dequant_dot(x, w, jnp.float32(0.5), jnp.float32(2.0))[0, :2].tolist()
    [32.0, 32.0]
    """
    a = x_q.astype(jnp.float32) * jnp.asarray(x_scale, jnp.float32)
    b = w_q.astype(jnp.float32) * jnp.asarray(w_scale, jnp.float32)
    return lax.dot_general(a, b, _DIMS, preferred_element_type=out_dtype)


def _cublaslt_applies(x_q, w_q, x_scale, w_scale, bias, out_dtype) -> bool:
    return (EPILOGUE == "cublaslt" and bias is None and jnp.dtype(out_dtype) in (jnp.bfloat16, jnp.float16)
            and jnp.shape(x_scale) == () and jnp.shape(w_scale) == ()
            and x_q.dtype == jnp.float8_e4m3fn and w_q.dtype == jnp.float8_e4m3fn)


def fp8_scaled_mm_xla(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16):
    """``out_dtype(x_scale * (w_scale * (x_q @ w_q.T)_f32) + bias)``; shapes already validated by the entry.
    With ``EPILOGUE = "cublaslt"`` (per-tensor scales, no bias, bf16 / f16 out) CUDA lowers
    :func:`fp8_dequant_dot` instead; other platforms this form."""
    if not (EPILOGUE in EPILOGUES):
        raise ValueError(f"EPILOGUE: expected one of {EPILOGUES}, got {EPILOGUE!r}")
    if _cublaslt_applies(x_q, w_q, x_scale, w_scale, bias, out_dtype):
        return lax.platform_dependent(
            x_q, w_q, x_scale, w_scale,
            cuda=lambda a, b, sa, sb: fp8_dequant_dot(a, b, sa, sb, out_dtype=out_dtype),
            default=lambda a, b, sa, sb: _separate(a, b, sa, sb, None, out_dtype))
    return _separate(x_q, w_q, x_scale, w_scale, bias, out_dtype)
