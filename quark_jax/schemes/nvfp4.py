"""``QuarkNVFP4`` (vLLM's, SPEC section 3): NVFP4 W4A4 -- E2M1 weights in blocks of 16 along K with FP8 E4M3 block
scales and a per-tensor float32 global scale (``weight_scale_2``); the activation quantized dynamically to NVFP4
with the checkpoint's static global input scale (``input_scale_2``). Emulation semantics (vLLM's
``EmulationNvFp4LinearKernel``): quantize-dequantize the input, dequantize the weight, one GEMM with float32
accumulation. XLA only (``kernel_op`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from quark_jax import formats, quant
from quark_jax.schemes.base import SCALE_DTYPES, ParamSpec, QuarkScheme, flatten_tokens
from quark_jax.schemes.ocp_mx import xla_linear

__all__ = ["QuarkNVFP4", "dequantize_nvfp4_weight"]


def dequantize_nvfp4_weight(packed, block_scales, weight_scale_2, *, dtype=jnp.float32):
    """vLLM's NVFP4 weight dequantization with Quark's global scale (a dequant multiplier):
    ``w[n, k] = e2m1(code) * (f32(block_scales[n, k // 16]) * weight_scale_2)`` in float32, rounded once to
    ``dtype`` [N, K]. ``packed`` uint8 [N, K/2] (element 2j in the low nibble), ``block_scales`` float8_e4m3fn
    [N, K/16], ``weight_scale_2`` a float32 scalar.

    >>> dequantize_nvfp4_weight(jnp.array([[0x72] + [0] * 7], jnp.uint8), jnp.array([[2.0]], jnp.float8_e4m3fn),
    ...                         0.5)[0, :2].tolist()
    [1.0, 6.0]
    """
    packed, block_scales = jnp.asarray(packed), jnp.asarray(block_scales)
    values = jnp.asarray(formats.e2m1_values_np())[formats.unpack_nibbles(packed).astype(jnp.int32)]
    n, k = values.shape
    s = block_scales.astype(jnp.float32) * jnp.asarray(weight_scale_2, jnp.float32).reshape(())
    return (values.reshape(n, k // quant.NVFP4_BLOCK_SIZE, quant.NVFP4_BLOCK_SIZE) * s[..., None]).reshape(n, k) \
        .astype(dtype)


@dataclass(frozen=True, kw_only=True)
class QuarkNVFP4(QuarkScheme):
    """NVFP4 W4A4 as amd-quark 0.13 exports it (``LLMTemplate`` scheme "nvfp4") and vLLM's ``QuarkNVFP4`` loads it.

    Params (as stored): ``weight`` uint8 [N, K/2] (two E2M1 codes a byte, low nibble first); ``weight_scale``
    float8_e4m3fn [N, K/16]; ``weight_scale_2`` and ``input_scale_2``: one float32 scalar per fused shard (the
    weight's and the input's global dequant multipliers; Quark shares them across q/k/v and gate/up).
    Processed (vLLM): ``weight_scale_2`` = the shards' max, ``input_global_scale`` = ``1 / max(input_scale_2)``
    (the quantizer's global scale g). Apply: ``y = linear(qdq_nvfp4(x, g), w, bias)`` with ``w`` dequantized by
    :func:`dequantize_nvfp4_weight` in x's dtype, f32 accumulation.

    >>> s = QuarkNVFP4()
    >>> w, ws = quant.quantize_nvfp4(jnp.full((16, 16), 0.75), 1.0)   # codes 6.0 (0x77), block scale 0.125
    >>> p = s.process_weights_after_loading({"weight": w, "weight_scale": ws, "weight_scale_2": jnp.ones(1),
    ...                                      "input_scale_2": jnp.ones(1)})
    >>> s.apply_weights(p, jnp.full((1, 16), 3.0))[0, :2].tolist()
    [36.0, 36.0]
    """

    min_capability = 75  # vLLM: compute capability 7.5
    weight_pack_factor = 2  # two E2M1 codes a byte
    shardable = True  # weight and block scales [N, K...] split like MXFP4's; the global scales are per tensor
    shard_k_block = quant.NVFP4_BLOCK_SIZE

    def summary(self) -> str:
        return "QuarkNVFP4(weight fp4 per_group 16 fp8_e4m3 scales + global scale, input nvfp4 dynamic)"

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths, k = tuple(int(w) for w in output_partition_sizes), int(input_size)
        if k % quant.NVFP4_BLOCK_SIZE:
            raise ValueError(f"input_size: NVFP4 needs K to be a multiple of {quant.NVFP4_BLOCK_SIZE}, got {k}")
        return {"weight": ParamSpec.rows(widths, (k // 2,), dtype=np.uint8, doc=f"fp4 weight [N, {k // 2}] (K = {k})"),
                "weight_scale": ParamSpec.rows(widths, (k // quant.NVFP4_BLOCK_SIZE,), dtype=jnp.float8_e4m3fn,
                                               doc="FP8 E4M3 block scales [N, K/16]"),
                "weight_scale_2": ParamSpec.per_shard(len(widths), checkpoint_dtypes=SCALE_DTYPES,
                                                      doc="global weight scale (dequant multiplier)"),
                "input_scale_2": ParamSpec.per_shard(len(widths), checkpoint_dtypes=SCALE_DTYPES,
                                                     doc="global input scale (dequant multiplier)")}

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        self._widths(weight.shape[0], logical_widths)
        g_in = jnp.max(jnp.asarray(params["input_scale_2"], jnp.float32))
        return {"weight": weight, "weight_scale": jnp.asarray(params["weight_scale"]),
                "weight_scale_2": jnp.max(jnp.asarray(params["weight_scale_2"], jnp.float32)),
                "input_global_scale": quant.true_divide(jnp.float32(1.0), g_in)}

    def dequantize_weight(self, params: Mapping[str, Any]):
        return dequantize_nvfp4_weight(params["weight"], params["weight_scale"], params["weight_scale_2"])

    def quantize_input(self, x2, params):
        """The activation as the GEMM sees it: vLLM's ``ref_nvfp4_quant_dequant`` with the global scale."""
        return quant.qdq_nvfp4(x2, params["input_global_scale"])

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        n, kh = params["weight"].shape
        x2, lead = flatten_tokens(x, 2 * kh, "QuarkNVFP4")
        w = dequantize_nvfp4_weight(params["weight"], params["weight_scale"], params["weight_scale_2"], dtype=x2.dtype)
        return xla_linear(self.quantize_input(x2, params), w, bias).reshape(*lead, n)
