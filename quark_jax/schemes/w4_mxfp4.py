"""MXFP4 weight schemes (SPEC section 3): ``QuarkW4A4MXFP4`` (vLLM's) and two Quark exports we also accept,
``QuarkW4A8MXFP4Fp8`` (MXFP4 weights, static per-tensor FP8 input) and ``QuarkW4A16MXFP4`` (weight-only).

The weight stays packed as the checkpoint stores it: ``weight`` uint8 [N, K/2] (element 2j in the low nibble) and
``weight_scale`` uint8 [N, K/32] (E8M0 bytes); :func:`quark_jax.kernels.mxfp4_mm` decodes it. With
``dequantize_at_load=True`` the weight is instead dequantized once at load into a bfloat16 [N, K] array (exact: every
MXFP4 value is a bfloat16), trading 3.8x the memory for a plain GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from quark_jax import formats, kernels, quant
from quark_jax.quant import dot_precision, fp8_saturating_cast, true_divide
from quark_jax.schemes.base import ParamSpec, QuarkScheme, flatten_tokens

__all__ = ["QuarkW4A4MXFP4", "QuarkW4A8MXFP4Fp8", "QuarkW4A16MXFP4", "qdq_fp8_static"]


def qdq_fp8_static(x, scale):
    """Quark's static FP8 quantize-dequantize of activations: ``x.dtype(f32(fp8(clamp(f32(x) / s))) * s)``.

    True division (as Quark does it; the result equals Quark's for float32 models). Non-finite input: ±inf
    saturates to ±448 * s; NaN stays NaN (this is Quark's static FP8 input of an MXFP4 scheme, which vLLM does not
    run; vLLM's FP8 activation quantizers map NaN to +448, :func:`quark_jax.quant.scaled_fp8_quant`).

    >>> import jax.numpy as jnp
    >>> qdq_fp8_static(jnp.array([1.0, 3.3, 1000.0]), jnp.float32(0.5)).tolist()
    [1.0, 3.25, 224.0]
    """
    x = jnp.asarray(x)
    s = jnp.asarray(scale, jnp.float32).reshape(())
    q = fp8_saturating_cast(true_divide(x.astype(jnp.float32), s))
    return (q.astype(jnp.float32) * s).astype(x.dtype)


@dataclass(frozen=True, kw_only=True)
class _QuarkMXFP4(QuarkScheme):
    """Shared MXFP4-weight lifecycle; subclasses choose what happens to the input (``input_mode``)."""

    dequantize_at_load: bool = False  # keep a bf16 [N, K] weight instead of the packed one

    weight_pack_factor = 2
    shardable = True  # quark_jax.nn.parallel layouts apply
    input_mode: ClassVar[str] = "mxfp4"

    min_capability = 70  # vLLM: compute capability 7.0

    @property
    def is_static_input_scheme(self) -> bool:
        return self.input_mode == "fp8_static"

    @property
    def kernel_op(self):
        return None if self.dequantize_at_load else "mxfp4_mm"

    def summary(self) -> str:
        inp = {"mxfp4": "mxfp4 dynamic", "fp8_static": "fp8 static per_tensor", "none": "not quantized"}
        extra = ", dequantize_at_load" if self.dequantize_at_load else ""
        return f"{type(self).__name__}(weight mxfp4 per_group 32, input {inp[self.input_mode]}{extra})"

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths = tuple(int(w) for w in output_partition_sizes)
        k = int(input_size)
        if k % formats.MX_BLOCK_SIZE:
            raise ValueError(f"input_size: MXFP4 needs K to be a multiple of {formats.MX_BLOCK_SIZE}, got {k}")
        kb = k // formats.MX_BLOCK_SIZE
        specs = {"weight": ParamSpec.rows(widths, (k // 2,), dtype=np.uint8, doc="packed E2M1 pairs [N, K/2]"),
                 "weight_scale": ParamSpec.rows(widths, (kb,), dtype=np.uint8, doc="E8M0 block scales [N, K/32]")}
        if self.is_static_input_scheme:
            specs["input_scale"] = ParamSpec.per_shard(len(widths), doc="static FP8 input scale")
        return specs

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        self._widths(weight.shape[0], logical_widths)
        if self.dequantize_at_load:
            out = {"weight_dequant": quant.dequantize_mxfp4(weight, jnp.asarray(params["weight_scale"]),
                                                            jnp.bfloat16)}
        else:
            out = {"weight": weight, "weight_scale": jnp.asarray(params["weight_scale"])}
        if self.is_static_input_scheme:
            out["input_scale"] = jnp.max(jnp.asarray(params["input_scale"], jnp.float32))
        return out

    def dequantize_weight(self, params: Mapping[str, Any]):
        if self.dequantize_at_load:
            return jnp.asarray(params["weight_dequant"]).astype(jnp.float32)
        return quant.dequantize_mxfp4(params["weight"], params["weight_scale"], jnp.float32)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        if self.dequantize_at_load:
            n, k = params["weight_dequant"].shape
        else:
            n, k = params["weight"].shape[0], params["weight"].shape[1] * 2
        x2, lead = flatten_tokens(x, k, type(self).__name__)
        if self.input_mode == "fp8_static":
            x2 = qdq_fp8_static(x2, params["input_scale"])
        quantize_input = self.input_mode == "mxfp4"
        if self.dequantize_at_load:
            xq = quant.qdq_mxfp4(x2) if quantize_input else x2
            acc = lax.dot_general(xq, params["weight_dequant"].astype(x2.dtype), (((1,), (1,)), ((), ())),
                                  precision=dot_precision(xq), preferred_element_type=jnp.float32)
            y = (acc if bias is None else acc + jnp.asarray(bias).astype(jnp.float32)).astype(x2.dtype)
        else:
            y = kernels.mxfp4_mm(x2, params["weight"], params["weight_scale"], bias, quantize_input=quantize_input,
                                 out_dtype=x2.dtype, impl=self.impl)
        return y.reshape(*lead, n)


@dataclass(frozen=True, kw_only=True)
class QuarkW4A4MXFP4(_QuarkMXFP4):
    """W4A4 MXFP4 (vLLM's ``QuarkW4A4MXFP4``, emulation semantics): ``y = linear(qdq_mxfp4(x), dequant(W), bias)``
    with f32 accumulation, in x's dtype.

    >>> import jax.numpy as jnp
    >>> s = QuarkW4A4MXFP4(impl="xla")                       # every weight 1.0 (code 2, scale byte 127)
    >>> p = s.process_weights_after_loading({"weight": jnp.full((16, 16), 0x22, jnp.uint8),
    ...                                      "weight_scale": jnp.full((16, 1), 127, jnp.uint8)})
    >>> s.apply_weights(p, jnp.full((1, 32), 1.2))[0, :2].tolist()   # 1.2 -> 1.0 in MXFP4
    [32.0, 32.0]
    """

    input_mode: ClassVar[str] = "mxfp4"


@dataclass(frozen=True, kw_only=True)
class QuarkW4A8MXFP4Fp8(_QuarkMXFP4):
    """MXFP4 weights with a static per-tensor FP8 input (Quark's ``mxfp4_fp8`` recipe; ours, not in vLLM):
    ``y = linear(qdq_fp8_static(x, input_scale), dequant(W), bias)``.

    >>> import jax.numpy as jnp
    >>> s = QuarkW4A8MXFP4Fp8(impl="xla")
    >>> p = s.process_weights_after_loading({"weight": jnp.full((16, 16), 0x22, jnp.uint8),
    ...     "weight_scale": jnp.full((16, 1), 127, jnp.uint8), "input_scale": jnp.array([0.5])})
    >>> s.apply_weights(p, jnp.full((1, 32), 1.2))[0, :2].tolist()   # 1.2 / 0.5 = 2.4 -> fp8 2.5 -> 1.25
    [40.0, 40.0]
    """

    input_mode: ClassVar[str] = "fp8_static"


@dataclass(frozen=True, kw_only=True)
class QuarkW4A16MXFP4(_QuarkMXFP4):
    """MXFP4 weight-only (Quark's ``mxfp4_weight_only`` recipe; ours): ``y = linear(x, dequant(W), bias)``.

    >>> import jax.numpy as jnp
    >>> s = QuarkW4A16MXFP4(impl="xla")
    >>> p = s.process_weights_after_loading({"weight": jnp.full((16, 16), 0x22, jnp.uint8),
    ...                                      "weight_scale": jnp.full((16, 1), 127, jnp.uint8)})
    >>> s.apply_weights(p, jnp.full((1, 32), 1.25))[0, :2].tolist()   # x is not quantized
    [40.0, 40.0]
    """

    input_mode: ClassVar[str] = "none"
