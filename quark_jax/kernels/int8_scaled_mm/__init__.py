"""INT8 W8A8 scaled GEMM with the asymmetric (azp) epilogue: XLA reference and Pallas (Triton) kernel."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import quant
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.int8_scaled_mm.xla import int8_scaled_mm_xla


FLOAT_INPUTS = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
FUSE_PROLOGUE = False
"""Whether float activations with a static scale are quantized in the Pallas kernel's prologue (one kernel, x read
once) rather than by a separate XLA op first (the same codes either way; read when a function is traced). Off:
measured on the H200 (2026-12-02, benchmarks/NOTES.md) the prologue made the decode GEMMs slower (FP8 8B: 2.04 ->
3.21 ms per step for the 128 projection GEMMs) than the quantize kernels it removes cost."""


def int8_scaled_mm(x_q, w_q, x_scale, w_scale, bias=None, *, azp_adj=None, azp=None, out_dtype=jnp.bfloat16,
                   impl="auto", x_zero_point=None):
    """Scaled INT8 GEMM ``y = out(x_scale * (w_scale * f32(x_q @ w_q.T - azp term)) + bias)`` (SPEC section 3).

    Args:
      x_q: [M, K] int8 activations; w_q: [N, K] int8 weight (checkpoint layout). Or float activations (bf16,
        f16, f32) with a static per-tensor ``x_scale`` (and ``x_zero_point``, int32 scalar, when asymmetric):
        quantized as ``quant.scaled_int8_quant(x, x_scale, x_zero_point)`` does it; with ``FUSE_PROLOGUE`` the
        Pallas kernel does it in its prologue (x read once), bit for bit the same codes.
      x_scale: f32 scalar or [M, 1]; w_scale: f32 scalar or [N].
      bias: optional [N], added in f32.
      azp_adj: optional int32 [N]. With ``azp`` None it is ``z * colsum(w_q)`` (per-tensor zero point folded in);
        with ``azp`` given it is ``colsum(w_q)`` and the kernel subtracts ``azp[m] * azp_adj[n]``.
      azp: optional int32 [M, 1] per-token zero points (needs ``azp_adj``).
      out_dtype: bf16, f16 or f32. impl: "auto", "pallas", "xla" or "mosaic" (the experimental Mosaic GPU
        kernel: M <= 128, N a multiple of 64; not picked by "auto" on the H100).

    >>> import jax.numpy as jnp
    >>> x = jnp.full((1, 32), 2, jnp.int8); w = jnp.ones((16, 32), jnp.int8)
    >>> int8_scaled_mm(x, w, 0.5, 0.25, azp_adj=jnp.full((16,), 32, jnp.int32), impl="xla")[0, 0].item()
    4.0
    """
    x_q, w_q, x_scale, w_scale, bias, (m, k, n) = _validate.scaled_mm_operands(
        x_q, w_q, x_scale, w_scale, bias, (jnp.int8,) + FLOAT_INPUTS, "[M, K] int8 (or float with a static scale)",
        w_dtypes=(jnp.int8,))
    if x_q.dtype in FLOAT_INPUTS:
        if x_scale.shape != ():
            raise ValueError(f"x_scale: float activations x_q ({x_q.dtype}) are quantized with a static per-tensor "
                             f"scale (a scalar), got shape {tuple(x_scale.shape)}")
        if azp is not None:
            raise ValueError("azp: float activations are quantized with a static zero point (x_zero_point), not a "
                             "per-token azp")
    elif x_zero_point is not None:
        raise ValueError("x_zero_point: only for float activations quantized in the GEMM (x_q is already int8)")
    if azp is not None and azp_adj is None:
        raise ValueError("azp: a per-token zero point needs azp_adj (the weight column sums)")
    if azp_adj is not None:
        azp_adj = jnp.asarray(azp_adj)
        if azp_adj.shape != (n,) or azp_adj.dtype != jnp.int32:
            raise ValueError(f"azp_adj: expected int32 shape ({n},), got {azp_adj.dtype} {tuple(azp_adj.shape)}")
    if azp is not None:
        azp = jnp.asarray(azp)
        if azp.size != m or azp.dtype != jnp.int32:
            raise ValueError(f"azp: expected int32 shape ({m}, 1), got {azp.dtype} {tuple(azp.shape)}")
        azp = azp.reshape(m, 1)
    which = _dispatch.resolve_impl("int8_scaled_mm", impl, m, k, n, supported=n % 16 == 0 and k % 16 == 0,
                                   allowed=_dispatch.IMPLS_WITH_MOSAIC)
    if (which != "pallas" or not FUSE_PROLOGUE) and x_q.dtype in FLOAT_INPUTS:  # the others take quantized x
        x_q = quant.scaled_int8_quant(x_q, x_scale, x_zero_point, symmetric=x_zero_point is None)[0]
        x_zero_point = None
    if which == "mosaic":
        _validate.mosaic_skinny_shape(x_q.dtype, m, k, n)
        from quark_jax.kernels.int8_scaled_mm import pallas_mosaic_gpu

        return pallas_mosaic_gpu.int8_scaled_mm_mosaic(x_q, w_q, x_scale, w_scale, bias, azp_adj=azp_adj, azp=azp,
                                                       out_dtype=out_dtype)
    if which == "pallas":
        _validate.multiple_of("w_q", n, 16, "N")
        _validate.multiple_of("w_q", k, 16, "K")
        from quark_jax.kernels.int8_scaled_mm import pallas_triton

        return pallas_triton.int8_scaled_mm_pallas(x_q, w_q, x_scale, w_scale, bias, azp_adj=azp_adj, azp=azp,
                                                   out_dtype=out_dtype, x_zero_point=x_zero_point)
    return int8_scaled_mm_xla(x_q, w_q, x_scale, w_scale, bias, azp_adj=azp_adj, azp=azp, out_dtype=out_dtype)


__all__ = ["int8_scaled_mm", "int8_scaled_mm_xla"]
