"""``QuarkOCP_MX`` (vLLM's, SPEC section 3): OCP MX weights (fp4, fp6_e2m3, fp6_e3m2, fp8_e4m3; E8M0 scales per
32 along K) with an activation that is not quantized, quantized dynamically to an MX format, or quantized
dynamically to FP8 per tensor. Emulation semantics (vLLM's on every GPU but MI355's fp4 x fp4): dequantize the
weight, quantize-dequantize the input, one GEMM with float32 accumulation.

FP6 weights with K a multiple of 128 are stored in the load-time planes layout (``kernels.mxfp6_repack`` in
``process_weights_after_loading``: ``weight_hi`` [N, K/2], ``weight_lo`` [N, K/4], ``weight_scale_kn`` [K/32, N];
the checkpoint's ``weight`` / ``weight_scale`` are not kept) and call ``kernels.mxfp6_mm_planes`` (``kernel_op``
"mxfp6_mm": ``auto`` runs its Pallas decode kernel at decode M on sm80+, else the XLA path that dequantizes the
planes elementwise, bit for bit the checkpoint-layout reference); FP6 weights with another K keep the checkpoint
layout and call ``kernels.mxfp6_mm``; fp4 / fp8 weights run the XLA reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from quark_jax import formats, kernels, quant
from quark_jax.quant import dot_precision
from quark_jax.schemes.base import ParamSpec, QuarkScheme, flatten_tokens

__all__ = ["QuarkOCP_MX", "xla_linear", "MX_INPUTS", "PLANES_PARAMS"]

MX_INPUTS = (None, *formats.MX_ELEMENTS, "fp8_per_tensor")
"""The activation modes: None (not quantized), a dynamic MX element format, or dynamic FP8 per tensor."""

PLANES_PARAMS = ("weight_hi", "weight_lo", "weight_scale_kn")
"""The processed params of an FP6 layer in the planes layout (their presence marks the layout as processed)."""


def xla_linear(x, w, bias=None):
    """``x.dtype(x @ w.T + bias)`` with float32 accumulation; ``x`` [M, K], ``w`` [N, K] in x's dtype.

    >>> xla_linear(jnp.ones((1, 4)), jnp.full((2, 4), 0.5), jnp.array([1.0, 0.0])).tolist()
    [[3.0, 2.0]]
    """
    acc = lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision=dot_precision(x, w),
                          preferred_element_type=jnp.float32)
    if bias is not None:
        acc = acc + jnp.asarray(bias).astype(jnp.float32)
    return acc.astype(x.dtype)


def _weight_dtype(element: str):
    return np.dtype(jnp.float8_e4m3fn) if element == "fp8_e4m3" else np.dtype(np.uint8)


@dataclass(frozen=True, kw_only=True)
class QuarkOCP_MX(QuarkScheme):
    """OCP MX weights with E8M0 block scales (vLLM's ``QuarkOCP_MX``; ``fp8_e4m3`` weights are MXFP8).

    * ``weight_dtype``: "fp4", "fp6_e2m3", "fp6_e3m2" or "fp8_e4m3".
    * ``input_dtype``: None (weight-only), an MX element name (dynamic MX qdq per 32 along K) or "fp8_per_tensor"
      (dynamic FP8 per tensor: ``s = max(amax / 448, 1/(448*512))``, qdq).

    Params as stored: ``weight`` [N, K/2] uint8 (fp4), [N, 3K/4] uint8 (fp6, four codes in three bytes) or [N, K]
    float8_e4m3fn (fp8); ``weight_scale`` uint8 [N, K/32]. Processed: the same, except FP6 with K a multiple of
    128 (:meth:`stores_planes`), repacked once to :data:`PLANES_PARAMS` (``kernels.mxfp6_repack``: ``weight_hi``
    uint8 [N, K/2], ``weight_lo`` uint8 [N, K/4], ``weight_scale_kn`` uint8 [K/32, N]; the same bytes).
    Apply: ``y = linear(qdq(x), dequantize_mx(weight, weight_scale), bias)`` in x's dtype, f32 accumulation.

    >>> s = QuarkOCP_MX(weight_dtype="fp6_e2m3", input_dtype="fp6_e2m3")
    >>> w, ws = quant.quantize_mx(jnp.full((16, 32), 0.5), "fp6_e2m3")
    >>> p = s.process_weights_after_loading({"weight": w, "weight_scale": ws})
    >>> s.apply_weights(p, jnp.full((1, 32), 1.3))[0, :2].tolist()   # 1.3 -> 1.25 in MXFP6 e2m3
    [20.0, 20.0]
    >>> p = s.process_weights_after_loading(dict(zip(("weight", "weight_scale"), quant.quantize_mx(
    ...     jnp.full((16, 128), 0.5), "fp6_e2m3"))))                      # K = 128: the planes layout
    >>> sorted(p), s.apply_weights(p, jnp.full((1, 128), 1.3))[0, :2].tolist()
    (['weight_hi', 'weight_lo', 'weight_scale_kn'], [80.0, 80.0])
    """

    weight_dtype: str = "fp6_e2m3"  # the weight's MX element format
    input_dtype: str | None = None  # None, an MX element name (dynamic MX) or "fp8_per_tensor" (dynamic FP8)

    min_capability = 70  # vLLM: compute capability 7.0
    choices = {"weight_dtype": tuple(formats.MX_ELEMENTS), "input_dtype": MX_INPUTS}

    @property
    def shard_k_block(self) -> int:
        """K elements a row split keeps together: whole 32-blocks (weight bytes and E8M0 scales); FP6 whole
        128-K chunks (the planes layout's unit, so each device's planes are its K slice's repack)."""
        return kernels.MXFP6_PLANES_CHUNK if self.weight_dtype.startswith("fp6") else formats.MX_BLOCK_SIZE

    @property
    def shardable(self) -> bool:
        """Weights [N, K...] and E8M0 scales split like MXFP4's; an MX input is quantized per 32-block (local to a
        shard); a dynamic per-tensor FP8 input would need its amax reduced across shards: not shardable."""
        return self.input_dtype != "fp8_per_tensor"

    def summary(self) -> str:
        inp = {None: "not quantized", "fp8_per_tensor": "fp8 dynamic per_tensor"}.get(
            self.input_dtype, f"mx {self.input_dtype} dynamic")
        return f"QuarkOCP_MX(weight mx {self.weight_dtype} per_group 32, input {inp})"

    @property
    def kernel_op(self):
        return "mxfp6_mm" if self.weight_dtype.startswith("fp6") else None

    def weight_geometry(self, stored_shape):
        return int(stored_shape[0]), int(stored_shape[1]) * 8 // formats.mx_element(self.weight_dtype).bits

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths, k = tuple(int(w) for w in output_partition_sizes), int(input_size)
        if k % formats.MX_BLOCK_SIZE:
            raise ValueError(f"input_size: OCP MX needs K to be a multiple of {formats.MX_BLOCK_SIZE}, got {k}")
        kw = quant.mx_packed_width(k, self.weight_dtype)
        return {"weight": ParamSpec.rows(widths, (kw,), dtype=_weight_dtype(self.weight_dtype),
                                         doc=f"{self.weight_dtype} weight [N, {kw}] (K = {k})"),
                "weight_scale": ParamSpec.rows(widths, (k // formats.MX_BLOCK_SIZE,), dtype=np.uint8,
                                               doc="E8M0 block scales [N, K/32]")}

    def stores_planes(self, k: int) -> bool:
        """Whether a layer of K inputs is processed into the MXFP6 planes layout: FP6 weights, K a multiple of 128.

        >>> QuarkOCP_MX(weight_dtype="fp6_e3m2").stores_planes(4096), QuarkOCP_MX(weight_dtype="fp4").stores_planes(4096)
        (True, False)
        """
        return self.weight_dtype.startswith("fp6") and k % kernels.MXFP6_PLANES_CHUNK == 0

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        """The checkpoint's params -> the params :meth:`apply_weights` takes; FP6 with K % 128 == 0 repacked once
        into :data:`PLANES_PARAMS` (the checkpoint layout is not kept). Params already processed (holding
        ``weight_hi``) are a ValueError: this runs once, on the checkpoint's params."""
        if "weight" not in params and "weight_hi" in params:
            raise ValueError("QuarkOCP_MX: params already processed (they hold the MXFP6 planes layout "
                             f"{list(PLANES_PARAMS)}); process_weights_after_loading takes the checkpoint's "
                             "'weight' / 'weight_scale' once")
        weight = jnp.asarray(params["weight"])
        self._widths(weight.shape[0], logical_widths)
        scales = jnp.asarray(params["weight_scale"])
        if self.stores_planes(self.weight_geometry(weight.shape)[1]):
            return dict(zip(PLANES_PARAMS, kernels.mxfp6_repack(weight, scales)))
        return {"weight": weight, "weight_scale": scales}

    def _nk(self, params) -> tuple[int, int]:
        """(N, K) from processed params, or a ValueError where an FP6 layer that needs the planes layout was given
        the checkpoint's (unprocessed) params."""
        if "weight_hi" in params:
            return params["weight_hi"].shape[0], 2 * params["weight_hi"].shape[1]
        n, k = self.weight_geometry(params["weight"].shape)
        if self.stores_planes(k):
            raise ValueError(f"QuarkOCP_MX ({self.weight_dtype}, K = {k}): params not processed: expected the planes "
                             f"layout {list(PLANES_PARAMS)} from process_weights_after_loading, got "
                             f"{sorted(params)}")
        return n, k

    def dequantize_weight(self, params: Mapping[str, Any]):
        if "weight_hi" in params:
            return kernels.mxfp6_dequantize_planes(*(params[name] for name in PLANES_PARAMS), self.weight_dtype,
                                                   jnp.float32)
        return quant.dequantize_mx(params["weight"], params["weight_scale"], self.weight_dtype, jnp.float32)

    def quantize_input(self, x2):
        """The activation as the GEMM sees it (qdq, same dtype)."""
        if self.input_dtype is None:
            return x2
        if self.input_dtype == "fp8_per_tensor":
            q, s = quant.scaled_fp8_quant(x2)
            return (q.astype(jnp.float32) * s).astype(x2.dtype)
        return quant.qdq_mx(x2, self.input_dtype)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        n, k = self._nk(params)
        x2, lead = flatten_tokens(x, k, "QuarkOCP_MX")
        if "weight_hi" in params:
            y = kernels.mxfp6_mm_planes(self.quantize_input(x2), *(params[name] for name in PLANES_PARAMS), bias,
                                        element=self.weight_dtype, impl=self.impl)
            return y.reshape(*lead, n)
        if self.kernel_op == "mxfp6_mm":
            y = kernels.mxfp6_mm(self.quantize_input(x2), params["weight"], params["weight_scale"], bias,
                                 element=self.weight_dtype, impl=self.impl)
            return y.reshape(*lead, n)
        w = quant.dequantize_mx(params["weight"], params["weight_scale"], self.weight_dtype, x2.dtype)
        return xla_linear(self.quantize_input(x2), w, bias).reshape(*lead, n)
