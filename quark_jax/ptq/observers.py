"""Quark's calibration numerics as pure numpy functions: observed ranges -> scales / zero points, and the
real-quantized weight tensors amd-quark's exporter writes (SPEC section 8).

Everything here is IEEE float32 arithmetic in numpy (correctly rounded, no fused or reordered operations), with
values rounded to the model dtype where Quark computes in the model dtype (a bf16 model's scales are bf16):

* FP8 scale: ``s = dtype(amax / 448)``, ``amax = max(|min(min, 0)|, max(max, 0))``; a zero scale becomes float32
  eps (2**-23).
* INT8 symmetric scale: ``s = dtype(amax / 127.5)`` (``(qmax - qmin) / 2``, not 127), at least eps.
* INT8 asymmetric: ``s = dtype((max(max, 0) - min(min, 0)) / 255)`` (at least eps),
  ``z = clamp(-128 - rne(dtype(min(min, 0) / s)), -128, 127)``.
* INT4 (symmetric) / UINT4 (asymmetric) weights per group or channel: as INT8 with ``(qmax - qmin) / 2 = 7.5``
  and ``255 -> 15``, the UINT4 zero point ``clamp(-rne(min(lo, 0) / s), 0, 15)``.
* Exported FP8 weight: ``fp8(clamp(dtype(W / s), ±448))``; INT8 weight: ``sat8(rne(W * f32(1 / s)) + z)``;
  MXFP4 weight: :func:`quark_jax.quant.quantize_mxfp4` (the bytes Quark exports).
"""

from __future__ import annotations

from typing import Mapping

import ml_dtypes
import numpy as np

from quark_jax import formats

__all__ = ["EPS", "MinMax", "scale_dtype", "fp8_scale", "int8_symmetric_scale", "int8_asymmetric_qparams",
           "int4_qparams", "quantize_fp8_weight", "quantize_int8_weight", "quantize_int4_weight", "weight_range",
           "group_range"]

EPS = np.float32(np.finfo(np.float32).eps)
"""Quark's floor for a zero scale (``torch.finfo(torch.float32).eps``)."""

_SCALE_TYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


class MinMax:
    """A running min/max (Quark's min-max observers): per tensor (``axis=None``) or per row of a 2-D tensor
    (``axis=0``, Quark's ``ch_axis=0`` per-channel weights). Values are kept in float32 (exact for bf16/f16).

    >>> m = MinMax(); m.update(np.array([1.0, -3.0])); m.update(np.array([2.0])); (float(m.min), float(m.max))
    (-3.0, 2.0)
    """

    def __init__(self, axis: int | None = None):
        self.axis = axis
        self.min = None
        self.max = None

    def update(self, x) -> None:
        x = np.asarray(x).astype(np.float32)
        if self.axis is None:
            lo, hi = np.float32(x.min()), np.float32(x.max())
        else:
            lo, hi = x.min(axis=1 - self.axis), x.max(axis=1 - self.axis)
        self.merge(lo, hi)

    def merge(self, lo, hi) -> None:
        """Fold in an already reduced (min, max) pair."""
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        self.min = lo if self.min is None else np.minimum(self.min, lo)
        self.max = hi if self.max is None else np.maximum(self.max, hi)

    @property
    def seen(self) -> bool:
        return self.min is not None


def scale_dtype(spec: Mapping, model_dtype) -> np.dtype:
    """The dtype Quark stores a scale in: ``scale_type`` float32/float16/bfloat16 as named, else (``"float"`` or
    null) the model dtype.

    >>> scale_dtype({"scale_type": "float"}, ml_dtypes.bfloat16).name, scale_dtype({"scale_type": "float32"}, ml_dtypes.bfloat16).name
    ('bfloat16', 'float32')
    """
    return np.dtype(_SCALE_TYPES.get(spec.get("scale_type"), model_dtype))


def _round(v, dtype) -> np.ndarray:
    """float32 ``v`` rounded (nearest even) to ``dtype``."""
    return np.asarray(v, np.float32).astype(dtype)


def _amax(lo, hi, dtype):
    lo = _round(np.minimum(lo, 0), dtype).astype(np.float32)
    hi = _round(np.maximum(hi, 0), dtype).astype(np.float32)
    return np.maximum(np.abs(lo), np.abs(hi))


def fp8_scale(lo, hi, *, model_dtype, spec: Mapping | None = None, fp8_max: float = 448.0) -> np.ndarray:
    """FP8 scale from an observed range: ``dtype(amax / 448)`` in the scale dtype (:func:`scale_dtype`); zero
    -> eps. ``lo``/``hi`` scalars (per tensor) or [N] (per channel); returns the same shape.

    >>> fp8_scale(np.float32(-896.0), np.float32(3.0), model_dtype=np.float32).item()
    2.0
    """
    sd = scale_dtype(spec or {}, model_dtype)
    amax = _round(_amax(lo, hi, model_dtype), sd).astype(np.float32)
    s = _round(amax / np.float32(fp8_max), sd)
    return np.where(s == 0, EPS.astype(sd), s).astype(sd)


def int8_symmetric_scale(lo, hi, *, model_dtype) -> np.ndarray:
    """INT8 symmetric scale ``max(dtype(amax / 127.5), eps)`` (Quark: ``amax / ((qmax - qmin) / 2)``).

    A 0-d scale of a bf16/f16 model comes back float32 (torch promotes the 0-d max with the float32 eps); a
    per-channel one stays in the model dtype.

    >>> bool(int8_symmetric_scale(np.float32(-2.55), np.float32(1.0), model_dtype=np.float32) == np.float32(2.55) / np.float32(127.5))
    True
    """
    amax = _amax(lo, hi, model_dtype)
    s = _round(amax / np.float32(127.5), model_dtype).astype(np.float32)
    s = np.maximum(s, EPS)
    out = np.float32 if np.ndim(s) == 0 else model_dtype
    return _round(s, out)


def int8_asymmetric_qparams(lo, hi, *, model_dtype) -> tuple[np.ndarray, np.ndarray]:
    """INT8 asymmetric ``(scale, zero_point int8)`` (Quark's int32-zero-point rule, with float32 arithmetic):
    ``s = max(dtype((max(hi, 0) - min(lo, 0)) / 255), eps)``, ``z = clamp(-128 - rne(min(lo, 0) / s))``.

    >>> s, z = int8_asymmetric_qparams(np.float32(-1.0), np.float32(3.0), model_dtype=np.float32)
    >>> bool(s == np.float32(4.0) / np.float32(255.0)), int(z)
    (True, -64)
    """
    lo_n = _round(np.minimum(lo, 0), model_dtype).astype(np.float32)
    hi_p = _round(np.maximum(hi, 0), model_dtype).astype(np.float32)
    span = _round(hi_p - lo_n, model_dtype).astype(np.float32)
    s = np.maximum(_round(span / np.float32(255.0), model_dtype).astype(np.float32), EPS)
    out = np.float32 if np.ndim(s) == 0 else model_dtype
    s = _round(s, out).astype(np.float32)
    q = _round(lo_n / s, out).astype(np.float32)
    z = np.clip(-128 - np.round(q), formats.INT8_MIN, formats.INT8_MAX).astype(np.int8)
    return _round(s, out), z


def int4_qparams(lo, hi, *, signed: bool, model_dtype) -> tuple[np.ndarray, np.ndarray]:
    """INT4 / UINT4 ``(scale, zero point int32)`` per group or channel (``lo``/``hi`` arrays): symmetric INT4
    ``s = max(dtype(amax / 7.5), eps)``, ``z = 0``; asymmetric UINT4 ``s = max(dtype((max(hi, 0) - min(lo, 0)) /
    15), eps)``, ``z = clamp(-rne(min(lo, 0) / s), 0, 15)``. The scale is in the model dtype.

    >>> s, z = int4_qparams(np.array([-1.0, -0.5], np.float32), np.array([2.0, 1.0], np.float32), signed=False,
    ...                     model_dtype=np.float32)
    >>> s.tolist() == [np.float32(3) / np.float32(15), np.float32(1.5) / np.float32(15)], z.tolist()
    (True, [5, 5])
    """
    lo_n = _round(np.minimum(lo, 0), model_dtype).astype(np.float32)
    hi_p = _round(np.maximum(hi, 0), model_dtype).astype(np.float32)
    if signed:
        s = _round(np.maximum(np.abs(lo_n), hi_p) / np.float32(7.5), model_dtype).astype(np.float32)
        s = np.maximum(s, EPS)
        return _round(s, model_dtype), np.zeros(np.shape(s), np.int32)
    span = _round(hi_p - lo_n, model_dtype).astype(np.float32)
    s = np.maximum(_round(span / np.float32(15.0), model_dtype).astype(np.float32), EPS)
    s = _round(s, model_dtype).astype(np.float32)
    q = _round(lo_n / s, model_dtype).astype(np.float32)
    return _round(s, model_dtype), np.clip(-np.round(q), 0, 15).astype(np.int32)


def quantize_int4_weight(w, scale, zero_point, *, signed: bool) -> np.ndarray:
    """INT4 / UINT4 codes (int32, unpacked, W's shape) ``clamp(rne(W * f32(1 / s)) + z)``; ``scale`` and
    ``zero_point`` broadcast against W (e.g. [N, G, 1] for W [N, G, g]).

    >>> quantize_int4_weight(np.array([0.25, -2.0, 0.95]), np.float32(0.1), 0, signed=True).tolist()
    [2, -8, 7]
    """
    inv = (np.float32(1.0) / np.asarray(scale, np.float32)).astype(np.float32)
    q = np.round((np.asarray(w, np.float32) * inv).astype(np.float32)) + np.asarray(zero_point, np.float32)
    return np.clip(q, -8 if signed else 0, 7 if signed else 15).astype(np.int32)


def group_range(w, group_size: int):
    """(min, max) per group of ``group_size`` along the rows of W [N, K]: two [N, K / group_size] arrays.

    >>> lo, hi = group_range(np.arange(8.0).reshape(2, 4), 2)
    >>> lo.tolist(), hi.tolist()
    ([[0.0, 2.0], [4.0, 6.0]], [[1.0, 3.0], [5.0, 7.0]])
    """
    w = np.asarray(w, np.float32)
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input width {k}")
    g = w.reshape(n, k // group_size, group_size)
    return g.min(-1), g.max(-1)


def weight_range(w, qscheme: str):
    """(min, max) of a weight [N, K]: scalars for ``per_tensor``, [N] for ``per_channel`` (axis 0)."""
    m = MinMax(axis=None if qscheme == "per_tensor" else 0)
    m.update(w)
    return m.min, m.max


def _rows(s, w):
    s = np.asarray(s, np.float32)
    return s.reshape(-1, 1) if s.ndim == 1 else s


def quantize_fp8_weight(w, scale, *, model_dtype, dtype=ml_dtypes.float8_e4m3fn) -> np.ndarray:
    """Quark's exported FP8 weight: ``fp8(clamp(dtype(W / s), ±max))``; ``scale`` 0-d or [N].

    >>> quantize_fp8_weight(np.array([[1.0, -900.0]], np.float32), np.float32(0.5), model_dtype=np.float32).astype(np.float32).tolist()
    [[2.0, -448.0]]
    """
    m = np.float32(formats.fp8_max(dtype))
    q = _round(np.asarray(w, np.float32) / _rows(scale, w), model_dtype).astype(np.float32)
    return np.clip(q, -m, m).astype(dtype)


def quantize_int8_weight(w, scale, zero_point=None) -> np.ndarray:
    """Quark's exported INT8 weight: ``sat8(rne(W * f32(1 / s)) + z)``; ``scale`` 0-d or [N].

    >>> quantize_int8_weight(np.array([[0.25, -20.0, 0.15]], np.float32), np.float32(0.1)).tolist()
    [[2, -128, 2]]
    """
    inv = (np.float32(1.0) / _rows(scale, w)).astype(np.float32)
    q = np.round(np.asarray(w, np.float32) * inv)
    if zero_point is not None:
        q = q + _rows(np.asarray(zero_point, np.float32), w)
    return np.clip(q, formats.INT8_MIN, formats.INT8_MAX).astype(np.int8)
