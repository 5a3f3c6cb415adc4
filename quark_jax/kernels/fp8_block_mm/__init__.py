"""Block-scaled FP8 W8A8 GEMM (``QuarkW8A8Fp8PerBlock``): weight scales per [rows, cols] block, activation scales
per token and group of ``cols`` along K; XLA reference and Pallas (Triton) kernel."""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.fp8_block_mm.xla import fp8_block_mm_xla


def fp8_block_mm(x_q, w_q, x_scale, w_scale, bias=None, *, block=(128, 128), out_dtype=jnp.bfloat16, impl="auto"):
    """``y[m, n] = out(sum_k x_q[m, k] x_scale[m, k // cols] * w_q[n, k] w_scale[n // rows, k // cols] + bias[n])``.

    Args:
      x_q: [M, K] float8_e4m3fn, quantized per token and group of ``cols`` (``quant.per_token_group_quant_fp8``).
      w_q: [N, K] float8_e4m3fn (checkpoint layout).
      x_scale: f32 [M, K/cols]. w_scale: f32 [ceil(N/rows), K/cols] (dequant multipliers; E8M0 as f32 values).
      bias: optional [N], added in f32. block: (rows, cols) of the weight's scale blocks; K a multiple of cols.
      out_dtype: bf16, f16 or f32. impl: "auto", "pallas" or "xla".

    Accumulates each group's fp8 x fp8 products in f32, scales them and adds across groups in f32.

    >>> x = jnp.ones((1, 32), jnp.float8_e4m3fn); w = jnp.ones((16, 32), jnp.float8_e4m3fn)
    >>> fp8_block_mm(x, w, jnp.array([[1.0, 2.0]]), jnp.ones((1, 2)), block=(16, 16), out_dtype=jnp.float32,
    ...              impl="xla")[0, :2].tolist()
    [48.0, 48.0]
    """
    x_q = _validate.matrix("x_q", x_q, (jnp.float8_e4m3fn,), "[M, K] float8_e4m3fn")
    w_q = _validate.matrix("w_q", w_q, (jnp.float8_e4m3fn,), "[N, K] float8_e4m3fn")
    m, k = x_q.shape
    n = w_q.shape[0]
    _validate.same_k("x_q", k, "w_q", w_q.shape[1])
    rows, cols = (int(b) for b in block)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"block: expected two positive sizes (rows, cols), got {tuple(block)}")
    _validate.multiple_of("x_q", k, cols, "K")
    g = k // cols
    x_scale = _validate.matrix("x_scale", x_scale, (jnp.float32,), f"[M, K/{cols}] float32")
    w_scale = _validate.matrix("w_scale", w_scale, (jnp.float32,), f"[ceil(N/{rows}), K/{cols}] float32")
    if x_scale.shape != (m, g):
        raise ValueError(f"x_scale: expected shape ({m}, {g}), got {tuple(x_scale.shape)}")
    if w_scale.shape != (-(-n // rows), g):
        raise ValueError(f"w_scale: expected shape ({-(-n // rows)}, {g}), got {tuple(w_scale.shape)}")
    bias = _validate.bias_vector(bias, n)
    supported = cols % 32 == 0 and n % 16 == 0 and rows & (rows - 1) == 0
    which = _dispatch.resolve_impl("fp8_block_mm", impl, m, k, n, supported=supported)
    if which == "pallas":
        _validate.multiple_of("x_q", cols, 32, "the block cols")
        _validate.multiple_of("w_q", n, 16, "N")
        from quark_jax.kernels.fp8_block_mm import pallas_triton

        return pallas_triton.fp8_block_mm_pallas(x_q, w_q, x_scale, w_scale, bias, block=(rows, cols),
                                                 out_dtype=out_dtype)
    return fp8_block_mm_xla(x_q, w_q, x_scale, w_scale, bias, block=(rows, cols), out_dtype=out_dtype)


__all__ = ["fp8_block_mm", "fp8_block_mm_xla"]
