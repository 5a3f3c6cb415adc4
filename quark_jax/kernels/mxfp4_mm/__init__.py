"""MXFP4 GEMM from packed weights (W4A4 and W4 weight-only): XLA reference and Pallas kernels.

``pallas_triton.py`` is the fused kernel ``auto`` picks on GPUs (sm80+) at every M but Hopper's decode; its device
table may name, per decode shape, ``pallas_triton_gemv.py``'s one-kernel decode GEMM (M <= 16, bf16 x, the
activation quant-dequant inside; benchmarks/NOTES.md "Session 9, helper mx4dec");
``pallas_mosaic_gpu.py`` the Hopper (TMA + wgmma) decode kernel for M <= 16 (``impl="mosaic"``), which ``auto`` runs
at M <= 16 on sm90 cards (their tuning tables; benchmarks/NOTES.md "Session 8, helper mxauto") where it takes the
operands (bf16 x, or f32 x with ``quantize_input``; N, K multiples of 64), else the Triton kernel;
``pallas_triton_fp8mma.py`` a W4A4 decode GEMM on FP8 MMAs (experimental, outside ``auto``: measured within +-10% of
the Mosaic kernel, benchmarks/NOTES.md "Session 10").
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla

ACT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def mxfp4_mm(x, w_packed, w_scales, bias=None, *, quantize_input=True, out_dtype=None, impl="auto",
             scales_kn=None, fold: bool = False):
    """``y = linear(qdq_mxfp4(x) if quantize_input else x, dequantize_mxfp4(w_packed, w_scales), bias)``.

    Args:
      x: [M, K] bf16/f16/f32 activations, K a multiple of 32.
      w_packed: [N, K/2] uint8, element 2j in the low nibble (checkpoint layout).
      w_scales: [N, K/32] uint8 E8M0 scale bytes.
      bias: optional [N], added in f32.
      quantize_input: W4A4 (True, MXFP4 quant-dequant of x) or weight-only (False).
      out_dtype: default x.dtype. impl: "auto", "pallas", "xla" or "mosaic" (the Mosaic GPU decode kernel:
        bf16 x, or f32 x with quantize_input; M <= 16; N and K multiples of 64; ``auto`` runs it at M <= 16 on
        Hopper where it takes the operands).
      scales_kn: optional, the same scales transposed, uint8 [K/32, N] (what the Mosaic kernel reads; stored at
        load by the MXFP4 schemes, so that a decode step runs no transpose); used only when the Mosaic kernel runs.
      fold: the caller checked that every scale byte is <= ``decode.FOLD_MAX_SCALE_BYTE`` (128): the Mosaic
        kernel may then use its folded-scale decode (one bf16 multiply per element pair fewer; WRONG for larger
        bytes, so only a load-time check may set it). Other implementations ignore it.

    Accumulates in f32 and rounds once to ``out_dtype`` (SPEC section 3, MXFP4).

    >>> import jax.numpy as jnp
    >>> w = jnp.full((16, 16), 0x22, jnp.uint8); s = jnp.full((16, 1), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm(jnp.ones((1, 32)), w, s, impl="xla")[0, :2].tolist()
    [32.0, 32.0]
    """
    x = _validate.matrix("x", x, ACT_DTYPES, "[M, K] bf16/f16/f32")
    w_packed = _validate.matrix("w_packed", w_packed, (jnp.uint8,), "[N, K/2] uint8")
    w_scales = _validate.matrix("w_scales", w_scales, (jnp.uint8,), "[N, K/32] uint8 (E8M0)")
    m, k = x.shape
    n = w_packed.shape[0]
    _validate.multiple_of("x", k, formats.MX_BLOCK_SIZE, "K")
    _validate.packed_shape("w_packed", w_packed, (n, k // 2), k)
    if w_scales.shape != (n, k // formats.MX_BLOCK_SIZE):
        raise ValueError(f"w_scales: expected shape ({n}, {k // formats.MX_BLOCK_SIZE}), got {tuple(w_scales.shape)}")
    bias = _validate.bias_vector(bias, n)
    if scales_kn is not None:
        scales_kn = _validate.matrix("scales_kn", scales_kn, (jnp.uint8,), "[K/32, N] uint8 (E8M0)")
        if scales_kn.shape != (k // formats.MX_BLOCK_SIZE, n):
            raise ValueError(f"scales_kn: expected shape ({k // formats.MX_BLOCK_SIZE}, {n}), got "
                             f"{tuple(scales_kn.shape)}")
    from quark_jax.kernels.mxfp4_mm import pallas_mosaic_gpu

    which = _dispatch.resolve_impl("mxfp4_mm", impl, m, k, n, supported=n % 16 == 0,
                                   allowed=_dispatch.IMPLS_WITH_MOSAIC,
                                   mosaic_ok=pallas_mosaic_gpu.supported(x.dtype, quantize_input, m, k, n))
    if which == "mosaic":
        kn = scales_kn is not None
        return pallas_mosaic_gpu.mxfp4_mm_mosaic(x, w_packed, scales_kn if kn else w_scales, bias,
                                                 quantize_input=quantize_input, out_dtype=out_dtype,
                                                 scales_kn=kn, fold=bool(fold))
    if which == "pallas":
        _validate.multiple_of("w_packed", n, 16, "N")
        from quark_jax.kernels.mxfp4_mm import pallas_triton

        return pallas_triton.mxfp4_mm_pallas(x, w_packed, w_scales, bias, quantize_input=quantize_input,
                                             out_dtype=out_dtype, fold=bool(fold))
    return mxfp4_mm_xla(x, w_packed, w_scales, bias, quantize_input=quantize_input, out_dtype=out_dtype)


def mxfp4_mosaic_may_run(k: int, n: int, *, impl: str = "auto") -> bool:
    """Whether :func:`mxfp4_mm` with ``impl`` may run a decode kernel with a folded-scale decode for a [N, K]
    weight on the current device (at some M <= 16, with bf16 x): the Mosaic kernel, or the Triton decode GEMM
    (``pallas_triton_gemv``) where this device's Triton table names it. What the MXFP4 schemes ask at load, to
    store the scales also as [K/32, N] (``scales_kn``, read by the Mosaic kernel) and to check whether the folded
    decode is exact for the weight (``fold``). False on CPU with ``impl="auto"`` (auto is XLA there) and with
    ``impl="pallas"`` (no device table there).

    >>> mxfp4_mosaic_may_run(4096, 4096, impl="mosaic"), mxfp4_mosaic_may_run(4096, 4096, impl="pallas")
    (True, False)
    """
    from quark_jax.kernels.mxfp4_mm import pallas_mosaic_gpu, pallas_triton, pallas_triton_gemv

    _dispatch.check_impl(impl, _dispatch.IMPLS_WITH_MOSAIC)
    if impl == "xla":
        return False
    ms = (1, pallas_mosaic_gpu.MAX_M)
    if impl == "mosaic":
        return pallas_mosaic_gpu.supported(jnp.bfloat16, False, 1, k, n)

    def decode_kernel(m: int) -> bool:  # the Mosaic kernel, or the Triton decode GEMM from this device's table
        which = impl if impl == "pallas" else _dispatch.resolve_impl(
            "mxfp4_mm", "auto", m, k, n, supported=n % 16 == 0,
            mosaic_ok=pallas_mosaic_gpu.supported(jnp.bfloat16, False, m, k, n))
        return which == "mosaic" or (which == "pallas" and n % 16 == 0 and k % 32 == 0 and
                                     isinstance(pallas_triton.default_config(m, k, n), pallas_triton_gemv.Config))

    return any(decode_kernel(m) for m in ms)


__all__ = ["mxfp4_mm", "mxfp4_mm_xla", "mxfp4_mosaic_may_run"]
