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
