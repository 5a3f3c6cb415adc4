"""FP8 W8A8 scaled GEMM: ``fp8_scaled_mm`` with an XLA reference and Pallas kernels.

Layout (the same for every op): this module is the entry and its dispatch, ``xla.py`` the reference composition,
one file per backend owning its ``Config`` and tuned defaults: ``pallas_triton.py`` the fused kernel,
``pallas_mosaic_gpu.py`` the experimental Hopper (TMA + wgmma) skinny kernel for M <= 128 (``impl="mosaic"``;
not picked by ``auto``).
"""

from __future__ import annotations

import jax.numpy as jnp

from quark_jax import quant
from quark_jax.kernels import _dispatch, _validate, prologue
from quark_jax.kernels.fp8_scaled_mm.xla import fp8_scaled_mm_xla

FP8_DTYPES = (jnp.float8_e4m3fn, jnp.float8_e4m3fnuz)
FLOAT_INPUTS = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
FUSE_PROLOGUE = False
"""Whether float activations with a static scale are quantized in the Pallas kernel's prologue (one kernel, x read
once) rather than by a separate XLA op first (the same codes either way; read when a function is traced). Off:
measured on the H200 (2026-12-02, benchmarks/NOTES.md) the prologue made the decode GEMMs slower (FP8 8B: 2.04 ->
3.21 ms per step for the 128 projection GEMMs) than the quantize kernels it removes cost."""


def fp8_scaled_mm(x_q, w_q, x_scale, w_scale, bias=None, *, out_dtype=jnp.bfloat16, impl="auto",
                  x_scale_reciprocal=None, finish=True, transform="none", norm_rinv=None, norm_weight=None):
    """Scaled FP8 GEMM ``y[m, n] = out(x_scale[m] * (w_scale[n] * sum_k x_q[m, k] w_q[n, k]) + bias[n])``.

    Args:
      x_q: [M, K] float8_e4m3fn (or e4m3fnuz) quantized activations; or float activations (bf16, f16, f32) with a
        static per-tensor ``x_scale``, quantized as ``quant.scaled_fp8_quant(x, x_scale)`` (to e4m3fn) does it:
        with ``FUSE_PROLOGUE`` the Pallas kernel does it in its prologue (x read once), bit for bit the same codes.
      w_q: [N, K] same dtype, the weight in the checkpoint layout (K-major).
      x_scale: f32 scalar (per-tensor) or [M, 1] (per-token).
      w_scale: f32 scalar (per-tensor) or [N] (per-channel).
      bias: optional [N], added in f32.
      out_dtype: output dtype (bf16, f16 or f32); the epilogue rounds once.
      impl: "auto" (``quark_jax.kernels.choose_impl`` for this device and shape), "pallas", "xla", or "mosaic"
        (the Mosaic GPU kernel: M <= 128, N a multiple of 64; on the H100 no faster than "pallas" and its FP8
        wgmma accumulates with ~1e-4 relative error, see benchmarks/NOTES.md).
      x_scale_reciprocal: float x only: ``quant.true_divide(1.0, x_scale)`` computed beforehand (a scheme stores
        it at load), so quantizing x computes no reciprocal; the same codes.
      finish: False: where the Pallas kernel splits K (no bias, per-tensor x_scale), return its float32 partial
        sums and scales as ``kernels.tiling.SplitSums`` for a consumer that applies the epilogue itself
        (``kernels.add_rmsnorm``); every other case returns the finished array.
      transform: float x with a static per-tensor scale only: the GEMM's input is formed from x first
        (``prologue.transform_reference``): "none" (x itself); "rmsnorm" (x = the un-normalized rows h [M, K],
        ``norm_rinv`` [M, 1] float32 their rsqrt(mean(h**2) + eps), ``norm_weight`` [K]: the decoder's RMSNorm
        output); "silu_mul" (x = the fused gate_up output [M, 2K]: ``silu(gate) * up`` rounded to x's dtype). The
        Pallas kernel forms and quantizes it in its prologue (no separate kernel; always, whatever
        ``FUSE_PROLOGUE``); other impls run the XLA composition first, then the GEMM as for float x.

    Returns [M, N] ``out_dtype`` (or ``SplitSums``, see ``finish``). The f32 accumulation is exact-order-independent only up to f32 rounding.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((2, 32), jnp.float8_e4m3fn); w = jnp.ones((16, 32), jnp.float8_e4m3fn)
    >>> fp8_scaled_mm(x, w, jnp.float32(0.5), jnp.float32(2.0), impl="xla")[0, :3].tolist()
    [32.0, 32.0, 32.0]
    """
    if transform != "none":
        from quark_jax.kernels.fp8_scaled_mm import pallas_triton

        x_in = jnp.asarray(x_q)
        if x_in.ndim != 2:
            raise ValueError(f"x_q: expected a matrix, got shape {tuple(x_in.shape)}")
        pallas_triton._check_transform(transform, x_in, jnp.asarray(w_q), jnp.asarray(x_scale, jnp.float32),
                                       norm_rinv, norm_weight)
        # the GEMM's x as XLA would form it (dead code where the Pallas kernel forms it in its prologue)
        x_q = prologue.transform_reference(transform, x_in, norm_rinv, norm_weight)
    x_q, w_q, x_scale, w_scale, bias, (m, k, n) = _validate.scaled_mm_operands(
        x_q, w_q, x_scale, w_scale, bias, FP8_DTYPES + FLOAT_INPUTS, "[M, K] fp8 (or float with a static scale)",
        w_dtypes=FP8_DTYPES)
    if x_q.dtype in FLOAT_INPUTS:
        if x_scale.shape != ():
            raise ValueError(f"x_scale: float activations x_q ({x_q.dtype}) are quantized with a static per-tensor "
                             f"scale (a scalar), got shape {tuple(x_scale.shape)}")
        if w_q.dtype != jnp.float8_e4m3fn:
            raise TypeError(f"w_q: float activations are quantized to float8_e4m3fn; the weight must be too, got "
                            f"{w_q.dtype}")
    elif x_scale_reciprocal is not None:
        raise ValueError(f"x_scale_reciprocal: only used with float activations (quantized here), got x_q of "
                         f"{x_q.dtype}")
    # the kernel takes e4m3fn with N, K multiples of 16; auto never fails where XLA works
    supported = w_q.dtype == jnp.float8_e4m3fn and n % 16 == 0 and k % 16 == 0
    which = _dispatch.resolve_impl("fp8_scaled_mm", impl, m, k, n, supported=supported,
                                   allowed=_dispatch.IMPLS_WITH_MOSAIC)
    if which == "pallas" and transform != "none":
        _validate.multiple_of("w_q", n, 16, "N")
        _validate.multiple_of("w_q", k, 16, "K")
        from quark_jax.kernels.fp8_scaled_mm import pallas_triton

        return pallas_triton.fp8_scaled_mm_pallas(x_in, w_q, x_scale, w_scale, bias, out_dtype=out_dtype,
                                                  finish=bool(finish), transform=transform, norm_rinv=norm_rinv,
                                                  norm_weight=norm_weight)
    if (which != "pallas" or not FUSE_PROLOGUE) and x_q.dtype in FLOAT_INPUTS:  # the others take quantized x
        x_q = quant.scaled_fp8_quant(x_q, x_scale, dtype=jnp.float8_e4m3fn, scale_reciprocal=x_scale_reciprocal)[0]
    if which == "mosaic":
        _validate.mosaic_skinny_shape(x_q.dtype, m, k, n)
        from quark_jax.kernels.fp8_scaled_mm import pallas_mosaic_gpu

        return pallas_mosaic_gpu.fp8_scaled_mm_mosaic(x_q, w_q, x_scale, w_scale, bias, out_dtype=out_dtype)
    if which == "pallas":
        _validate.multiple_of("w_q", n, 16, "N")
        _validate.multiple_of("w_q", k, 16, "K")
        from quark_jax.kernels.fp8_scaled_mm import pallas_triton

        return pallas_triton.fp8_scaled_mm_pallas(x_q, w_q, x_scale, w_scale, bias, out_dtype=out_dtype,
                                                  finish=bool(finish))
    return fp8_scaled_mm_xla(x_q, w_q, x_scale, w_scale, bias, out_dtype=out_dtype)


def fp8_gate_up_silu(x, w_q, x_scale, w_scale, out_scale, *, out_dtype=jnp.bfloat16, impl="auto",
                     x_scale_reciprocal=None, out_scale_reciprocal=None):
    """A decoder MLP's fused gate_up GEMM, ``silu(gate) * up`` and the down projection's static FP8 input
    quantizer: the FP8 codes ``down_proj`` would compute from its float input.

    Args:
      x: [M, K] float8_e4m3fn codes, or float activations quantized here with the static ``x_scale`` (as
        :func:`fp8_scaled_mm` does, ``x_scale_reciprocal`` the stored ``1 / x_scale``).
      w_q: [2 I, K] float8_e4m3fn, gate rows then up rows (vLLM's ``gate_up_proj``); x_scale: f32 () per-tensor;
        w_scale: f32 () or [2 I].
      out_scale: f32 (), the next GEMM's static input scale; out_scale_reciprocal: its stored ``1 / out_scale``.
      out_dtype: the model dtype (the GEMM output and the SiLU-mul are rounded to it).
      impl: as :func:`fp8_scaled_mm`; where it resolves to "pallas" and the shape has an unsplit skinny tiling
        (``pallas_triton.gate_up_config``: decode, M <= 16) one kernel does all of it, else the composition below.

    Returns [M, I] float8_e4m3fn: ``scaled_fp8_quant(dtype(silu(f32(g)) * f32(u)), out_scale)`` with ``g, u`` the
    GEMM's output split at I. The composition is the decoder's MLP as written, bit for bit; the kernel equals it
    bit for bit in interpret mode, and compiled up to its SiLU (``g / (1 + exp(-g))``, SPEC 11.7).

    >>> x = jnp.ones((1, 32), jnp.float8_e4m3fn); w = jnp.ones((32, 32), jnp.float8_e4m3fn)
    >>> c = fp8_gate_up_silu(x, w, jnp.float32(1 / 32), jnp.float32(1.0), jnp.float32(0.5), impl="xla")
    >>> c.shape, float(c[0, 0].astype(jnp.float32))   # silu(1) * 1 = 0.7305 (bf16) / 0.5
    ((1, 16), 1.5)
    """
    import jax

    from quark_jax.quant import round_to

    x = jnp.asarray(x)
    w_q = jnp.asarray(w_q)
    x_scale = jnp.asarray(x_scale, jnp.float32)
    if x.ndim != 2 or w_q.ndim != 2 or w_q.shape[1] != x.shape[1] or w_q.shape[0] % 32:
        raise ValueError(f"fp8_gate_up_silu: expected x [M, K] and w_q [2 I, K] with I a multiple of 16, got "
                         f"{tuple(x.shape)} and {tuple(w_q.shape)}")
    if x.dtype in FLOAT_INPUTS:
        x = quant.scaled_fp8_quant(x, x_scale, dtype=jnp.float8_e4m3fn, scale_reciprocal=x_scale_reciprocal)[0]
    m, k = x.shape
    n = w_q.shape[0]
    inter = n // 2
    supported = w_q.dtype == jnp.float8_e4m3fn and x.dtype == jnp.float8_e4m3fn and k % 16 == 0
    which = _dispatch.resolve_impl("fp8_scaled_mm", impl, m, k, n, supported=supported,
                                   allowed=_dispatch.IMPLS_WITH_MOSAIC)
    if which == "pallas" and x_scale.shape == ():
        from quark_jax.kernels.fp8_scaled_mm import pallas_triton

        if pallas_triton.gate_up_config(m, k, inter) is not None:
            recip = (quant.true_divide(1.0, jnp.asarray(out_scale, jnp.float32)) if out_scale_reciprocal is None
                     else out_scale_reciprocal)
            return pallas_triton.fp8_gate_up_silu_pallas(x, w_q, x_scale, w_scale, recip,
                                                         out_dtype=jnp.dtype(out_dtype))
    gu = round_to(fp8_scaled_mm(x, w_q, x_scale, w_scale, out_dtype=out_dtype, impl=which), out_dtype)
    h = round_to(jax.nn.silu(gu[:, :inter].astype(jnp.float32)) * gu[:, inter:].astype(jnp.float32), out_dtype)
    return quant.scaled_fp8_quant(h, out_scale, dtype=jnp.float8_e4m3fn, scale_reciprocal=out_scale_reciprocal)[0]


__all__ = ["fp8_scaled_mm", "fp8_scaled_mm_xla", "fp8_gate_up_silu"]
