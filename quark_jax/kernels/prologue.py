"""The activation-quantization prologue shared by the Pallas-Triton FP8 and INT8 GEMMs: a float activation tile is
quantized inside the GEMM kernel with a static per-tensor input scale, bit for bit as
:func:`quark_jax.quant.scaled_fp8_quant` / :func:`quark_jax.quant.scaled_int8_quant` do it (vLLM's rules), so x is
read once, in its float dtype, and no separate quantize kernel runs.

The two operations that Triton would otherwise approximate are exact here: the float32 division (Triton emits an
approximate ``div.full.f32``) is PTX ``div.rn.f32`` (IEEE, correctly rounded), and the float-to-int conversion is
PTX ``cvt.rni.sat.s32.f32`` (round half to even, saturating, NaN -> 0: the instruction vLLM's INT8 quantizer
uses). In Pallas interpret mode (CPU) the same formulas run with :func:`quark_jax.quant.true_divide` and
``jnp.round`` instead, which compute the same values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quark_jax import formats
from quark_jax.quant import round_to, true_divide

__all__ = ["QUANT_MODES", "TRANSFORMS", "div_rn", "rni_sat_s32", "fp8_static_tile", "int8_static_tile",
           "static_inverse", "rmsnorm_tile", "silu_mul_tile", "transform_reference"]

QUANT_MODES = ("none", "fp8_static", "int8_static")
"""What a kernel does with x: nothing (x is already quantized), FP8 static per-tensor, INT8 static per-tensor."""

TRANSFORMS = ("none", "rmsnorm", "silu_mul")
"""What a kernel forms its float activation from before quantizing it (:func:`transform_reference`): x itself; an
RMSNorm's output from the un-normalized rows, their inverse RMS and the norm weight; ``silu(gate) * up`` from the
fused gate_up GEMM's output."""

_I32_MAX_SAFE = 2.0**31 - 256  # quant.int8's bound before adding a zero point (no int32 wrap-around)


def div_rn(a, b, *, interpret: bool):
    """``a / b`` correctly rounded (float32 tensors of one shape, inside a kernel).

    >>> import numpy as np
    >>> float(div_rn(jnp.float32(3.0), jnp.float32(448.0), interpret=True)) == float(np.float32(3) / np.float32(448))
    True
    """
    if interpret:
        return true_divide(a, b)
    from jax.experimental.pallas import triton as plgpu

    [q] = plgpu.elementwise_inline_asm("div.rn.f32 $0, $1, $2;", args=[a, b], constraints="=f,f,f", pack=1,
                                       result_shape_dtypes=[jax.ShapeDtypeStruct(a.shape, jnp.float32)])
    return q


def rni_sat_s32(v, *, interpret: bool):
    """float32 -> int32, round half to even, saturating at the int32 range, NaN -> 0 (PTX ``cvt.rni.sat``).

    >>> rni_sat_s32(jnp.array([0.5, 1.5, -2.5, jnp.nan, 1e12]), interpret=True).tolist()
    [0, 2, -2, 0, 2147483647]
    """
    if interpret:
        v = jnp.where(jnp.isnan(v), 0.0, v)
        big = v >= 2.0**31
        r = jnp.clip(jnp.round(v), -(2.0**31), 2.0**31 - 128).astype(jnp.int32)
        return jnp.where(big, jnp.int32(2**31 - 1), r)
    from jax.experimental.pallas import triton as plgpu

    [q] = plgpu.elementwise_inline_asm("cvt.rni.sat.s32.f32 $0, $1;", args=[v], constraints="=r,f", pack=1,
                                       result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int32)])
    return q


def static_inverse(scale, shape, *, interpret: bool):
    """``1 / scale`` correctly rounded, broadcast to ``shape`` (float32): the factor vLLM's static quantizers
    multiply by (computed once per program, outside the K loop).

    >>> static_inverse(0.5, (1, 2), interpret=True).tolist()
    [[2.0, 2.0]]
    """
    s = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), shape)
    return div_rn(jnp.ones(shape, jnp.float32), s, interpret=interpret)


def fp8_static_tile(x, inv, *, dtype=jnp.float8_e4m3fn):
    """A float tile quantized to FP8 with the static inverse scale ``inv`` (broadcastable): vLLM's
    ``fp8(clamp(f32(x) * inv))`` with NaN -> +max (as :func:`quark_jax.quant.scaled_fp8_quant`).

    >>> fp8_static_tile(jnp.array([[1.0, -2.5, 1000.0]]), jnp.float32(2.0)).astype(jnp.float32).tolist()
    [[2.0, -5.0, 448.0]]
    """
    m = formats.fp8_max(dtype)
    v = x.astype(jnp.float32) * inv
    v = jnp.where(jnp.isnan(v), m, v)
    return jnp.clip(v, -m, m).astype(dtype)


def int8_static_tile(x, scale, inv, zero_point, *, interpret: bool):
    """A float tile quantized to INT8 with a static scale, as :func:`quark_jax.quant.scaled_int8_quant`:
    symmetric (``zero_point`` None) ``sat8(rne(f32(x) / scale))`` with a true division; asymmetric
    ``sat8(rne(f32(x) * inv) + zero_point)`` with ``inv = 1 / scale`` (both NaN -> 0 before the zero point).

    >>> int8_static_tile(jnp.array([[0.25, -12.8, 100.0]]), jnp.float32(0.1), None, None, interpret=True).tolist()
    [[2, -128, 127]]
    """
    xf = x.astype(jnp.float32)
    if zero_point is None:
        r = rni_sat_s32(div_rn(xf, jnp.broadcast_to(scale, xf.shape), interpret=interpret), interpret=interpret)
    else:
        r = rni_sat_s32(xf * inv, interpret=interpret)
        r = jnp.minimum(r, jnp.int32(_I32_MAX_SAFE)) + zero_point
    return jnp.clip(r, formats.INT8_MIN, formats.INT8_MAX).astype(jnp.int8)


def _round(v, dtype, *, interpret: bool):
    """float32 ``v`` rounded (nearest even) to ``dtype``: the cast (a real ``cvt.rn`` in Triton); in interpret mode
    through :func:`quark_jax.quant.round_to`, which XLA's excess precision cannot skip."""
    return round_to(v, dtype) if interpret else v.astype(dtype)


def rmsnorm_tile(h, rinv, weight, *, interpret: bool):
    """The decoder's RMSNorm output from its pieces: ``dtype(weight * dtype(h * rinv))`` with the products in
    float32 (``quark_jax.models.llama.RMSNorm``, the statistics ``rinv = rsqrt(mean(h**2) + eps)`` computed
    beforehand), in h's dtype. h [rows, k]; rinv [rows, 1] float32; weight [1, k] (or [k]).

    >>> rmsnorm_tile(jnp.array([[3.0, -4.0]], jnp.bfloat16), jnp.float32([[0.5]]), jnp.array([2.0, 1.0],
    ...              jnp.bfloat16), interpret=True).astype(jnp.float32).tolist()
    [[3.0, -2.0]]
    """
    dt = h.dtype
    y = _round(h.astype(jnp.float32) * rinv, dt, interpret=interpret).astype(jnp.float32)
    return _round(weight.astype(jnp.float32) * y, dt, interpret=interpret)


def _sigmoid(v, *, interpret: bool):
    if interpret:  # XLA's logistic, as jax.nn.silu computes it outside the kernel
        return jax.nn.sigmoid(v)
    # vLLM's silu_and_mul: x / (1 + exp(-x)) in float32, here with a correctly rounded division (Triton's "/" is
    # approximate) and libdevice's expf (__nv_expf, within 2 ulp)
    return div_rn(jnp.ones(v.shape, jnp.float32), 1.0 + jnp.exp(-v), interpret=False)


def silu_mul_tile(gate, up, *, interpret: bool):
    """``dtype(silu(f32(gate)) * f32(up))`` (vLLM's ``SiluAndMul`` op order: SiLU in float32 of the model-dtype
    inputs, times up, rounded once), in gate's dtype. ``silu(g) = g * sigmoid(g)``: XLA's logistic in interpret
    mode (bit for bit ``jax.nn.silu``), ``g * (1 / (1 + exp(-g)))`` compiled (SPEC 11.7 bounds the difference).

    >>> silu_mul_tile(jnp.array([[0.0, 2.0]], jnp.bfloat16), jnp.array([[5.0, 1.0]], jnp.bfloat16),
    ...               interpret=True).astype(jnp.float32).tolist()
    [[0.0, 1.7578125]]
    """
    g = gate.astype(jnp.float32)
    return _round(g * _sigmoid(g, interpret=interpret) * up.astype(jnp.float32), gate.dtype, interpret=interpret)


def transform_reference(transform: str, x, rinv=None, weight=None):
    """What a kernel with prologue ``transform`` forms from x (outside a kernel, in XLA; the unfused composition
    the kernels equal): "none" x; "rmsnorm" :func:`rmsnorm_tile` of h = x [M, K] with ``rinv`` [M, 1] and
    ``weight`` [K]; "silu_mul" :func:`silu_mul_tile` of x = [M, 2K] (gate columns, then up: vLLM's fused
    gate_up layout) -> [M, K].

    >>> transform_reference("silu_mul", jnp.array([[0.0, 2.0, 5.0, 1.0]], jnp.bfloat16)).astype(jnp.float32).tolist()
    [[0.0, 1.7578125]]
    """
    if transform == "none":
        return x
    if transform == "rmsnorm":
        return rmsnorm_tile(x, jnp.asarray(rinv, jnp.float32).reshape(x.shape[0], 1),
                            jnp.asarray(weight).reshape(1, -1), interpret=True)
    if transform == "silu_mul":
        k = x.shape[-1] // 2
        return silu_mul_tile(x[..., :k], x[..., k:], interpret=True)
    raise ValueError(f"transform: expected one of {TRANSFORMS}, got {transform!r}")
