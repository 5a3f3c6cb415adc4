"""INT8 activation quantizers: static symmetric/asymmetric (vLLM-exact) and dynamic per-token (SPEC section 2)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax import formats
from quark_jax.quant.rounding import exact_f32
from quark_jax.quant._checks import nan_max_abs, require_float, require_rank, scalar_f32, static_scale
from quark_jax.quant.division import true_divide

__all__ = ["scaled_int8_quant"]


def _sat8(v_int32):
    return jnp.clip(v_int32, formats.INT8_MIN, formats.INT8_MAX).astype(jnp.int8)


def _rne_int32(v_f32):
    # jnp.round is round-half-to-even; clip before the int cast so huge values saturate instead of wrapping;
    # NaN -> 0 (PTX cvt.rni.sat, which vLLM uses)
    v = jnp.where(jnp.isnan(v_f32), 0.0, v_f32)
    return jnp.clip(jnp.round(v), -(2.0**31), 2.0**31 - 256).astype(jnp.int32)


def scaled_int8_quant(x, scale=None, azp=None, *, symmetric=True, axis_name=None):
    """Quantize ``x`` [..., K] to INT8; returns ``(q, scale, azp)`` with ``x ≈ (f32(q) - azp) * scale``.

    * ``scale`` given, ``azp`` None (static symmetric, vLLM-exact): ``q = sat8(rne(f32(x) / scale))``; returns
      ``azp=None``.
    * ``scale`` and ``azp`` given (static asymmetric, vLLM-exact): ``q = sat8(rne_int32(f32(x) * (1/scale)) + azp)``;
      ``azp`` returned as 0-d int32.
    * ``scale`` None, ``symmetric=True`` (dynamic per-token): ``s = amax/127`` shape [..., 1],
      ``q = sat8(rne(f32(x) * (127/amax)))``, all-zero rows give q = 0 and s = 0; returns ``azp=None``.
    * ``scale`` None, ``symmetric=False`` (dynamic per-token asymmetric): ``s = (max - min)/255``,
      ``azp = rne(-128 - min/s)`` (int32 [..., 1]), ``q = sat8(rne(f32(x) / s) + azp)``. A constant row
      (max == min, where vLLM divides by zero) gets ``s = |c|/127`` (1 for zeros) so it dequantizes exactly.

    ``axis_name`` (inside ``shard_map``; dynamic only): the mesh axis name(s) K is split over; the row amax / max /
    min are reduced over them (``pmax`` / ``pmin``), so every shard quantizes with the whole row's scale.

    Static scales and zero points must be scalars (shape () or (1,)); a concrete (not traced) static scale must be
    finite and > 0 (ValueError otherwise). Jittable.

    Non-finite input, as vLLM's CUDA kernels (``cvt.rni.sat`` conversions, ``fmaxf``/``fminf`` reductions): a NaN
    element gives code 0 (static asymmetric: ``azp``) and is left out of the dynamic amax / min / max; ±inf
    saturates to ±127 / -128 with a static scale; with a dynamic symmetric scale an inf element makes the row's
    scale inf and every code of the row 0. Ours differs in one corner: a static asymmetric +inf with a positive
    ``azp`` saturates to 127 (vLLM's int32 addition overflows there).

    >>> import jax.numpy as jnp
    >>> q, s, z = scaled_int8_quant(jnp.array([0.25, -12.8, 100.0]), jnp.float32(0.1))
    >>> q.tolist(), z
    ([2, -128, 127], None)
    """
    require_float("x", x)
    require_rank("x", x)
    xf = exact_f32(x)

    if scale is not None:
        s = static_scale("scale", scale)
        if azp is None:
            if not symmetric:
                raise ValueError("azp: symmetric=False with a static scale needs the static zero point azp")
            return _sat8(_rne_int32(true_divide(xf, s))), s, None
        z = scalar_f32("azp", azp).astype(jnp.int32)
        return _sat8(_rne_int32(xf * true_divide(1.0, s)) + z), s, z

    if azp is not None:
        raise ValueError("azp: a static zero point needs a static scale; pass scale too, or neither for dynamic")

    if symmetric:
        amax = nan_max_abs(xf, axis=-1, keepdims=True)
        if axis_name:
            amax = lax.pmax(amax, axis_name)
        safe = jnp.where(amax == 0, 1.0, amax)
        q = jnp.where(amax == 0, 0.0, xf * true_divide(127.0, safe))
        return _sat8(_rne_int32(q)), true_divide(amax, 127.0), None

    nan = jnp.isnan(xf)
    xmax = jnp.max(jnp.where(nan, -jnp.inf, xf), axis=-1, keepdims=True)
    xmin = jnp.min(jnp.where(nan, jnp.inf, xf), axis=-1, keepdims=True)
    if axis_name:
        xmax, xmin = lax.pmax(xmax, axis_name), lax.pmin(xmin, axis_name)
    s = true_divide(xmax - xmin, 255.0)
    degenerate = s == 0
    s = jnp.where(degenerate, jnp.where(xmax == 0, 1.0, true_divide(jnp.abs(xmax), 127.0)), s)
    z = _rne_int32(-128.0 - true_divide(xmin, s))
    return _sat8(_rne_int32(true_divide(xf, s)) + z), s, z
