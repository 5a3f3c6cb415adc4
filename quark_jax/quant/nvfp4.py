"""NVFP4 (E2M1 elements, blocks of 16 along K, FP8 E4M3 block scales, one float32 per-tensor global scale): vLLM's
emulation quantizer ``ref_nvfp4_quant`` and dequantizer, bit for bit (SPEC section 2). No NVFP4 scheme uses them yet
(a Quark NVFP4 layer is an ``UnsupportedSchemeError``); they are the numerics a ``QuarkNVFP4`` will call."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from quark_jax import formats
from quark_jax.quant._checks import require_float, require_multiple, require_rank
from quark_jax.quant.division import true_divide
from quark_jax.quant.fp8 import fp8_saturating_cast
from quark_jax.quant.mxfp4 import round_to_e2m1
from quark_jax.quant.rounding import exact_f32

__all__ = ["NVFP4_BLOCK_SIZE", "quantize_nvfp4", "dequantize_nvfp4", "qdq_nvfp4"]

NVFP4_BLOCK_SIZE = 16
_INV_E2M1_MAX = np.float32(1.0) / np.float32(formats.E2M1_MAX)  # vLLM's FLOAT4_E2M1_MAX_RECIPROCAL in float32


def _reciprocal(v):
    """vLLM's ``get_reciprocal``: ``1 / (v + (v == 0) * 1e8)``."""
    return true_divide(jnp.float32(1.0), v + jnp.where(v == 0, 1e8, 0.0).astype(jnp.float32))


def _quantize(x, global_scale):
    require_float("x", x)
    require_rank("x", x)
    k = x.shape[-1]
    require_multiple("x", k, NVFP4_BLOCK_SIZE, f"the last (K) axis of shape {tuple(x.shape)}")
    g = jnp.asarray(global_scale, jnp.float32).reshape(())
    xb = exact_f32(x).reshape(*x.shape[:-1], k // NVFP4_BLOCK_SIZE, NVFP4_BLOCK_SIZE)
    vec_max = jnp.max(jnp.abs(xb), axis=-1, keepdims=True)
    scale = fp8_saturating_cast(g * (vec_max * _INV_E2M1_MAX)).astype(jnp.float32)
    out_scale = _reciprocal(scale * _reciprocal(g))
    q = round_to_e2m1(jnp.clip(xb * out_scale, -formats.E2M1_MAX, formats.E2M1_MAX))
    return q, scale, g


def quantize_nvfp4(x, global_scale):
    """Quantize ``x`` [..., K] (K a multiple of 16) with the per-tensor ``global_scale`` (vLLM's
    ``input_global_scale``: ``448 * 6 / amax``-like, the inverse of the dequant multiplier).

    Per block of 16: ``s = fp8(clamp(g * (amax / 6)))``, ``q = e2m1(clamp(x * 1/(s * 1/g), ±6))`` (ties to even).
    Returns ``(packed uint8 [..., K/2] (low nibble first), block scales float8_e4m3fn [..., K/16])``. Jittable.

    >>> p, s = quantize_nvfp4(jnp.concatenate([jnp.array([6.0, 3.0, -1.0]), jnp.zeros(13)]), 1.0)
    >>> p[:2].tolist(), s.astype(jnp.float32).tolist()
    ([87, 10], [1.0])
    """
    q, scale, _ = _quantize(x, global_scale)
    codes = formats.pack_nibbles(_e2m1_codes(q.reshape(x.shape)))
    return codes, scale[..., 0].astype(jnp.float8_e4m3fn)


def _e2m1_codes(r):
    a = jnp.abs(r)
    mag = jnp.where(a < 2.0, a * 2.0, jnp.where(a < 4.0, a + 2.0, a * 0.5 + 4.0)).astype(jnp.uint8)
    return mag | jnp.where((r < 0) & (mag != 0), jnp.uint8(8), jnp.uint8(0))


def dequantize_nvfp4(packed, block_scales, global_scale, dtype=jnp.float32):
    """``e2m1(code) * (f32(block_scale) * (1 / global_scale))`` as ``dtype`` [..., K] (vLLM's dequantization with
    its global scale ``1 / global_scale``). Jittable.

    >>> dequantize_nvfp4(jnp.array([87, 10, 0, 0, 0, 0, 0, 0], jnp.uint8), jnp.array([2.0], jnp.float8_e4m3fn),
    ...                  0.5)[:3].tolist()
    [24.0, 12.0, -4.0]
    """
    packed, block_scales = jnp.asarray(packed), jnp.asarray(block_scales)
    if block_scales.dtype != jnp.float8_e4m3fn:
        raise TypeError(f"block_scales: expected float8_e4m3fn [..., K/16], got {block_scales.dtype}")
    values = jnp.asarray(formats.e2m1_values_np())[formats.unpack_nibbles(packed).astype(jnp.int32)]
    k = values.shape[-1]
    want = (*values.shape[:-1], k // NVFP4_BLOCK_SIZE)
    if tuple(block_scales.shape) != want:
        raise ValueError(f"block_scales: expected shape {want} for packed {tuple(packed.shape)}, got "
                         f"{tuple(block_scales.shape)}")
    inv_g = true_divide(jnp.float32(1.0), jnp.asarray(global_scale, jnp.float32).reshape(()))
    s = block_scales.astype(jnp.float32) * inv_g
    return (values.reshape(*want, NVFP4_BLOCK_SIZE) * s[..., None]).reshape(values.shape).astype(dtype)


def qdq_nvfp4(x, global_scale):
    """vLLM's ``ref_nvfp4_quant_dequant``: ``q * (s / g)`` in float32, returned in x's dtype. Jittable.

    >>> qdq_nvfp4(jnp.concatenate([jnp.array([6.0, 2.9, -1.1, 0.2]), jnp.zeros(12)]), 1.0)[:4].tolist()
    [6.0, 3.0, -1.0, 0.0]
    """
    q, scale, g = _quantize(x, global_scale)
    return (q * true_divide(scale, g)).reshape(x.shape).astype(x.dtype)
