"""``QuarkW4A16Int4`` (vLLM's, SPEC section 3): INT4 (symmetric) or UINT4 (with zero points) weight-only, per
group along K or per channel, in Quark's packed layout; the activation is not quantized.

Per group, ``process_weights_after_loading`` repacks Quark's layout once (``kernels.int4_repack``: uint8 [N, K/2],
int8 zero points [G, N]; the checkpoint layout is not kept) and ``apply_weights`` calls ``kernels.int4_mm_nk`` on
it (``kernel_op`` "int4_mm"; ``impl`` picks the Pallas decode kernel or the XLA reference, which dequantizes the
repacked layout); per channel (amd-quark's untransposed layout) keeps the checkpoint layout and runs the XLA
reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from quark_jax import formats, kernels, quant
from quark_jax.errors import CheckpointError
from quark_jax.schemes.base import SCALE_DTYPES, ParamSpec, QuarkScheme, flatten_tokens
from quark_jax.schemes.ocp_mx import xla_linear

__all__ = ["QuarkW4A16Int4"]


@dataclass(frozen=True, kw_only=True)
class QuarkW4A16Int4(QuarkScheme):
    """INT4 / UINT4 weight-only.

    * ``signed``: True for int4 (symmetric, values -8..7, no zero point), False for uint4 (0..15, zero points).
    * ``group_size``: elements of K per scale; -1 for per channel (one group of K).
    * ``pack_method``: Quark's ``export.pack_method``, "reorder" (default) or "order" (:data:`quark_jax.formats.
      INT4_PACK_ORDERS`).

    Params, as amd-quark 0.13 exports them. Per group (vLLM's layout too; fused shards side by side along N):
    ``weight`` int32 [K, N/8]; ``weight_scale`` float [G, N]; ``weight_zero_point`` int32 [G, N/8]. Per channel
    (not transposed; shards stacked along N): ``weight`` int32 [N, K/8]; ``weight_scale`` [N];
    ``weight_zero_point`` int32 [N/8]. Zero points: uint4 needs them; int4 may store them, all zero (dropped).
    Processed per group: ``weight`` uint8 [N, K/2] (``kernels.int4_repack``), ``weight_scale`` f32 [G, N],
    ``weight_zero_point`` int8 [G, N] (uint4); per channel: the checkpoint layout, f32 scales.
    Apply: ``y = linear(x, (q - z) * s, bias)`` with the weight dequantized in f32 and rounded once to x's dtype.

    >>> s = QuarkW4A16Int4(signed=True, group_size=8, pack_method="order")
    >>> w = formats.pack_int4(jnp.ones((8, 8), jnp.int32), "order")            # K = 8, N = 8, every q = 1
    >>> p = s.process_weights_after_loading({"weight": w, "weight_scale": jnp.full((1, 8), 0.5)})
    >>> s.apply_weights(p, jnp.ones((1, 8)))[0, :2].tolist()
    [4.0, 4.0]
    """

    signed: bool = True  # int4 (True) or uint4 with zero points (False)
    group_size: int = 128  # K elements per scale; -1: per channel
    pack_method: str = "reorder"  # Quark's export.pack_method: "reorder" or "order"

    min_capability = 70  # vLLM: compute capability 7.0
    choices = {"pack_method": tuple(formats.INT4_PACK_ORDERS)}

    shardable = True  # column: 8-column words with their scales / zero points; row: whole groups of K
    shard_n_block = 8

    @property
    def kernel_op(self):
        return None if self.group_size == -1 else "int4_mm"

    @property
    def shard_k_block(self) -> int:
        return 8 if self.group_size == -1 else self.group_size  # per channel: 8 K values a word

    @property
    def shard_transposed(self) -> bool:
        return self.group_size != -1  # per group, raw: [K, N/8], [G, N], [G, N/8]

    @property
    def shard_transposed_params(self):
        # per group, processed: weight [N, K/2] (N on axis 0; whole groups of K are whole runs of group / 2 bytes
        # along axis 1), scales and zero points [G, N]
        return None if self.group_size == -1 else ("weight_scale", "weight_zero_point")

    def __post_init__(self):
        super().__post_init__()
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % 2):
            raise ValueError(f"group_size: expected a positive even group size (the repacked layout holds two "
                             f"half-groups a byte) or -1 (per channel), got {self.group_size}")

    def summary(self) -> str:
        grouping = "per_channel" if self.group_size == -1 else f"per_group {self.group_size}"
        return f"QuarkW4A16Int4(weight {'int4' if self.signed else 'uint4'} {grouping}, {self.pack_method}, input " \
               "not quantized)"

    def _group(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths, k = tuple(int(w) for w in output_partition_sizes), int(input_size)
        if any(w % 8 for w in widths):
            raise ValueError(f"output_partition_sizes: INT4 packs 8 output channels an int32, so each shard's N must "
                             f"be a multiple of 8, got {list(widths)}")
        g = self._group(k)
        if k % g:
            raise ValueError(f"input_size: K = {k} is not a multiple of the group size {g}")
        groups, packed = k // g, tuple(w // 8 for w in widths)
        if self.group_size == -1:
            if k % 8:
                raise ValueError(f"input_size: per-channel INT4 packs 8 values of K an int32, K must be a multiple "
                                 f"of 8, got {k}")
            return {"weight": ParamSpec.rows(widths, (k // 8,), dtype=np.int32, doc="packed int4 weight [N, K/8]"),
                    "weight_scale": ParamSpec.rows(widths, dtype=np.float32, checkpoint_dtypes=SCALE_DTYPES,
                                                   doc="per-channel scales [N]"),
                    "weight_zero_point": ParamSpec.rows(packed, dtype=np.int32, required=not self.signed,
                                                        doc="packed per-channel zero points [N/8]")}
        return {"weight": ParamSpec.cols(packed, (k,), dtype=np.int32, doc="packed int4 weight [K, N/8]"),
                "weight_scale": ParamSpec.cols(widths, (groups,), dtype=np.float32, checkpoint_dtypes=SCALE_DTYPES,
                                               doc="scales [K/group_size, N]"),
                "weight_zero_point": ParamSpec.cols(packed, (groups,), dtype=np.int32, required=not self.signed,
                                                    doc="packed zero points [K/group_size, N/8]")}

    def weight_geometry(self, stored_shape):
        if self.group_size == -1:
            return int(stored_shape[0]), int(stored_shape[1]) * 8  # [N, K/8]
        return int(stored_shape[1]) * 8, int(stored_shape[0])  # [K, N/8]

    def check_loaded(self, params: Mapping[str, np.ndarray], layer: str) -> None:
        z = params.get("weight_zero_point")
        if self.signed and z is not None and np.any(np.asarray(z) != 0):
            raise CheckpointError(f"layer {layer}: weight_zero_point must be all zeros for a symmetric int4 weight "
                                  f"(QuarkW4A16Int4), found nonzero words", layer=layer, field="weight_zero_point",
                                  expected="zeros", found="nonzero")

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        self._widths(self.weight_geometry(weight.shape)[0], logical_widths)
        scale = jnp.asarray(params["weight_scale"]).astype(jnp.float32)
        zeros = None if self.signed else jnp.asarray(params["weight_zero_point"])
        if self.group_size != -1:  # the repacked layout replaces the checkpoint's (no second copy is returned)
            weight, zeros = kernels.int4_repack(weight, zeros, group_size=self.group_size, order=self.pack_method,
                                                signed=self.signed)
        out = {"weight": weight, "weight_scale": scale}
        if zeros is not None:
            out["weight_zero_point"] = zeros
        return out

    def _dequantize(self, params, dtype):
        if self.group_size == -1:
            return quant.dequantize_int4_per_channel(params["weight"], params["weight_scale"],
                                                     params.get("weight_zero_point"), order=self.pack_method,
                                                     signed=self.signed, dtype=dtype)
        return quant.dequantize_int4_nk(params["weight"], params["weight_scale"], params.get("weight_zero_point"),
                                        group_size=self.group_size, signed=self.signed, dtype=dtype)

    def dequantize_weight(self, params: Mapping[str, Any]):
        return self._dequantize(params, jnp.float32)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        w = params["weight"]
        n, k = self.weight_geometry(w.shape) if self.group_size == -1 else (w.shape[0], 2 * w.shape[1])
        x2, lead = flatten_tokens(x, k, "QuarkW4A16Int4")
        if self.group_size == -1:
            return xla_linear(x2, self._dequantize(params, x2.dtype), bias).reshape(*lead, n)
        y = kernels.int4_mm_nk(x2, w, params["weight_scale"], params.get("weight_zero_point"), bias,
                               group_size=self.group_size, signed=self.signed, impl=self.impl)
        return y.reshape(*lead, n)
