"""The scheme registry: an ordered table that maps a layer's weight and input specs to a scheme.

Each :class:`SchemeEntry` holds a predicate on ``(weight, input_tensors)`` (:class:`TensorQuantSpec` or None) and a
factory that builds the scheme from the specs and the :class:`SchemeOptions`; :func:`select_scheme` returns the
scheme of the first entry whose predicate holds (vLLM's ``_get_scheme_from_config`` order: FP8 W8A8, static INT8
W8A8, dynamic per-token INT8 W8A8, the MXFP4 weight schemes, then OCP MX, FP8 per-block, NVFP4 and INT4
weight-only).
A new scheme is one more entry (:func:`register_scheme`); nothing else changes.

>>> w = TensorQuantSpec(dtype="fp8_e4m3", qscheme="per_tensor", is_dynamic=False, symmetric=True)
>>> select_scheme(w, w).summary()
'QuarkW8A8Fp8(weight fp8 per_tensor, input fp8 static)'
>>> [e.name for e in scheme_registry()][:2]
['fp8_w8a8', 'int8_w8a8_static']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from quark_jax.errors import UnsupportedSchemeError
from quark_jax import formats
from quark_jax.schemes.base import QuarkScheme
from quark_jax.schemes.nvfp4 import QuarkNVFP4
from quark_jax.schemes.ocp_mx import QuarkOCP_MX
from quark_jax.schemes.spec import SchemeOptions, TensorQuantSpec, spec_brief
from quark_jax.schemes.w4_mxfp4 import QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4
from quark_jax.schemes.w8a8_fp8 import QuarkW8A8Fp8
from quark_jax.schemes.w4a16_int4 import QuarkW4A16Int4
from quark_jax.schemes.w8a8_fp8_block import QuarkW8A8Fp8PerBlock
from quark_jax.schemes.w8a8_int8 import QuarkW8A8Int8

__all__ = ["SchemeEntry", "scheme_registry", "register_scheme", "select_scheme"]

Spec = Optional[TensorQuantSpec]


@dataclass(frozen=True, kw_only=True)
class SchemeEntry:
    """One row of the registry."""

    name: str  # a short unique name ("fp8_w8a8"), for register_scheme(before=...) and messages
    matches: Callable[[Spec, Spec], bool]  # predicate on (weight spec, input spec)
    build: Callable[[TensorQuantSpec, Spec, SchemeOptions], QuarkScheme]  # (weight, input, options) -> scheme
    supports: str  # what it accepts, in words, for the "no scheme" error


# ------------------------------------------------------------------------------------------------- predicates

def _is_fp8_w8a8(w: Spec, i: Spec) -> bool:
    if w is None or i is None or w.dtype != "fp8_e4m3" or i.dtype != "fp8_e4m3":
        return False
    if not (w.symmetric is True and w.is_dynamic is False and w.qscheme in ("per_tensor", "per_channel")):
        return False
    return bool(i.is_dynamic) or i.qscheme == "per_tensor"


def _fp8_w8a8(w: TensorQuantSpec, i: TensorQuantSpec, o: SchemeOptions) -> QuarkScheme:
    if not i.is_dynamic:
        activation = "static"
    elif i.qscheme == "per_channel":
        activation = "dynamic_per_token"
    else:
        activation = "dynamic_per_tensor"
    return QuarkW8A8Fp8(weight_qscheme=w.qscheme, activation=activation, fp8_dtype=o.fp8_dtype, impl=o.impl)


def _is_static_tensor_w8a8(w: Spec, i: Spec) -> bool:
    if w is None or i is None or w.dtype != "int8" or i.dtype != "int8":
        return False
    is_tensor = w.qscheme in ("per_tensor", "per_channel") and i.qscheme == "per_tensor"
    is_static = not w.is_dynamic and not i.is_dynamic
    return is_tensor and is_static and w.symmetric is True


def _int8_w8a8(w: TensorQuantSpec, i: TensorQuantSpec, o: SchemeOptions) -> QuarkScheme:
    return QuarkW8A8Int8(qscheme=w.qscheme, input_symmetric=bool(i.symmetric), azp_mode=o.azp_mode, impl=o.impl)


def _is_dynamic_token_w8a8(w: Spec, i: Spec) -> bool:
    # Quark's "per-token" input: qscheme per_channel (ch_axis 1), is_dynamic true
    if w is None or i is None or w.dtype != "int8" or i.dtype != "int8":
        return False
    return (w.qscheme in ("per_tensor", "per_channel") and w.symmetric is True and not w.is_dynamic
            and i.qscheme == "per_channel" and i.is_dynamic is True)


def _int8_w8a8_dynamic(w: TensorQuantSpec, i: TensorQuantSpec, o: SchemeOptions) -> QuarkScheme:
    return QuarkW8A8Int8(qscheme=w.qscheme, input_symmetric=bool(i.symmetric), is_static_input_scheme=False,
                         impl=o.impl)


def _is_mx_fp4_weight(w: Spec) -> bool:
    return (w is not None and w.dtype == "fp4" and w.qscheme == "per_group" and w.group_size == 32
            and w.scale_format == "e8m0")


def _is_mx_fp4(w: Spec, i: Spec) -> bool:
    if not _is_mx_fp4_weight(w) or i is None:
        return False
    return (i.dtype == "fp4" and i.qscheme == "per_group" and i.group_size == 32 and i.is_dynamic is not False
            and i.scale_format == "e8m0")


def _is_mx_fp4_fp8_static(w: Spec, i: Spec) -> bool:
    return (_is_mx_fp4_weight(w) and i is not None and i.dtype == "fp8_e4m3" and i.qscheme == "per_tensor"
            and not i.is_dynamic)


def _mxfp4(cls):
    def build(w: TensorQuantSpec, i: Spec, o: SchemeOptions) -> QuarkScheme:
        return cls(dequantize_at_load=o.dequantize_mxfp4_weight, impl=o.impl)
    return build


def _is_ocp_mx_spec(t: Spec) -> bool:
    return (t is not None and t.dtype in formats.MX_ELEMENTS and t.qscheme == "per_group" and t.group_size == 32
            and t.scale_format == "e8m0")


def _ocp_mx_input(i: Spec) -> str | None | bool:
    """The QuarkOCP_MX input mode of an input spec, or False when it has none."""
    if i is None:
        return None
    if _is_ocp_mx_spec(i) and i.is_dynamic is not False:
        return i.dtype
    if i.dtype == "fp8_e4m3" and i.qscheme == "per_tensor" and i.is_dynamic is True:
        return "fp8_per_tensor"
    return False


def _is_ocp_mx(w: Spec, i: Spec) -> bool:
    return _is_ocp_mx_spec(w) and not w.is_dynamic and _ocp_mx_input(i) is not False


def _ocp_mx(w: TensorQuantSpec, i: Spec, o: SchemeOptions) -> QuarkScheme:
    return QuarkOCP_MX(weight_dtype=w.dtype, input_dtype=_ocp_mx_input(i), impl=o.impl)


def _fp8_block(w: Spec) -> tuple[int, int] | None:
    b = None if w is None else w.raw.get("block_size")
    if (isinstance(b, (list, tuple)) and len(b) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                             for v in b)):
        return int(b[0]), int(b[1])
    return None


def _fp8_block_scale_format(w: TensorQuantSpec) -> str | None:
    st = w.raw.get("scale_type")
    if w.scale_format == "e8m0" or st == "float8_e8m0fnu":
        return "e8m0"
    return "float" if st in (None, "float", "float32") else None


def _is_fp8_per_block(w: Spec, i: Spec) -> bool:
    if w is None or i is None or w.dtype != "fp8_e4m3" or i.dtype != "fp8_e4m3" or w.qscheme != "per_block":
        return False
    block = _fp8_block(w)
    return (block is not None and not w.is_dynamic and _fp8_block_scale_format(w) is not None
            and i.is_dynamic is True and i.qscheme == "per_group" and i.group_size == block[1])


def _fp8_per_block(w: TensorQuantSpec, i: Spec, o: SchemeOptions) -> QuarkScheme:
    return QuarkW8A8Fp8PerBlock(block=_fp8_block(w), scale_format=_fp8_block_scale_format(w), impl=o.impl)


def _is_int4_weight_only(w: Spec, i: Spec) -> bool:
    if w is None or i is not None or w.dtype not in ("int4", "uint4") or w.is_dynamic:
        return False
    if w.qscheme == "per_group":
        ok = isinstance(w.group_size, int) and w.group_size > 0
    else:
        ok = w.qscheme == "per_channel"
    # int4 is symmetric (no zero point), uint4 asymmetric (zero points), as vLLM's QuarkW4A16Int4 takes them
    return ok and (w.symmetric is not False if w.dtype == "int4" else w.symmetric is not True)


def _int4(w: TensorQuantSpec, i: Spec, o: SchemeOptions) -> QuarkScheme:
    return QuarkW4A16Int4(signed=w.dtype == "int4", group_size=w.group_size if w.qscheme == "per_group" else -1,
                          pack_method=o.int4_pack_method, impl=o.impl)


def _is_nvfp4_spec(t: Spec) -> bool:
    return (t is not None and t.dtype == "fp4" and t.qscheme == "per_group" and t.group_size == 16
            and t.scale_quant_dtype == "fp8_e4m3")


def _is_nvfp4(w: Spec, i: Spec) -> bool:
    # Quark's NVFP4 (LLMTemplate "nvfp4"): [fp4 per_group 16, fp8_e4m3 per_tensor scale quantizer] for the static
    # weight and the dynamic input (vLLM's QuarkNVFP4 is W4A4 only)
    return (_is_nvfp4_spec(w) and w.is_dynamic is not True and _is_nvfp4_spec(i) and i.is_dynamic is True)


_MX = "MXFP4 weights (fp4 per_group 32 e8m0)"
_REGISTRY: list[SchemeEntry] = [
    SchemeEntry(name="fp8_w8a8", matches=_is_fp8_w8a8, build=_fp8_w8a8,
                supports="FP8 W8A8 (fp8_e4m3 symmetric static per_tensor/per_channel weights; static per_tensor or "
                         "dynamic input)"),
    SchemeEntry(name="int8_w8a8_static", matches=_is_static_tensor_w8a8, build=_int8_w8a8,
                supports="INT8 W8A8 (int8 symmetric per_tensor/per_channel weights, static per_tensor input)"),
    SchemeEntry(name="int8_w8a8_dynamic_token", matches=_is_dynamic_token_w8a8, build=_int8_w8a8_dynamic,
                supports="INT8 W8A8 (int8 symmetric per_tensor/per_channel weights, dynamic per-token input: "
                         "per_channel is_dynamic, symmetric or not)"),
    SchemeEntry(name="w4a4_mxfp4", matches=_is_mx_fp4, build=_mxfp4(QuarkW4A4MXFP4),
                supports=f"{_MX} with dynamic MXFP4 input"),
    SchemeEntry(name="w4a8_mxfp4_fp8", matches=_is_mx_fp4_fp8_static, build=_mxfp4(QuarkW4A8MXFP4Fp8),
                supports=f"{_MX} with static per_tensor FP8 input"),
    SchemeEntry(name="w4a16_mxfp4", matches=lambda w, i: _is_mx_fp4_weight(w) and i is None,
                build=_mxfp4(QuarkW4A16MXFP4), supports=f"{_MX} with no input quantization"),
    SchemeEntry(name="ocp_mx", matches=_is_ocp_mx, build=_ocp_mx,
                supports="OCP MX weights (fp4 / fp6_e2m3 / fp6_e3m2 / fp8_e4m3 per_group 32 e8m0) with no input "
                         "quantization, a dynamic MX input of those types, or a dynamic per_tensor FP8 input"),
    SchemeEntry(name="fp8_w8a8_per_block", matches=_is_fp8_per_block, build=_fp8_per_block,
                supports="FP8 per-block W8A8 (fp8_e4m3 per_block weights with block_size [rows, cols] and float or "
                         "float8_e8m0fnu scales; dynamic fp8_e4m3 per_group input, group_size = cols)"),
    SchemeEntry(name="nvfp4", matches=_is_nvfp4, build=lambda w, i, o: QuarkNVFP4(impl=o.impl),
                supports="NVFP4 W4A4 (Quark's [fp4 per_group 16, fp8_e4m3 per_tensor is_scale_quant] weight and "
                         "dynamic input specs)"),
    SchemeEntry(name="w4a16_int4", matches=_is_int4_weight_only, build=_int4,
                supports="INT4 / UINT4 weight-only (int4 symmetric or uint4 asymmetric, per_group or per_channel; "
                         "no input quantization)"),
]


def scheme_registry() -> tuple[SchemeEntry, ...]:
    """The entries, in the order :func:`select_scheme` tries them."""
    return tuple(_REGISTRY)


def register_scheme(entry: SchemeEntry, *, before: str | None = None) -> None:
    """Add ``entry`` at the end of the table, or just before the entry named ``before``; names are unique."""
    names = [e.name for e in _REGISTRY]
    if entry.name in names:
        raise ValueError(f"register_scheme: an entry named {entry.name!r} exists already ({names})")
    if before is None:
        _REGISTRY.append(entry)
    elif before in names:
        _REGISTRY.insert(names.index(before), entry)
    else:
        raise ValueError(f"register_scheme: before={before!r}: expected one of {names}")


def select_scheme(weight: Spec, input_tensors: Spec, *, options: SchemeOptions = SchemeOptions(), layer: str = "",
                  source: str = "") -> QuarkScheme:
    """The scheme of the first registry entry that accepts ``(weight, input_tensors)``; otherwise an
    :class:`~quark_jax.errors.UnsupportedSchemeError` naming the layer, the config entry (``source``), both
    specs and what is supported."""
    for entry in _REGISTRY:
        if entry.matches(weight, input_tensors):
            return entry.build(weight, input_tensors, options)
    raise UnsupportedSchemeError(
        f"layer {layer}: no quark_jax scheme for this layer config ({source}). Weight config: {spec_brief(weight)}, "
        f"input config: {spec_brief(input_tensors)}. Supported: {'; '.join(e.supports for e in _REGISTRY)}")
