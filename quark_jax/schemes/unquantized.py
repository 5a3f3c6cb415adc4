"""``UnquantizedLinearMethod``: the float linear of excluded / unquantized layers, with the scheme lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from quark_jax.quant import dot_precision
from quark_jax.schemes.base import SCALE_DTYPES, ParamSpec, QuarkScheme, flatten_tokens

__all__ = ["UnquantizedLinearMethod"]


@dataclass(frozen=True, kw_only=True)
class UnquantizedLinearMethod(QuarkScheme):
    """A plain float linear (vLLM's name): ``weight`` [N, K] stored f32/bf16/f16, kept in ``params_dtype``;
    ``y = x.dtype(x @ W.T + bias)`` with f32 accumulation. Not a Quark scheme: ``QuarkConfig.scheme_for`` returns
    None for such layers and :class:`quark_jax.nn.QuarkLinear` uses this.

    >>> import jax.numpy as jnp
    >>> m = UnquantizedLinearMethod()
    >>> m.apply_weights({"weight": jnp.ones((2, 3))}, jnp.ones((1, 3))).tolist()
    [[3.0, 3.0]]
    """

    shardable = True  # quark_jax.nn.parallel layouts apply

    def summary(self) -> str:
        return "unquantized"

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths = tuple(int(w) for w in output_partition_sizes)
        dtype = np.dtype(jnp.float32 if params_dtype is None else params_dtype)
        return {"weight": ParamSpec.rows(widths, (int(input_size),), dtype=dtype, checkpoint_dtypes=SCALE_DTYPES,
                                         doc="float weight [N, K]")}

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        self._widths(weight.shape[0], logical_widths)
        return {"weight": weight}

    def dequantize_weight(self, params: Mapping[str, Any]):
        return jnp.asarray(params["weight"]).astype(jnp.float32)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        weight = params["weight"]
        n, k = weight.shape
        x2, lead = flatten_tokens(x, k, "an unquantized linear")
        acc = lax.dot_general(x2, weight.astype(x2.dtype), (((1,), (1,)), ((), ())),
                              precision=dot_precision(x2), preferred_element_type=jnp.float32)
        if bias is not None:
            acc = acc + jnp.asarray(bias).astype(jnp.float32)
        return acc.astype(x2.dtype).reshape(*lead, n)
