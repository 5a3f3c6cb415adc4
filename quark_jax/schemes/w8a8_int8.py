"""``QuarkW8A8Int8``: symmetric INT8 weights; static per-tensor or dynamic per-token INT8 activations, symmetric or
asymmetric (SPEC section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from quark_jax import kernels, quant
from quark_jax.errors import CheckpointError
from quark_jax.schemes.base import SCALE_DTYPES, ParamSpec, QuarkScheme, StaticInputQuant, flatten_tokens

__all__ = ["QuarkW8A8Int8"]

WEIGHT_QSCHEMES = ("per_tensor", "per_channel")
AZP_MODES = ("vllm", "checkpoint")
ZERO_POINT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32))


@dataclass(frozen=True, kw_only=True)
class QuarkW8A8Int8(QuarkScheme):
    """W8A8 INT8 (vLLM's ``QuarkW8A8Int8``): a static per-tensor or a dynamic per-token input quantizer.

    * ``qscheme``: the weight's, "per_tensor" (one scale per shard; fused layers get per-channel scales [N]) or
      "per_channel" ([N]). Weights are symmetric: ``weight_zero_point`` is loaded, checked to be zero, dropped.
    * ``input_symmetric``: False for an asymmetric input quantizer (scale and zero point).
    * ``azp_mode`` (asymmetric only): "vllm" (default) rebuilds (s', z') from the checkpoint's (s, z) as vLLM does
      (:func:`quark_jax.quant.reconstruct_static_azp`; z' can be one off from z), "checkpoint" uses the
      checkpoint's own (s, z) and so matches Quark exactly.
    * ``is_static_input_scheme``: False for Quark's dynamic "per-token" input (``qscheme: per_channel``,
      ``is_dynamic: true``): nothing is stored for the input; each row of x gets its own scale (and, asymmetric,
      zero point) at run time (:func:`quark_jax.quant.scaled_int8_quant` with ``scale=None``), and the kernel
      subtracts ``azp[m] * colsum(Wq)[n]`` as vLLM's ``cutlass_scaled_mm_azp`` does.

    Processed params: ``weight`` int8 [N, K], ``weight_scale`` () or [N]; static input: ``input_scale`` (), and for
    asymmetric input ``input_zero_point`` () int32 and ``azp_adj`` int32 [N] = z * sum_k Wq[n, k]; dynamic
    asymmetric input: ``azp_adj`` int32 [N] = sum_k Wq[n, k].
    Apply: ``y = x.dtype(s_x * s_w * f32(acc_i32 - azp_adj) + bias)`` through
    :func:`quark_jax.kernels.int8_scaled_mm`.

    >>> import jax.numpy as jnp
    >>> s = QuarkW8A8Int8(qscheme="per_channel", input_symmetric=True, impl="xla")
    >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.int8),
    ...     "weight_scale": jnp.full((16,), 0.25), "input_scale": jnp.array([0.5])})
    >>> s.apply_weights(p, jnp.ones((2, 32)))[0, :2].tolist()   # x = 1 -> q = 2; 0.5 * 0.25 * (32 * 2)
    [8.0, 8.0]
    >>> d = QuarkW8A8Int8(qscheme="per_channel", input_symmetric=False, is_static_input_scheme=False, impl="xla")
    >>> p = d.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.int8), "weight_scale": jnp.ones(16)})
    >>> round(d.apply_weights(p, jnp.linspace(0.0, 2.55, 32)[None])[0, 0].item(), 4)   # x lies on the int8 grid
    40.8
    """

    kernel_op = "int8_scaled_mm"

    qscheme: str = "per_channel"  # the weight's: "per_tensor" or "per_channel"
    input_symmetric: bool = True  # False: an input zero point (asymmetric)
    azp_mode: str = "vllm"  # asymmetric input: "vllm" (rebuilt (s', z')) or "checkpoint" (Quark's (s, z))
    is_static_input_scheme: bool = True  # False: dynamic per-token input scales (and zero points) at run time
    stat_axes: tuple[str, ...] = ()  # mesh axes the dynamic row max / min are reduced over in shard_map (for_shard)

    min_capability = 75  # vLLM: compute capability 7.5
    choices = {"qscheme": WEIGHT_QSCHEMES, "azp_mode": AZP_MODES}

    shardable = True  # quark_jax.nn.parallel layouts apply

    def for_shard(self, *, token_axes: tuple[str, ...] = (), k_axes: tuple[str, ...] = ()) -> "QuarkW8A8Int8":
        return self if self.is_static_input_scheme else self.replace(stat_axes=tuple(k_axes))

    def summary(self) -> str:
        if not self.is_static_input_scheme:
            inp = "symmetric" if self.input_symmetric else "asymmetric"
            return f"QuarkW8A8Int8(weight int8 {self.qscheme}, input int8 dynamic per_token {inp})"
        inp = "symmetric" if self.input_symmetric else f"asymmetric, azp_mode={self.azp_mode}"
        return f"QuarkW8A8Int8(weight int8 {self.qscheme}, input int8 static per_tensor {inp})"

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths, k = tuple(int(w) for w in output_partition_sizes), int(input_size)
        i32 = np.dtype(np.int32)
        specs = {"weight": ParamSpec.rows(widths, (k,), dtype=np.int8, doc="int8 weight [N, K]")}
        if self.qscheme == "per_tensor":
            specs["weight_scale"] = ParamSpec.per_shard(len(widths), doc="per-tensor weight scale, one per shard")
            specs["weight_zero_point"] = ParamSpec.per_shard(len(widths), dtype=i32,
                                                             checkpoint_dtypes=ZERO_POINT_DTYPES, required=False,
                                                             doc="weight zero point (0)")
        else:
            specs["weight_scale"] = ParamSpec.rows(widths, dtype=np.float32, checkpoint_dtypes=SCALE_DTYPES,
                                                   doc="per-channel weight scale [N]")
            specs["weight_zero_point"] = ParamSpec.rows(widths, dtype=i32, checkpoint_dtypes=ZERO_POINT_DTYPES,
                                                        required=False, doc="weight zero points [N] (0)")
        if not self.is_static_input_scheme:
            return specs
        specs["input_scale"] = ParamSpec.per_shard(len(widths), doc="static per-tensor input scale")
        specs["input_zero_point"] = ParamSpec.per_shard(len(widths), dtype=i32, checkpoint_dtypes=ZERO_POINT_DTYPES,
                                                        required=not self.input_symmetric,
                                                        doc="static per-tensor input zero point")
        return specs

    def check_loaded(self, params: Mapping[str, np.ndarray], layer: str) -> None:
        wz = params.get("weight_zero_point")
        if wz is not None and np.any(np.asarray(wz) != 0):
            raise CheckpointError(f"layer {layer}: weight_zero_point must be all zeros (QuarkW8A8Int8 supports "
                                  f"symmetric weights only), found nonzero values {np.unique(wz)[:8].tolist()}")
        iz = params.get("input_zero_point")
        if iz is not None and self.input_symmetric and np.any(np.asarray(iz) != 0):
            raise CheckpointError(f"layer {layer}: input_zero_point must be 0 for a symmetric input quantizer, "
                                  f"found {np.asarray(iz).tolist()}")
        if not self.input_symmetric and self.azp_mode == "checkpoint" and self.is_static_input_scheme:
            s, z = np.asarray(params["input_scale"]), np.asarray(iz)
            if np.any(s != s[0]) or np.any(z != z[0]):
                raise CheckpointError(f"layer {layer}: the fused shards have different input quantizers "
                                      f"(scales {s.tolist()}, zero points {z.tolist()}); azp_mode='checkpoint' "
                                      f"needs one (s, z) for the fused input, use azp_mode='vllm'")

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        widths = self._widths(weight.shape[0], logical_widths)
        weight_scale = jnp.asarray(params["weight_scale"], jnp.float32)
        if self.qscheme == "per_tensor":
            weight_scale = (quant.convert_to_channelwise(weight_scale, widths) if len(widths) > 1
                            else weight_scale.reshape(()))
        else:
            weight_scale = weight_scale.reshape(-1)
        out = {"weight": weight, "weight_scale": weight_scale}
        if not self.is_static_input_scheme:
            if not self.input_symmetric:  # per-token zero points: the kernel subtracts azp[m] * colsum(Wq)[n]
                out["azp_adj"] = quant.compute_azp_adj(weight, jnp.int32(1))
            return out
        input_scale = jnp.asarray(params["input_scale"], jnp.float32).reshape(-1)
        if self.input_symmetric:
            out["input_scale"] = jnp.max(input_scale)
            return out
        zero_point = jnp.asarray(params["input_zero_point"]).reshape(-1)
        if self.azp_mode == "vllm":
            s, z = quant.reconstruct_static_azp(input_scale, zero_point)
        else:
            s, z = input_scale[0], zero_point[0].astype(jnp.int32)
        out.update(input_scale=s, input_zero_point=z, azp_adj=quant.compute_azp_adj(weight, z))
        return out

    def static_input_quant(self, params: Mapping[str, Any]):
        """``StaticInputQuant("int8", input_scale, zero_point=input_zero_point or None)`` for a static input
        quantizer, else None.

        >>> s = QuarkW8A8Int8(qscheme="per_tensor", input_symmetric=True)
        >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.int8),
        ...                                      "weight_scale": jnp.array([1.0]), "input_scale": jnp.array([0.5])})
        >>> q = s.static_input_quant(p)
        >>> q.codes, float(q.scale), q.zero_point
        ('int8', 0.5, None)
        """
        if not self.is_static_input_scheme:
            return None
        return StaticInputQuant("int8", params["input_scale"],
                                zero_point=None if self.input_symmetric else params["input_zero_point"])

    def apply_codes(self, params: Mapping[str, Any], codes, bias=None, *, out_dtype, finish: bool = True):
        """The static path of :meth:`apply_weights` on x's int8 codes (``quant.scaled_int8_quant(x, input_scale,
        input_zero_point)``): the same GEMM on the same codes (the zero point folded in ``azp_adj``).

        >>> s = QuarkW8A8Int8(qscheme="per_tensor", input_symmetric=True, impl="xla")
        >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.int8),
        ...                                      "weight_scale": jnp.array([0.5]), "input_scale": jnp.array([0.25])})
        >>> s.apply_codes(p, jnp.full((2, 32), 4, jnp.int8), out_dtype=jnp.float32)[0, :2].tolist()
        [16.0, 16.0]
        """
        if self.static_input_quant(params) is None:
            raise NotImplementedError(f"{self.summary()}: takes no pre-quantized input")
        weight = params["weight"]
        n, k = weight.shape
        if codes.ndim < 1 or codes.shape[-1] != k:
            raise ValueError(f"codes: expected shape [..., {k}] for QuarkW8A8Int8, got {tuple(codes.shape)}")
        lead = codes.shape[:-1]
        azp_adj = None if self.input_symmetric else params["azp_adj"]
        y = kernels.int8_scaled_mm(codes.reshape(-1, k), weight, params["input_scale"], params["weight_scale"],
                                   bias, azp_adj=azp_adj, out_dtype=out_dtype, impl=self.impl)
        return y.reshape(*lead, n)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        weight = params["weight"]
        n, k = weight.shape
        x2, lead = flatten_tokens(x, k, "QuarkW8A8Int8")
        if not self.is_static_input_scheme:
            q, s, z = quant.scaled_int8_quant(x2, symmetric=self.input_symmetric, axis_name=self.stat_axes or None)
            azp_adj = None if self.input_symmetric else params["azp_adj"]
            y = kernels.int8_scaled_mm(q, weight, s, params["weight_scale"], bias, azp_adj=azp_adj, azp=z,
                                       out_dtype=x2.dtype, impl=self.impl)
            return y.reshape(*lead, n)
        # static: the GEMM quantizes x itself (kernels.int8_scaled_mm: in the Pallas kernel's prologue, else
        # quant.scaled_int8_quant first), the same codes in one kernel
        zp = None if self.input_symmetric else params["input_zero_point"]
        azp_adj = None if self.input_symmetric else params["azp_adj"]
        y = kernels.int8_scaled_mm(x2, weight, params["input_scale"], params["weight_scale"], bias, azp_adj=azp_adj,
                                   x_zero_point=zp, out_dtype=x2.dtype, impl=self.impl)
        return y.reshape(*lead, n)
