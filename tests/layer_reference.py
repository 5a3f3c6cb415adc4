"""Independent numpy references of a whole quantized linear layer the way vLLM computes it (SPEC section 3).

Built from the numpy quantizers of reference_numpy.py and the float64 GEMM references of kernel_reference.py; the
checkpoint tensors are read with the plain safetensors reader, shard by shard, without quark_jax's loader.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

import kernel_reference as kref
import reference_numpy as ref

F32 = np.float32


def requantize_max_scale(w_shards, scales):
    """vLLM's per-tensor FP8 re-quantization to the max shard scale: dq = f16(f32(q) * f32(f16(s_i))) (torch rounds
    the 0-d scale to the f16 result dtype, measured on the H100), q' = fp8(dq * (1/s_max))."""
    smax = F32(max(F32(s) for s in scales))
    out = []
    for w, s in zip(w_shards, scales):
        dq = (w.astype(F32) * np.float16(s).astype(F32)).astype(np.float16)
        out.append(np.clip(dq.astype(F32) * (F32(1) / smax), -448, 448).astype(ml_dtypes.float8_e4m3fn))
    return np.concatenate(out), smax


def reconstruct_azp(s, z):
    """vLLM's asymmetric INT8 rebuild in float32: s' = (s(127-z) - s(-128-z))/255, z' = trunc(-128 - rmin/s')."""
    s, z = F32(s), F32(z)
    rmax, rmin = s * (F32(127) - z), s * (F32(-128) - z)
    s2 = F32((rmax - rmin) / F32(255))
    return s2, int(np.trunc(F32(-128) - F32(rmin / s2)))


def shard_tensors(model, shards, name):
    return [model.get(f"{s}.{name}") for s in shards]


def vllm_layer(kind: str, model, shards, x, *, azp=None):
    """float64 output of the vLLM computation of a (possibly fused) layer on x [T, K] (any float dtype).

    kind: "fp8_static", "fp8_per_token", "int8_sym", "int8_asym", "mxfp4", "mxfp4_fp8", "mxfp4_w_only".
    azp: for "int8_asym", None (vLLM's reconstruction) or "checkpoint" (the stored (s, z)).
    """
    x32 = np.asarray(x).astype(F32)
    if kind.startswith("fp8"):
        ws = [a.astype(F32) for a in shard_tensors(model, shards, "weight_scale")]
        w_sh = shard_tensors(model, shards, "weight")
        if ws[0].ndim == 0:
            w, s_w = requantize_max_scale(w_sh, ws)
        else:
            w, s_w = np.concatenate(w_sh), np.concatenate(ws)
        if kind == "fp8_static":
            s_in = max(F32(a.astype(F32)) for a in shard_tensors(model, shards, "input_scale"))
            q, s_x = ref.fp8_static(x32, s_in)
        else:
            q, s_x = ref.fp8_dynamic_per_token(x32)
        return kref.scaled_mm_f64(q.astype(F32), w.astype(F32), s_x, s_w)
    if kind.startswith("int8"):
        w = np.concatenate(shard_tensors(model, shards, "weight"))
        s_w = np.concatenate([np.broadcast_to(a.astype(F32).reshape(-1), (len(wi),))  # per-tensor -> per row
                              for a, wi in zip(shard_tensors(model, shards, "weight_scale"),
                                               shard_tensors(model, shards, "weight"))])
        s_in = shard_tensors(model, shards, "input_scale")[0].astype(F32)
        if kind == "int8_sym":
            return kref.scaled_mm_f64(ref.int8_static_sym(x32, s_in), w, s_in, s_w)
        z_in = int(shard_tensors(model, shards, "input_zero_point")[0])
        s, z = (F32(s_in), z_in) if azp == "checkpoint" else reconstruct_azp(s_in, z_in)
        q = ref.int8_static_asym(x32, s, z)
        adj = z * w.astype(np.int64).sum(axis=1)
        return kref.scaled_mm_f64(q, w, s, s_w, azp_adj=adj)
    wp = np.concatenate(shard_tensors(model, shards, "weight"))
    wsc = np.concatenate(shard_tensors(model, shards, "weight_scale"))
    if kind == "mxfp4":
        return kref.mxfp4_mm_f64(x32, wp, wsc, quantize_input=True)
    if kind == "mxfp4_fp8":
        s = F32(shard_tensors(model, shards, "input_scale")[0])
        xd = ref.fp8_cast(x32 / s).astype(F32) * s
        return kref.mxfp4_mm_f64(xd, wp, wsc, quantize_input=False)
    if kind == "mxfp4_w_only":
        return kref.mxfp4_mm_f64(x32, wp, wsc, quantize_input=False)
    raise ValueError(kind)


def kind_of(quant_config: dict) -> str:
    """The reference kind of a fixture's global config."""
    g = quant_config["global_quant_config"]
    w, i = g["weight"], g["input_tensors"]
    if w["dtype"] == "fp8_e4m3":
        return "fp8_static" if not i["is_dynamic"] else "fp8_per_token"
    if w["dtype"] == "int8":
        return "int8_sym" if i["symmetric"] else "int8_asym"
    if i is None:
        return "mxfp4_w_only"
    return "mxfp4" if i["dtype"] == "fp4" else "mxfp4_fp8"
