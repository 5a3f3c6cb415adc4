"""What a scheme is chosen from: a tensor's quantization spec as Quark writes it, and the options every scheme a
config creates gets. Both are frozen, keyword-only dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from quark_jax.errors import QuarkConfigError
from quark_jax.kernels import check_impl

__all__ = ["TensorQuantSpec", "SchemeOptions", "spec_brief"]


@dataclass(frozen=True, kw_only=True)
class TensorQuantSpec:
    """The fields of a Quark tensor spec (``weight`` / ``input_tensors`` / ``output_tensors``) that matter here.

    Other fields (observer_cls, round_method, ...) are accepted and ignored; ``raw`` keeps the dict as given.

    >>> TensorQuantSpec.from_dict({"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False}).brief()
    "{dtype: 'fp8_e4m3', qscheme: 'per_tensor', is_dynamic: False}"
    """

    dtype: str  # "fp8_e4m3", "int8", "fp4", ...
    qscheme: str | None = None  # "per_tensor", "per_channel", "per_group"
    is_dynamic: bool | None = None  # scales computed at run time (True) or calibrated and stored (False)
    symmetric: bool | None = None  # no zero point
    group_size: int | None = None  # elements per scale for "per_group"
    scale_format: str | None = None  # "e8m0" for MX formats
    scale_calculation_mode: str | None = None  # Quark's rounding of MX scales ("even", ...)
    scale_quant_dtype: str | None = None  # dtype of Quark's scale quantizer (a second, is_scale_quant spec: NVFP4)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)  # the dict as given

    KEYS = ("dtype", "qscheme", "is_dynamic", "symmetric", "group_size", "scale_format", "scale_calculation_mode")
    FIELD_TYPES = {"qscheme": (str,), "is_dynamic": (bool,), "symmetric": (bool,), "group_size": (int,),
                   "scale_format": (str,), "scale_calculation_mode": (str,)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec") -> "TensorQuantSpec | None":
        """Parse one spec (None stays None); errors name ``where``. A list of two specs whose second has
        ``is_scale_quant: true`` (Quark's sequential quantizer: NVFP4's fp4 elements with fp8 block scales) is the
        first spec with ``scale_quant_dtype`` set to the second's dtype.

        >>> TensorQuantSpec.from_dict([{"dtype": "fp4", "qscheme": "per_group", "group_size": 16},
        ...                            {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_scale_quant": True}]).brief()
        "{dtype: 'fp4', qscheme: 'per_group', group_size: 16, scale_quant_dtype: 'fp8_e4m3'}"
        """
        if d is None:
            return None
        if isinstance(d, (list, tuple)):
            if len(d) != 2 or not isinstance(d[1], Mapping) or d[1].get("is_scale_quant") is not True:
                raise QuarkConfigError(f"{where}: a list of tensor specs is supported only as [element spec, scale "
                                       f"spec with is_scale_quant: true] (NVFP4), got {d!r}")
            scale = cls.from_dict(d[1], f"{where}[1]")
            first = cls.from_dict(d[0], f"{where}[0]")
            return dataclasses.replace(first, scale_quant_dtype=scale.dtype, raw={"specs": list(d)})
        if not isinstance(d, Mapping):
            raise QuarkConfigError(f"{where}: expected a tensor spec (a JSON object) or null, got {d!r}")
        if not isinstance(d.get("dtype"), str):
            raise QuarkConfigError(f"{where}: a tensor spec needs a string 'dtype', got {d.get('dtype')!r}")
        values = {k: d.get(k) for k in cls.KEYS}
        for k, types in cls.FIELD_TYPES.items():
            v = values[k]
            if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
                raise QuarkConfigError(f"{where}.{k}: expected {' or '.join(t.__name__ for t in types)} or null, "
                                       f"got {v!r}")
        return cls(**values, raw=dict(d))

    def brief(self) -> str:
        """The relevant fields as a short dict-like string (unset fields left out)."""
        keys = self.KEYS + ("scale_quant_dtype",)
        items = [f"{k}: {getattr(self, k)!r}" for k in keys if getattr(self, k) is not None]
        return "{" + ", ".join(items) + "}"


def spec_brief(spec: TensorQuantSpec | None) -> str:
    """``spec.brief()``, or ``"None"``.

    >>> spec_brief(None), spec_brief(TensorQuantSpec(dtype="int8"))
    ('None', "{dtype: 'int8'}")
    """
    return "None" if spec is None else spec.brief()


@dataclass(frozen=True, kw_only=True)
class SchemeOptions:
    """Options passed to every scheme a config creates.

    >>> SchemeOptions(impl="xla").azp_mode
    'vllm'
    """

    impl: str = "auto"  # GEMM implementation: "auto", "pallas" or "xla"
    azp_mode: str = "vllm"  # asymmetric INT8 input: "vllm" (reconstructed (s', z')) or "checkpoint" (Quark's (s, z))
    fp8_dtype: str = "float8_e4m3fn"  # or "float8_e4m3fnuz" (ROCm MI300 numerics)
    dequantize_mxfp4_weight: bool = False  # keep MXFP4 weights dequantized (bf16) instead of packed
    int4_pack_method: str = "reorder"  # Quark's export.pack_method for INT4 words: "reorder" or "order"

    def __post_init__(self):
        check_impl(self.impl)
        if self.azp_mode not in ("vllm", "checkpoint"):
            raise ValueError(f"azp_mode: expected 'vllm' or 'checkpoint', got {self.azp_mode!r}")
        if self.int4_pack_method not in ("order", "reorder"):
            raise ValueError(f"int4_pack_method: expected 'order' or 'reorder' (Quark's export.pack_method), got "
                             f"{self.int4_pack_method!r}")
        if self.fp8_dtype not in ("float8_e4m3fn", "float8_e4m3fnuz"):
            raise ValueError(f"fp8_dtype: expected 'float8_e4m3fn' or 'float8_e4m3fnuz', got {self.fp8_dtype!r}")
