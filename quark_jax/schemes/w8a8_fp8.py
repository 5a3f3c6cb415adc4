"""``QuarkW8A8Fp8``: FP8 e4m3 weights (per-tensor or per-channel) and FP8 activations (SPEC section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from quark_jax import kernels, quant
from quark_jax.schemes.base import SCALE_DTYPES, ParamSpec, QuarkScheme, StaticInputQuant, flatten_tokens

__all__ = ["QuarkW8A8Fp8"]

WEIGHT_QSCHEMES = ("per_tensor", "per_channel")
ACTIVATIONS = ("static", "dynamic_per_token", "dynamic_per_tensor")
FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz")


@dataclass(frozen=True, kw_only=True)
class QuarkW8A8Fp8(QuarkScheme):
    """W8A8 FP8 (vLLM's ``QuarkW8A8Fp8``).

    * ``weight_qscheme``: "per_tensor" (one scale per fused shard on disk; re-quantized to the max shard scale
      at load, vLLM-exact, so every layer runs with one scalar) or "per_channel" (scales [N]).
    * ``activation``: "static" (per-tensor, calibrated ``input_scale``; the max over shards), "dynamic_per_token"
      or "dynamic_per_tensor".
    * ``fp8_dtype``: "float8_e4m3fn", or "float8_e4m3fnuz" to run as on ROCm MI300 (weights reinterpreted, scales
      x2, activations clamped to 224, vLLM-exact).

    Raw params: ``weight`` [N, K] float8_e4m3fn, ``weight_scale`` [n_shards] or [N] f32, ``input_scale``
    [n_shards] f32 (static only). Processed: ``weight``, ``weight_scale`` () or [N], ``input_scale`` () and
    ``input_scale_reciprocal`` () (``true_divide(1, input_scale)``, the quantizer's multiplier, computed once at
    load rather than in every forward pass).
    Apply: ``y = x.dtype(s_x * (s_w * sum_k q_x q_w) + bias)`` through :func:`quark_jax.kernels.fp8_scaled_mm`.

    >>> import jax.numpy as jnp
    >>> s = QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static", impl="xla")
    >>> raw = {"weight": jnp.ones((16, 32), jnp.float8_e4m3fn), "weight_scale": jnp.array([0.5]),
    ...        "input_scale": jnp.array([0.25])}
    >>> p = s.process_weights_after_loading(raw)
    >>> s.apply_weights(p, jnp.ones((2, 32)))[0, :2].tolist()   # x = 1 -> q = 4; 0.25 * 0.5 * (32 * 4)
    [16.0, 16.0]
    """

    kernel_op = "fp8_scaled_mm"
    shardable = True  # quark_jax.nn.parallel layouts apply

    weight_qscheme: str = "per_tensor"  # "per_tensor" (requantized to the max shard scale) or "per_channel"
    activation: str = "static"  # "static", "dynamic_per_token" or "dynamic_per_tensor"
    fp8_dtype: str = "float8_e4m3fn"  # or "float8_e4m3fnuz" (ROCm MI300 numerics)
    amax_axes: tuple[str, ...] = ()  # mesh axes the dynamic amax is reduced over inside shard_map (for_shard)

    min_capability = 89  # vLLM: compute capability 8.9
    choices = {"weight_qscheme": WEIGHT_QSCHEMES, "activation": ACTIVATIONS, "fp8_dtype": FP8_DTYPES}

    @property
    def is_static_input_scheme(self) -> bool:
        return self.activation == "static"

    def summary(self) -> str:
        extra = ", fnuz" if self.fp8_dtype == "float8_e4m3fnuz" else ""
        return f"QuarkW8A8Fp8(weight fp8 {self.weight_qscheme}, input fp8 {self.activation}{extra})"

    def for_shard(self, *, token_axes: tuple[str, ...] = (), k_axes: tuple[str, ...] = ()) -> "QuarkW8A8Fp8":
        if self.activation == "static":
            return self
        axes = tuple(k_axes) if self.activation == "dynamic_per_token" else tuple(token_axes) + tuple(k_axes)
        return self.replace(amax_axes=axes)

    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        widths, k = tuple(int(w) for w in output_partition_sizes), int(input_size)
        specs = {"weight": ParamSpec.rows(widths, (k,), dtype=jnp.float8_e4m3fn, doc="fp8 weight [N, K]")}
        if self.weight_qscheme == "per_tensor":
            specs["weight_scale"] = ParamSpec.per_shard(len(widths), doc="per-tensor weight scale, one per shard")
        else:
            specs["weight_scale"] = ParamSpec.rows(widths, dtype=np.float32, checkpoint_dtypes=SCALE_DTYPES,
                                                   doc="per-channel weight scale [N]")
        if self.is_static_input_scheme:
            specs["input_scale"] = ParamSpec.per_shard(len(widths), doc="static per-tensor input scale")
        return specs

    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        weight = jnp.asarray(params["weight"])
        widths = self._widths(weight.shape[0], logical_widths)
        weight_scale = jnp.asarray(params["weight_scale"], jnp.float32)
        input_scale = jnp.asarray(params["input_scale"], jnp.float32) if self.is_static_input_scheme else None
        if self.fp8_dtype == "float8_e4m3fnuz":
            weight, weight_scale, input_scale = quant.normalize_e4m3fn_to_e4m3fnuz(weight, weight_scale, input_scale)
        if self.weight_qscheme == "per_tensor":
            weight, weight_scale = quant.requantize_with_max_scale(weight, weight_scale, widths)
        else:
            weight_scale = weight_scale.reshape(-1)
        out = {"weight": weight, "weight_scale": weight_scale}
        if input_scale is not None:
            out["input_scale"] = jnp.max(input_scale)
            out["input_scale_reciprocal"] = quant.true_divide(1.0, out["input_scale"])
        return out

    def static_input_quant(self, params: Mapping[str, Any]):
        """``StaticInputQuant("fp8", input_scale, input_scale_reciprocal)`` for static e4m3fn activations with
        the stored reciprocal, else None.

        >>> s = QuarkW8A8Fp8(activation="static")
        >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.float8_e4m3fn),
        ...                                      "weight_scale": jnp.array([1.0]), "input_scale": jnp.array([0.5])})
        >>> q = s.static_input_quant(p)
        >>> q.codes, float(q.scale), float(q.scale_reciprocal), QuarkW8A8Fp8(activation="dynamic_per_token").static_input_quant(p)
        ('fp8', 0.5, 2.0, None)
        """
        if (self.activation != "static" or jnp.dtype(self.fp8_dtype) != jnp.float8_e4m3fn
                or "input_scale_reciprocal" not in params):
            return None
        return StaticInputQuant("fp8", params["input_scale"], params["input_scale_reciprocal"])

    def apply_codes(self, params: Mapping[str, Any], codes, bias=None, *, out_dtype, finish: bool = True):
        """The static path of :meth:`apply_weights` on x's codes (``quant.scaled_fp8_quant(x, input_scale)``):
        the same GEMM on the same codes, so the same output.

        >>> s = QuarkW8A8Fp8(activation="static", impl="xla")
        >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.float8_e4m3fn),
        ...                                      "weight_scale": jnp.array([0.5]), "input_scale": jnp.array([0.25])})
        >>> codes = jnp.full((2, 32), 4.0).astype(jnp.float8_e4m3fn)   # x = 1 quantized with scale 0.25
        >>> s.apply_codes(p, codes, out_dtype=jnp.float32)[0, :2].tolist()
        [16.0, 16.0]
        """
        if self.static_input_quant(params) is None:
            raise NotImplementedError(f"{self.summary()}: takes no pre-quantized input")
        weight = params["weight"]
        n, k = weight.shape
        q2, lead = flatten_tokens(codes, k, "QuarkW8A8Fp8")
        y = kernels.fp8_scaled_mm(q2, weight, params["input_scale"], params["weight_scale"], bias,
                                  out_dtype=out_dtype, impl=self.impl, finish=finish)
        return y.reshape(*lead, n)

    def takes_transform(self, params: Mapping[str, Any]) -> bool:
        """True for static e4m3fn activations (:meth:`static_input_quant`): :meth:`apply_transformed` hands the
        transform to ``kernels.fp8_scaled_mm`` (the Pallas kernel forms x in its prologue)."""
        return self.static_input_quant(params) is not None

    def apply_transformed(self, params: Mapping[str, Any], x, bias=None, *, transform: str, norm_rinv=None,
                          norm_weight=None):
        """:meth:`apply_weights` of the RMSNorm output ("rmsnorm": x the un-normalized rows [..., K],
        ``norm_rinv`` [..., 1] float32, ``norm_weight`` [K]) or of ``silu(gate) * up`` ("silu_mul": x the fused
        gate_up output [..., 2K]); static e4m3fn activations: ``kernels.fp8_scaled_mm(..., transform=...)``, the
        same output as the XLA composition then :meth:`apply_weights` (SPEC 11.7).

        >>> s = QuarkW8A8Fp8(activation="static", impl="xla")
        >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.float8_e4m3fn),
        ...                                      "weight_scale": jnp.array([0.5]), "input_scale": jnp.array([0.25])})
        >>> gu = jnp.concatenate([jnp.full((2, 32), 30.0), jnp.ones((2, 32))], axis=-1)   # silu(30) * 1 = 30
        >>> s.apply_transformed(p, gu, transform="silu_mul")[0, :2].tolist()   # 0.25 * 0.5 * 32 * q(120)
        [480.0, 480.0]
        """
        if not self.takes_transform(params):
            return super().apply_transformed(params, x, bias, transform=transform, norm_rinv=norm_rinv,
                                             norm_weight=norm_weight)
        weight = params["weight"]
        n = weight.shape[0]
        x = jnp.asarray(x)
        x2 = x.reshape(-1, x.shape[-1])
        rinv = None if norm_rinv is None else jnp.asarray(norm_rinv, jnp.float32).reshape(-1, 1)
        y = kernels.fp8_scaled_mm(x2, weight, params["input_scale"], params["weight_scale"], bias,
                                  out_dtype=x2.dtype, impl=self.impl,
                                  x_scale_reciprocal=params["input_scale_reciprocal"], transform=transform,
                                  norm_rinv=rinv, norm_weight=norm_weight)
        return y.reshape(*x.shape[:-1], n)

    def apply_unfinished(self, params: Mapping[str, Any], x, bias=None):
        """:meth:`apply_weights`; static e4m3fn activations on the Pallas split-K path (no bias) come back as the
        GEMM's unfinished ``kernels.tiling.SplitSums`` (the same values once finished).

        >>> s = QuarkW8A8Fp8(activation="static", impl="xla")
        >>> p = s.process_weights_after_loading({"weight": jnp.ones((16, 32), jnp.float8_e4m3fn),
        ...                                      "weight_scale": jnp.array([0.5]), "input_scale": jnp.array([0.25])})
        >>> s.apply_unfinished(p, jnp.ones((2, 32)))[0, :2].tolist()   # XLA: finished
        [16.0, 16.0]
        """
        if self.static_input_quant(params) is None:
            return self.apply_weights(params, x, bias)
        weight = params["weight"]
        n, k = weight.shape
        x2, lead = flatten_tokens(x, k, "QuarkW8A8Fp8")
        y = kernels.fp8_scaled_mm(x2, weight, params["input_scale"], params["weight_scale"], bias,
                                  out_dtype=x2.dtype, impl=self.impl,
                                  x_scale_reciprocal=params["input_scale_reciprocal"], finish=False)
        return y.reshape(*lead, n)

    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        weight = params["weight"]
        n, k = weight.shape
        x2, lead = flatten_tokens(x, k, "QuarkW8A8Fp8")
        dtype = jnp.dtype(self.fp8_dtype)
        if self.activation == "static" and dtype == jnp.float8_e4m3fn:
            # the GEMM quantizes x itself (kernels.fp8_scaled_mm: in the Pallas kernel's prologue, else
            # quant.scaled_fp8_quant first): the same codes, one kernel
            y = kernels.fp8_scaled_mm(x2, weight, params["input_scale"], params["weight_scale"], bias,
                                      out_dtype=x2.dtype, impl=self.impl,
                                      x_scale_reciprocal=params.get("input_scale_reciprocal"))
            return y.reshape(*lead, n)
        if self.activation == "static":
            q, s = quant.scaled_fp8_quant(x2, params["input_scale"], dtype=dtype,
                                          scale_reciprocal=params.get("input_scale_reciprocal"))
        else:
            q, s = quant.scaled_fp8_quant(x2, per_token=self.activation == "dynamic_per_token", dtype=dtype,
                                          axis_name=self.amax_axes or None)
        y = kernels.fp8_scaled_mm(q, weight, s, params["weight_scale"], bias, out_dtype=x2.dtype, impl=self.impl)
        return y.reshape(*lead, n)
