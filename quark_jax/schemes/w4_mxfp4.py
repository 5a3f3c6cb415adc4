"""MXFP4 weight schemes (SPEC section 3): ``QuarkW4A4MXFP4`` (vLLM's) and two Quark exports we also accept,
``QuarkW4A8MXFP4Fp8`` (MXFP4 weights, static per-tensor FP8 input) and ``QuarkW4A16MXFP4`` (weight-only).

The weight stays packed as the checkpoint stores it: ``weight`` uint8 [N, K/2] (element 2j in the low nibble) and
``weight_scale`` uint8 [N, K/32] (E8M0 bytes); :func:`quark_jax.kernels.mxfp4_mm` decodes it. Where the Mosaic
GPU decode kernel may run (``impl="auto"`` on Hopper, M <= 16, or ``impl="mosaic"``: ``kernels.mxfp4_mm.
mxfp4_mosaic_may_run``) the scales are also stored transposed, ``weight_scale_kn`` uint8 [K/32, N] (the layout that kernel
reads: no transpose per decode step; 1/16 of the packed weight's bytes), and at load (``for_loaded``) the layer
checks once whether every scale byte is <= ``decode.FOLD_MAX_SCALE_BYTE`` (128), which makes the kernel's
folded-scale decode exact (``mosaic_fold``; else the unfolded decode runs). With
``dequantize_at_load=True`` the weight is instead dequantized once at load into a bfloat16 [N, K] array (exact: every
MXFP4 value is a bfloat16), trading 3.8x the memory for a plain GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from quark_jax import formats, kernels, quant
from quark_jax.kernels import MXFP4_FOLD_MAX_SCALE_BYTE as FOLD_MAX_SCALE_BYTE
from quark_jax.kernels import mxfp4_mosaic_may_run
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
    # set per layer at load by ``for_loaded`` (never by hand): every scale byte <= FOLD_MAX_SCALE_BYTE, so the
    # Mosaic kernel's folded decode is exact for this layer's weight
    mosaic_fold: bool = False

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
            scales = jnp.asarray(params["weight_scale"])
            out = {"weight": weight, "weight_scale": scales}
            if self.stores_scales_kn(weight.shape[0], weight.shape[1] * 2):
                out["weight_scale_kn"] = scales.T  # [K/32, N]: the Mosaic decode kernel's layout
        if self.is_static_input_scheme:
            out["input_scale"] = jnp.max(jnp.asarray(params["input_scale"], jnp.float32))
        return out

    @property
    def processes_on_host(self) -> bool:
        """The packed weight and scales pass through and the [K/32, N] copy is a transpose: the host does it
        (``dequantize_at_load`` computes: on the device)."""
        return not self.dequantize_at_load

    def process_on_host(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, np.ndarray]:
        """:meth:`process_weights_after_loading` in numpy (the loader's path: no device program per layer shape,
        no device sync): ``weight`` and ``weight_scale`` as given, ``weight_scale_kn`` their transpose (contiguous)
        where stored, ``input_scale`` the max of the shards' (float32, 0-d).

        >>> import numpy as np
        >>> s = QuarkW4A8MXFP4Fp8(impl="xla")
        >>> p = s.process_on_host({"weight": np.zeros((16, 16), np.uint8), "weight_scale": np.full((16, 1), 127,
        ...                        np.uint8), "input_scale": np.array([0.5, 0.25], np.float32)})
        >>> sorted(p), float(p["input_scale"]), p["input_scale"].shape
        (['input_scale', 'weight', 'weight_scale'], 0.5, ())
        """
        if not self.processes_on_host:
            return super().process_on_host(params, logical_widths)
        weight, scales = np.asarray(params["weight"]), np.asarray(params["weight_scale"])
        self._widths(weight.shape[0], logical_widths)
        out = {"weight": weight, "weight_scale": scales}
        if self.stores_scales_kn(weight.shape[0], weight.shape[1] * 2):
            out["weight_scale_kn"] = np.ascontiguousarray(scales.T)  # [K/32, N]: the Mosaic decode kernel's layout
        if self.is_static_input_scheme:
            out["input_scale"] = np.asarray(np.max(np.asarray(params["input_scale"], np.float32)), np.float32)
        return out

    def runs_process_cached_kernel(self, param_names) -> bool:
        """True where the Mosaic GPU decode kernel may run (the [K/32, N] scales are stored): the Mosaic custom
        call compiles each distinct kernel once per process, keyed by its hash.

        >>> QuarkW4A4MXFP4().runs_process_cached_kernel(("weight", "weight_scale", "weight_scale_kn"))
        True
        """
        return "weight_scale_kn" in tuple(param_names)

    def stores_scales_kn(self, n: int, k: int) -> bool:
        """Whether the processed params of a [N, K] layer hold ``weight_scale_kn`` (the scales as [K/32, N]):
        where the Mosaic decode kernel may run on this device (a static decision from the shape and device)."""
        return not self.dequantize_at_load and mxfp4_mosaic_may_run(k, n, impl=self.impl)

    def for_loaded(self, params: Mapping[str, Any], *, host_raw: Mapping[str, Any] | None = None) -> "_QuarkMXFP4":
        """This layer's scheme with ``mosaic_fold`` decided from its scales (a host-side check, once at load):
        True only where the Mosaic kernel may run (``weight_scale_kn`` stored) and every E8M0 byte is <=
        ``FOLD_MAX_SCALE_BYTE``; False otherwise (the unfolded decode, exact for every byte).

        >>> import jax.numpy as jnp
        >>> s, ok = QuarkW4A16MXFP4(), jnp.full((64, 2), 128, jnp.uint8)
        >>> p = {"weight": jnp.zeros((64, 32), jnp.uint8), "weight_scale": ok, "weight_scale_kn": ok.T}
        >>> s.for_loaded(p).mosaic_fold, s.for_loaded({**p, "weight_scale": ok + 1}).mosaic_fold
        (True, False)
        """
        fold = False
        scales = params.get("weight_scale")
        host = None if host_raw is None else host_raw.get("weight_scale")
        if isinstance(host, np.ndarray) and host.size:  # the checkpoint's bytes, still on the host: no device sync
            scales = host
        known = isinstance(scales, (np.ndarray, jax.Array)) and not isinstance(scales, jax.core.Tracer)
        if "weight_scale_kn" in params and known:
            # host bytes: numpy's max (a jnp.max would send them to the device, compile per shape and sync)
            top = np.max(scales) if isinstance(scales, np.ndarray) else jax.device_get(jnp.max(scales))
            fold = int(np.asarray(top)) <= FOLD_MAX_SCALE_BYTE
        return self if fold == self.mosaic_fold else self.replace(mosaic_fold=fold)

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
                                 out_dtype=x2.dtype, impl=self.impl, scales_kn=params.get("weight_scale_kn"),
                                 fold=self.mosaic_fold)
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
