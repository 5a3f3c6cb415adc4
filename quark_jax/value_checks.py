"""Value checks of checkpoint tensors (host-side numpy, vectorized): what a checkpoint's header cannot say.

* float scales (``weight_scale``, ``input_scale``, ``output_scale``, ``k_scale``, ``v_scale``): finite and > 0
  (a zero scale makes the quantizer divide by zero, a NaN/inf or negative one poisons or flips every output);
* E8M0 block scales (MXFP4 ``weight_scale``, uint8 bytes): not 255, the NaN encoding of the OCP MX format;
* (full validation only, :func:`quark_jax.validate_checkpoint`) weights: no FP8 NaN codes, float values finite.

Each check is one or two reductions over the array (min/max), so it costs a fraction of reading the bytes; only a
tensor that fails is scanned again to describe what is wrong. Problems come back as :class:`CheckpointProblem`
(the fields of :class:`~quark_jax.errors.CheckpointError`); ``.error()`` makes the exception.

>>> import numpy as np
>>> p = scale_problem(np.array([0.5, np.nan, 0.0], np.float32), tensor="l.weight_scale", layer="l")
>>> print(p)
layer l: tensor 'l.weight_scale': expected finite scales > 0, found 2 of 3 values that are not: nan at [1], 0.0 at [2]
>>> scale_problem(np.array([127, 255], np.uint8), tensor="l.weight_scale").found
'1 of 2 E8M0 bytes are 255 (NaN): at [1]'
>>> scale_problem(np.array([1.0], np.float32), tensor="t") is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from quark_jax.errors import CheckpointError

__all__ = ["CheckpointProblem", "SCALE_SUFFIXES", "is_scale_name", "scale_problem", "weight_problem",
           "tensor_problem", "check_scale"]

SCALE_SUFFIXES = ("weight_scale", "input_scale", "output_scale", "k_scale", "v_scale")
"""Tensor name endings (after the last dot) that hold quantization scales."""

E8M0_NAN = 255
_FP8_NAN = {np.dtype(ml_dtypes.float8_e4m3fn): (0x7F, 0x7F), np.dtype(ml_dtypes.float8_e4m3fnuz): (0xFF, 0x80),
            np.dtype(ml_dtypes.float8_e5m2fnuz): (0xFF, 0x80)}
"""FP8 dtype -> (mask, value): a byte b is NaN when ``b & mask == value`` (e5m2 has inf/NaN: checked as float)."""


@dataclass(frozen=True)
class CheckpointProblem:
    """One problem of a checkpoint: ``message`` says it all; the other fields (None where they do not apply) name
    the file, tensor, layer and field, what was expected and what was found."""

    message: str
    file: str | None = None
    tensor: str | None = None
    layer: str | None = None
    field: str | None = None
    expected: str | None = None
    found: str | None = None

    def __str__(self) -> str:
        return self.message

    def error(self) -> CheckpointError:
        """This problem as an exception."""
        return CheckpointError(self.message, file=self.file, tensor=self.tensor, layer=self.layer, field=self.field,
                               expected=self.expected, found=self.found)

    @classmethod
    def from_error(cls, e: Exception, **defaults) -> "CheckpointProblem":
        """A problem from a raised quark_jax error (its fields where it has them, else ``defaults``)."""
        fields = {k: getattr(e, k, None) or defaults.get(k) for k in
                  ("file", "tensor", "layer", "field", "expected", "found")}
        return cls(" ".join(str(e).split()), **fields)


def is_scale_name(name: str) -> bool:
    """Whether a tensor name ends in a scale suffix (``...q_proj.weight_scale``, ``...self_attn.k_scale``)."""
    return name.rpartition(".")[2] in SCALE_SUFFIXES


def _where(prefix: str, tensor, layer, file) -> str:
    parts = [f"layer {layer}" if layer else None, f"tensor {tensor!r}" if tensor else None,
             f"in {file}" if file else None]
    text = ": ".join(p for p in parts[:2] if p)
    return (prefix + text + (f" ({parts[2]})" if parts[2] else "")) or "tensor"


def _first_bad(values: np.ndarray, bad: np.ndarray, limit: int = 3) -> str:
    idx = np.argwhere(bad)[:limit]
    return ", ".join(f"{values[tuple(i)].item()!r} at {list(map(int, i))}" for i in idx)


def _float_view(values: np.ndarray) -> np.ndarray:
    a = np.asarray(values)
    return a if a.dtype in (np.float32, np.float64, np.float16) else a.astype(np.float32)


def scale_problem(values, *, tensor: str | None = None, layer: str | None = None, file=None,
                  field: str | None = None) -> CheckpointProblem | None:
    """None when the scale tensor ``values`` is valid, else the problem: a float scale must be finite and > 0; an
    E8M0 scale (uint8 bytes) must not be 255."""
    a = np.asarray(values)
    field = field or (tensor.rpartition(".")[2] if tensor else None)
    if a.size == 0:
        return None
    where = _where("", tensor, layer, file)
    if a.dtype == np.uint8:  # E8M0
        if int(a.max()) < E8M0_NAN:
            return None
        bad = a == E8M0_NAN
        idx = ", ".join(str(list(map(int, i))) for i in np.argwhere(bad)[:3])
        found = f"{int(bad.sum())} of {a.size} E8M0 bytes are 255 (NaN): at {idx}"
        return CheckpointProblem(f"{where}: expected E8M0 scale bytes 0..254, found {found}", file=_s(file), tensor=tensor,
                                 layer=layer, field=field, expected="E8M0 bytes 0..254", found=found)
    f = _float_view(a)
    lo, hi = f.min(), f.max()
    if lo > 0 and hi < np.inf:  # NaN fails the first comparison, inf the second
        return None
    bad = ~(np.isfinite(f) & (f > 0))
    found = f"{int(bad.sum())} of {a.size} values that are not: {_first_bad(f, bad)}"
    return CheckpointProblem(f"{where}: expected finite scales > 0, found {found}", file=_s(file), tensor=tensor,
                             layer=layer, field=field, expected="finite scales > 0", found=found)


def weight_problem(values, *, tensor: str | None = None, layer: str | None = None,
                   file=None) -> CheckpointProblem | None:
    """None when a weight / float tensor holds no NaN or inf (FP8: no NaN codes; integer and packed MXFP4 bytes
    are always valid), else the problem."""
    a = np.asarray(values)
    if a.size == 0:
        return None
    where = _where("", tensor, layer, file)
    field = tensor.rpartition(".")[2] if tensor else None
    if a.dtype in _FP8_NAN:
        mask, value = _FP8_NAN[a.dtype]
        b = a.view(np.uint8)
        bad = (b & mask) == value
        if not bad.any():
            return None
        found = f"{int(bad.sum())} of {a.size} values are NaN codes, first at {list(map(int, np.argwhere(bad)[0]))}"
    elif a.dtype.kind == "f" or a.dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e5m2)):
        f = _float_view(a)
        if np.isfinite(f.sum(dtype=np.float32 if f.dtype != np.float64 else np.float64)):
            return None
        bad = ~np.isfinite(f)
        if not bad.any():  # the sum overflowed: large finite values are valid
            return None
        found = f"{int(bad.sum())} of {a.size} values that are not finite: {_first_bad(f, bad)}"
    else:
        return None
    return CheckpointProblem(f"{where}: expected finite values, found {found}", file=_s(file), tensor=tensor,
                             layer=layer, field=field, expected="finite values", found=found)


def tensor_problem(name: str, values, *, layer: str | None = None, file=None) -> CheckpointProblem | None:
    """:func:`scale_problem` for a tensor named like a scale, else :func:`weight_problem`."""
    if is_scale_name(name):
        return scale_problem(values, tensor=name, layer=layer, file=file)
    return weight_problem(values, tensor=name, layer=layer, file=file)


def check_scale(values, *, tensor: str | None = None, layer: str | None = None, file=None) -> None:
    """Raise :class:`~quark_jax.errors.CheckpointError` when :func:`scale_problem` finds one (for loaders)."""
    p = scale_problem(values, tensor=tensor, layer=layer, file=file)
    if p is not None:
        raise p.error()


def _s(file) -> str | None:
    return None if file is None else str(file)
