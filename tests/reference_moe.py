"""Independent numpy (float64) mixture-of-experts references for the MoE tests: HF / vLLM routing, per-expert loops
(no sorting, no grouped GEMM), and vLLM's rules for FP8 expert scales (QuarkW8A8Fp8MoEMethod)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from reference_llama import vllm_fp8_linear


def route_numpy(logits, top_k: int, normalize: bool):
    """(weights [T, k], experts [T, k]): softmax, the k largest (ties: lower expert index first), renormalized."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    experts = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(p, experts, axis=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights, experts


def moe_numpy(h, router_w, top_k: int, normalize: bool, expert):
    """A MoE block on tokens h [..., H]: ``sum_j w_j * expert(e_j, x)`` token by token, ``expert(e, x [1, H]) ->
    [1, H]`` (silu(gate) * up then down, as the caller's quantization wants)."""
    shape = h.shape
    x = np.asarray(h, np.float64).reshape(-1, shape[-1])
    weights, experts = route_numpy(x @ np.asarray(router_w, np.float64).T, top_k, normalize)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(top_k):
            out[t] += weights[t, j] * expert(int(experts[t, j]), x[t:t + 1])[0]
    return out.reshape(shape)


def silu(g):
    return g / (1 + np.exp(-g))


def float_expert(w: dict, prefix: str):
    """expert(e, x) of a float checkpoint with ``<prefix>.{e}.{gate,up,down}_proj.weight`` tensors."""
    g = lambda n: np.asarray(w[n], np.float64)  # noqa: E731

    def expert(e, x):
        p = f"{prefix}.{e}."
        return (silu(x @ g(p + "gate_proj.weight").T) * (x @ g(p + "up_proj.weight").T)) @ g(p + "down_proj.weight").T
    return expert


def _requant_to(q_fp8, s, s_max):
    """vLLM's per_tensor_dequantize + static scaled_fp8_quant: f16(f32(q) * f16(s)), then fp8(dq * (1 / s_max))."""
    dq = (np.asarray(q_fp8).astype(np.float32) * np.float32(np.float16(s))).astype(np.float16).astype(np.float32)
    return np.clip(dq * (np.float32(1.0) / np.float32(s_max)), -448, 448).astype(ml_dtypes.float8_e4m3fn)


def vllm_fp8_static_expert(w: dict, prefix: str, num_experts: int):
    """expert(e, x) with vLLM's FP8 MoE rules for a per-tensor static checkpoint: gate and up requantized to their
    max scale per expert, the input scales the max over every expert (gate/up and down separately)."""
    def f(e, proj, key):
        return w[f"{prefix}.{e}.{proj}.{key}"]

    s13 = max(float(f(e, p, "input_scale")) for e in range(num_experts) for p in ("gate_proj", "up_proj"))
    s2 = max(float(f(e, "down_proj", "input_scale")) for e in range(num_experts))

    def expert(e, x):
        sg, su = float(f(e, "gate_proj", "weight_scale")), float(f(e, "up_proj", "weight_scale"))
        smax = np.float32(max(sg, su))
        wg = _requant_to(f(e, "gate_proj", "weight"), sg, smax)
        wu = _requant_to(f(e, "up_proj", "weight"), su, smax)
        gate = vllm_fp8_linear(x, wg, smax, s13).astype(np.float32).astype(np.float64)
        up = vllm_fp8_linear(x, wu, smax, s13).astype(np.float32).astype(np.float64)
        act = (silu(gate) * up).astype(np.float32)
        return vllm_fp8_linear(act, f(e, "down_proj", "weight"), f(e, "down_proj", "weight_scale"), s2)
    return expert


def quark_fp8_dynamic_qdq(x, axis):
    """Quark's dynamic FP8 quantize-dequantize: ``s = amax / 448`` (float32) over ``axis``, ``x / s`` rounded to
    e4m3fn (clamped), times s. Per token: axis -1; Quark's per-token spec on an expert's 2-D input: axis 0."""
    xf = np.asarray(x, np.float32)
    s = (np.abs(xf).max(axis=axis, keepdims=True) / np.float32(448.0)).astype(np.float32)
    s = np.where(s == 0, np.float32(1.0), s)
    q = np.clip(xf / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return (q * s).astype(np.float64)


def quark_ptpc_moe_reference(w: dict, cfg: dict, tokens, moe_layers, top_k, normalize, num_experts, llama_logits):
    """Quark's own forward of a ptpc_fp8 MoE export, one row at a time (numpy): per-token input quantization in
    attention ([1, T, K]) but, as HF's expert loop hands each expert a 2-D [tokens, K] input, one scale per input
    channel over the expert's tokens in the experts (Quark's per_channel ch_axis=1)."""
    def deq(n):
        return np.asarray(w[n + ".weight"]).astype(np.float64) * np.asarray(w[n + ".weight_scale"],
                                                                            np.float64).reshape(-1, 1)

    def linear(name, x):
        return (quark_fp8_dynamic_qdq(x, -1) @ deq(name).T).astype(np.float32).astype(np.float64)

    def mlp(i, h):
        if i not in moe_layers:
            return None
        p = f"model.layers.{i}.mlp"
        x = h.reshape(-1, h.shape[-1])
        logits = (x.astype(np.float32) @ np.asarray(w[p + ".gate.weight"], np.float32).T).astype(np.float32)
        rw, re = route_numpy(logits, top_k, normalize)
        out = np.zeros_like(x)
        for e in range(num_experts):
            tok, pos = np.nonzero(re == e)
            if len(tok) == 0:
                continue
            xq = quark_fp8_dynamic_qdq(x[tok], 0)
            g = (xq @ deq(f"{p}.experts.{e}.gate_proj").T).astype(np.float32)
            u = (xq @ deq(f"{p}.experts.{e}.up_proj").T).astype(np.float32)
            a = (silu(g.astype(np.float64)) * u).astype(np.float32)
            np.add.at(out, tok, (quark_fp8_dynamic_qdq(a, 0) @ deq(f"{p}.experts.{e}.down_proj").T)
                      * rw[tok, pos][:, None])
        return out.reshape(h.shape)

    return np.concatenate([llama_logits(w, cfg, tokens[r:r + 1], linear=linear, mlp=mlp)
                           for r in range(tokens.shape[0])])
