"""``QuarkW8A8Fp8PerBlock`` (vLLM's ``QuarkW8A8Fp8Block``, SPEC section 3): FP8 weights with one scale per
[128, 128] block (float32 or E8M0), activations quantized dynamically per token and group of 128 along K.

``apply_weights`` calls ``quark_jax.kernels.fp8_block_mm`` (``kernel_op``; ``impl`` picks the fused Pallas kernel
or the XLA reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from quark_jax import formats, kernels, quant
from quark_jax.schemes.base import SCALE_DTYPES, ParamSpec, QuarkScheme, flatten_tokens

__all__ = ["QuarkW8A8Fp8PerBlock"]

E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)


@dataclass(frozen=True, kw_only=True)
class QuarkW8A8Fp8PerBlock(QuarkScheme):
    """Block-scaled FP8 W8A8.

    * ``block``: the weight's scale block [rows (N), cols (K)], Quark's ``block_size`` (vLLM: [128, 128]).
    * ``scale_format``: "float" (``weight_scale`` float32 / bf16 / f16, the dequant multiplier) or "e8m0"
      (``weight_scale`` float8_e8m0fnu, Quark's ``scale_type: float8_e8m0fnu``).

    Params: ``weight`` float8_e4m3fn [N, K]; ``weight_scale`` [ceil(N/rows), ceil(K/cols)]; every fused shard's
    rows a multiple of ``rows``. Processed: the same, E8M0 scales as their uint8 bytes. Apply:
    ``q, s = per_token_group_quant_fp8(x, cols)``; ``y = sum_k (q * s)[m, k] * (w * s_w)[n, k] + bias`` with f32
    accumulation (vLLM's ``w8a8_block_fp8_matmul`` up to f32 summation order), in x's dtype.

    >>> import jax.numpy as jnp
    >>> s = QuarkW8A8Fp8PerBlock(block=(16, 32))
    >>> w, ws = quant.quantize_fp8_per_block(jnp.full((16, 64), 0.25), (16, 32))
    >>> p = s.process_weights_after_loading({"weight": w, "weight_scale": ws})
    >>> s.apply_weights(p, jnp.ones((1, 64)))[0, :2].tolist()
    [16.0, 16.0]
    """

    block: tuple[int, int] = (128, 128)  # scale block [rows, cols] of the weight; the input group is cols
    scale_format: str = "float"  # "float" or "e8m0"

    min_capability = 70  # vLLM: compute capability 7.0
    kernel_op = "fp8_block_mm"
    shardable = True  # weight rows / K with their scale blocks; the input's per-token groups are local to a shard

    @property
    def shard_k_block(self) -> int:
        return int(self.block[1])

    @property
    def shard_n_block(self) -> int:
        return int(self.block[0])
    choices = {"scale_format": ("float", "e8m0")}

    def __post_init__(self):
        super().__post_init__()
        if len(self.block) != 2 or any(int(b) <= 0 for b in self.block):
            raise ValueError(f"block: expected two positive sizes [rows, cols], got {self.block}")

    def summary(self) -> str:
        return (f"QuarkW8A8Fp8PerBlock(weight fp8 per_block {list(self.block)} {self.scale_format} scales, "
                f"input fp8 dynamic per_group {self.block[1]})")

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths, k = tuple(int(w) for w in output_partition_sizes), int(input_size)
        bn, bk = (int(b) for b in self.block)
        if len(widths) > 1 and any(w % bn for w in widths):
            raise ValueError(f"output_partition_sizes: each fused shard of a block-scaled FP8 layer must be a "
                             f"multiple of the block rows {bn}, got {list(widths)}")
        if k % bk:
            raise ValueError(f"input_size: the dynamic per-group input quantizer needs K to be a multiple of the "
                             f"block cols {bk}, got {k}")
        scale_rows = tuple(-(-w // bn) for w in widths)
        if self.scale_format == "e8m0":
            scale = ParamSpec.rows(scale_rows, (k // bk,), dtype=E8M0, doc="E8M0 block scales [N/rows, K/cols]")
        else:
            scale = ParamSpec.rows(scale_rows, (k // bk,), dtype=np.float32, checkpoint_dtypes=SCALE_DTYPES,
                                   doc="block scales [N/rows, K/cols] (dequant multipliers)")
        return {"weight": ParamSpec.rows(widths, (k,), dtype=jnp.float8_e4m3fn, doc="fp8 weight [N, K]"),
                "weight_scale": scale}

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        self._widths(weight.shape[0], logical_widths)
        ws = jnp.asarray(params["weight_scale"])
        ws = ws.view(jnp.uint8) if self.scale_format == "e8m0" else ws.astype(jnp.float32)
        return {"weight": weight, "weight_scale": ws}

    def dequantize_weight(self, params: Mapping[str, Any]):
        return quant.dequantize_fp8_per_block(params["weight"], params["weight_scale"], self.block)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        n, k = params["weight"].shape
        x2, lead = flatten_tokens(x, k, "QuarkW8A8Fp8PerBlock")
        q, s = quant.per_token_group_quant_fp8(x2, int(self.block[1]))
        ws = params["weight_scale"]
        ws = formats.e8m0_to_float32(ws) if self.scale_format == "e8m0" else ws
        y = kernels.fp8_block_mm(q, params["weight"], s, ws, bias, block=tuple(int(b) for b in self.block),
                                 out_dtype=x2.dtype, impl=self.impl)
        return y.reshape(*lead, n)
