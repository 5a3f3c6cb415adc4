"""Weight processing after loading (SPEC section 3): pure, jittable functions run once per layer.

``logical_widths`` are the output sizes of the shards of a fused layer (q, k, v or gate, up), in row order; an
unfused layer has one shard, ``(N,)``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax import formats
from quark_jax.quant.division import true_divide
from quark_jax.quant.fp8 import fp8_saturating_cast
from quark_jax.quant.rounding import round_to

__all__ = [
    "requantize_with_max_scale",
    "convert_to_channelwise",
    "normalize_e4m3fn_to_e4m3fnuz",
    "reconstruct_static_azp",
    "compute_azp_adj",
]


def _widths(name: str, logical_widths: Sequence[int], rows: int) -> tuple[int, ...]:
    widths = tuple(int(w) for w in logical_widths)
    if not widths or any(w <= 0 for w in widths) or sum(widths) != rows:
        raise ValueError(f"logical_widths: expected positive shard sizes summing to {rows} rows of {name}, "
                         f"got {widths}")
    return widths


def _shard_scales(weight_scale, n_shards: int):
    s = jnp.asarray(weight_scale).astype(jnp.float32).reshape(-1)
    if s.shape[0] != n_shards:
        raise ValueError(f"weight_scale: expected one per-tensor scale per shard ({n_shards}), got shape "
                         f"{jnp.shape(weight_scale)}")
    return s


def requantize_with_max_scale(weight, weight_scale, logical_widths):
    """Re-quantize the shards of a per-tensor FP8 weight to their largest scale (vLLM-exact).

    ``weight`` [N, K] fp8, ``weight_scale`` one f32 scale per shard. For each shard i:
    ``dq = f16(f32(q_i) * f32(f16(s_i)))`` — vLLM's ``q.to(float16) * weight_scale[i]``, where torch rounds the 0-d
    float32 scale to float16 before multiplying (measured on an H100 with torch 2.11: 254/254 codes agree with this
    form, 108-226/254 with an unrounded scale; benchmarks/results/torch_f16_dequant_h100_2026-11-25.txt, in git
    at commit 9a21834) — then
    ``q = fp8(clamp(f32(dq) * (1/s_max)))`` with the float32 ``s_max``. vLLM does this for every layer,
    single-shard ones included. Returns ``(weight [N, K] same fp8 dtype, s_max 0-d f32)``.

    >>> import jax.numpy as jnp
    >>> w = jnp.array([[2.0], [4.0]], jnp.float8_e4m3fn)
    >>> q, s = requantize_with_max_scale(w, jnp.array([0.5, 1.0]), (1, 1))
    >>> q.astype(jnp.float32).ravel().tolist(), float(s)
    ([1.0, 4.0], 1.0)
    """
    weight = jnp.asarray(weight)
    if not formats.is_fp8_dtype(weight.dtype):
        raise TypeError(f"weight: expected float8_e4m3fn/fnuz [N, K], got {weight.dtype}")
    widths = _widths("weight", logical_widths, weight.shape[0])
    scales = _shard_scales(weight_scale, len(widths))
    s_max = jnp.max(scales)
    # float16 roundings through round_to (reduce_precision): XLA on GPU deletes f32 -> f16 -> f32 convert pairs
    scales16 = round_to(scales, jnp.float16).astype(jnp.float32)
    row_scale = jnp.repeat(scales16, jnp.asarray(widths), total_repeat_length=weight.shape[0])[:, None]
    dq = round_to(weight.astype(jnp.float32) * row_scale, jnp.float16)
    return fp8_saturating_cast(dq.astype(jnp.float32) * true_divide(1.0, s_max), weight.dtype), s_max


def convert_to_channelwise(weight_scale, logical_widths):
    """Expand one scale per shard to one per output row: returns f32 [N] with shard i's scale over its rows.

    >>> convert_to_channelwise(jnp.array([1.0, 2.0]), (2, 1)).tolist()
    [1.0, 1.0, 2.0]
    """
    widths = tuple(int(w) for w in logical_widths)
    scales = _shard_scales(weight_scale, len(widths))
    return jnp.repeat(scales, jnp.asarray(widths), total_repeat_length=sum(widths))


def normalize_e4m3fn_to_e4m3fnuz(weight, weight_scale, input_scale=None):
    """Reinterpret an e4m3fn weight as e4m3fnuz (ROCm MI300), doubling the scales (vLLM-exact).

    The bit pattern 0x80 (-0 in e4m3fn, NaN in fnuz) becomes 0x00; every other byte keeps its bits, which in
    fnuz denote half the value, hence scales x2. Returns ``(weight, weight_scale, input_scale)`` (input_scale
    stays None when not given).

    >>> import jax.numpy as jnp
    >>> w, s, _ = normalize_e4m3fn_to_e4m3fnuz(jnp.array([1.0, -0.0], jnp.float8_e4m3fn), jnp.float32(0.5))
    >>> (w.astype(jnp.float32) * s).tolist()  # unchanged products: 1.0 * 0.5 and -0.0 -> +0.0
    [0.5, 0.0]
    """
    weight = jnp.asarray(weight)
    if weight.dtype != jnp.float8_e4m3fn:
        raise TypeError(f"weight: expected float8_e4m3fn, got {weight.dtype}")
    bits = weight.view(jnp.int8)
    bits = jnp.where(bits == jnp.int8(-128), jnp.int8(0), bits)
    weight = bits.view(jnp.float8_e4m3fnuz)
    weight_scale = jnp.asarray(weight_scale).astype(jnp.float32) * 2.0
    if input_scale is not None:
        input_scale = jnp.asarray(input_scale).astype(jnp.float32) * 2.0
    return weight, weight_scale, input_scale


def reconstruct_static_azp(input_scale, input_zero_point):
    """vLLM's rebuild of a static asymmetric INT8 input quantizer from (scale, zero point), in float32.

    ``range_max = s*(127 - z)``, ``range_min = s*(-128 - z)``, ``s' = (range_max - range_min)/255``,
    ``z' = trunc(-128 - range_min/s')`` (toward zero). Returns ``(s' 0-d f32, z' 0-d int32)``. ``z'`` differs from
    the checkpoint's ``z`` by one in about 10% of cases; that is vLLM's behaviour, kept on purpose.
    ``input_scale`` and ``input_zero_point`` may also hold one value per fused shard (same shape): then
    ``range_max`` is the max and ``range_min`` the min over the shards, as vLLM does.

    >>> s, z = reconstruct_static_azp(jnp.float32(0.05), jnp.int8(-20))
    >>> round(float(s), 6), int(z)
    (0.05, -20)
    """
    s = jnp.asarray(input_scale).astype(jnp.float32).reshape(-1)
    z = jnp.asarray(input_zero_point).astype(jnp.float32).reshape(-1)
    if s.shape != z.shape:
        raise ValueError(f"input_zero_point: expected one zero point per input scale ({s.shape[0]}), got "
                         f"{z.shape[0]}")
    # Computed on the host with numpy float32, one rounding per operation like vLLM's separate torch ops: under
    # jit, XLA fuses ``s*(127-z) - s*(-128-z)`` into an FMA (CPU and GPU alike), which moves s' by one ulp.
    out = (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32))
    return jax.pure_callback(_reconstruct_static_azp_np, out, s, z)


def _reconstruct_static_azp_np(s, z):
    f32 = np.float32
    s = np.asarray(s, f32)
    z = np.asarray(z, f32)
    range_max = np.max(s * (f32(127) - z))
    range_min = np.min(s * (f32(-128) - z))
    s_new = f32(f32(range_max - range_min) / f32(255))
    z_new = np.int32(np.trunc(f32(f32(-128) - f32(range_min / s_new))))
    return np.asarray(s_new, f32), np.asarray(z_new, np.int32)


def compute_azp_adj(weight, azp):
    """``azp_adj[n] = azp * sum_k Wq[n, k]`` as int32 [N] for int8 ``weight`` [N, K] and a scalar zero point.

    With a per-token zero point, pass ``azp=1`` to get the column sums themselves (the kernel multiplies by
    ``azp[m]``).

    >>> compute_azp_adj(jnp.array([[1, 2], [-3, 4]], jnp.int8), 2).tolist()
    [6, 2]
    """
    weight = jnp.asarray(weight)
    if weight.dtype != jnp.int8 or weight.ndim != 2:
        raise TypeError(f"weight: expected int8 [N, K], got {weight.dtype} {tuple(weight.shape)}")
    colsum = jnp.sum(weight.astype(jnp.int32), axis=1)
    return jnp.asarray(azp).astype(jnp.int32).reshape(()) * colsum
