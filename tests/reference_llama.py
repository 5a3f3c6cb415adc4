"""An independent float64 numpy Llama forward pass (HF semantics), for testing quark_jax.models.

Written from the HF/Meta description of the architecture, not from quark_jax's code: weights are HF tensors by
name ([out, in]); RoPE pairs element i with i + D/2 ("rotate half"); query head h reads KV head h // (H / H_kv).
An optional ``kv_qdq(layer, "k"|"v", x)`` hook transforms the post-RoPE keys/values (FP8 KV cache simulation).
"""

from __future__ import annotations

import math

import numpy as np


def rope_inv_freq(head_dim, theta, rope_type="default", factor=1.0, low=1.0, high=4.0, orig_max=None):
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    if rope_type == "linear":
        return inv / factor
    if rope_type == "llama3":
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < orig_max / high:
                out.append(f)
            elif wavelen > orig_max / low:
                out.append(f / factor)
            else:
                smooth = (orig_max / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return np.array(out)
    return inv


def llama_logits(w: dict, cfg: dict, ids: np.ndarray, inv_freq=None, kv_qdq=None, linear=None,
                 rnd=None, mlp=None) -> np.ndarray:
    """Logits [B, T, V] (float64) of the HF Llama/Qwen2 forward pass for ids [B, T].

    ``linear(name, x) -> y`` replaces the float projections (e.g. a quantized layer; it rounds its own output);
    ``rnd(x)`` rounds to the model dtype where a bf16 model rounds (after each norm step, RoPE product and sum,
    attention output, residual add, ``silu(g) * u`` (once, as vLLM's fused kernel), and the logits); default:
    no rounding. ``mlp(i, h) -> y`` replaces layer i's MLP when it returns an array (a MoE layer); Qwen3's q/k
    norms apply when the weights have them.
    """
    g = lambda n: np.asarray(w[n], np.float64)  # noqa: E731
    rnd = rnd or (lambda a: a)
    H, Hkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hidden = cfg["hidden_size"]
    D = cfg.get("head_dim") or hidden // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    if inv_freq is None:
        inv_freq = rope_inv_freq(D, cfg.get("rope_theta", 10000.0))
    B, T = ids.shape

    def rms(x, weight):
        return rnd(rnd(x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * weight)

    def lin(x, name):
        if linear is not None:
            return linear(name, x)
        y = x @ g(name + ".weight").T
        return rnd(y + g(name + ".bias") if name + ".bias" in w else y)

    ang = np.arange(T)[:, None] * np.asarray(inv_freq, np.float32)[None, :].astype(np.float64)
    cos, sin = rnd(np.cos(ang)), rnd(np.sin(ang))  # [T, D/2]

    def rope(x):  # [B, T, heads, D]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return np.concatenate([rnd(rnd(x1 * c) - rnd(x2 * s)), rnd(rnd(x2 * c) + rnd(x1 * s))], axis=-1)

    x = g("model.embed_tokens.weight")[ids]
    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, g(p + "input_layernorm.weight"))
        q = lin(h, p + "self_attn.q_proj").reshape(B, T, H, D)
        k = lin(h, p + "self_attn.k_proj").reshape(B, T, Hkv, D)
        if p + "self_attn.q_norm.weight" in w:  # Qwen3: per-head RMSNorm before RoPE
            q, k = rms(q, g(p + "self_attn.q_norm.weight")), rms(k, g(p + "self_attn.k_norm.weight"))
        q, k = rope(q), rope(k)
        v = lin(h, p + "self_attn.v_proj").reshape(B, T, Hkv, D)
        if kv_qdq is not None:
            k, v = kv_qdq(i, "k", k), kv_qdq(i, "v", v)
        out = np.zeros((B, T, H, D))
        for head in range(H):
            kh = head // (H // Hkv)
            s = np.einsum("btd,bsd->bts", q[:, :, head], k[:, :, kh]) / math.sqrt(D)
            s = np.where(causal[None], s, -np.inf)
            pr = np.exp(s - s.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            out[:, :, head] = np.einsum("bts,bsd->btd", pr, v[:, :, kh])
        x = rnd(x + lin(rnd(out).reshape(B, T, H * D), p + "self_attn.o_proj"))
        h = rms(x, g(p + "post_attention_layernorm.weight"))
        sparse = None if mlp is None else mlp(i, h)
        if sparse is not None:
            x = rnd(x + sparse)
            continue
        gate = lin(h, p + "mlp.gate_proj")
        x = rnd(x + lin(rnd(gate / (1 + np.exp(-gate)) * lin(h, p + "mlp.up_proj")), p + "mlp.down_proj"))
    x = rms(x, g("model.norm.weight"))
    head = g("lm_head.weight") if "lm_head.weight" in w else g("model.embed_tokens.weight")
    return rnd(x @ head.T)


def round_bf16(a):
    """Round to bfloat16 (nearest even) and back to float64."""
    import ml_dtypes

    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def vllm_fp8_linear(x, weight_fp8, weight_scale, input_scale=None, rnd=None):
    """vLLM's W8A8 FP8 linear in numpy: x quantized in float32 (static: ``x * (1/s)``; dynamic per-token:
    ``s_t = max(amax_t / 448, 1/(448*512))``, ``x / s_t``), clamped, cast to e4m3fn (RNE); the fp8 products summed
    exactly (float64) and scaled by ``s_x * s_w``; the result rounded once by ``rnd``."""
    import ml_dtypes

    xf = np.asarray(x, np.float32)
    if input_scale is not None:
        s_x = np.float32(input_scale)
        v = xf * (np.float32(1.0) / s_x)
    else:
        amax = np.abs(xf).max(axis=-1, keepdims=True)
        s_x = np.maximum(amax / np.float32(448.0), np.float32(1.0 / (448.0 * 512.0))).astype(np.float32)
        v = xf / s_x
    q = np.clip(v, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    wq = np.asarray(weight_fp8).astype(np.float64)
    acc = q @ wq.T
    y = np.float64(s_x) * (np.asarray(weight_scale, np.float64).reshape(-1) * acc) if np.ndim(s_x) == 0 else \
        s_x.astype(np.float64) * (np.asarray(weight_scale, np.float64).reshape(-1) * acc)
    return (rnd or (lambda a: a))(y)


def random_llama_weights(cfg: dict, seed: int = 0, qkv_bias=False, tied=False) -> dict:
    """HF-named float32 weights for ``cfg`` (std 0.05 linears, norms around 1)."""
    rng = np.random.default_rng(seed)
    H, Hkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hid, inter, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    D = cfg.get("head_dim") or hid // H
    r = lambda *s, std=0.05: (rng.standard_normal(s) * std).astype(np.float32)  # noqa: E731
    w = {"model.embed_tokens.weight": r(V, hid, std=1.0), "model.norm.weight": 1 + r(hid, std=0.1)}
    if not tied:
        w["lm_head.weight"] = r(V, hid)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + r(hid, std=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + r(hid, std=0.1)
        for name, (o, n) in {"q_proj": (H * D, hid), "k_proj": (Hkv * D, hid), "v_proj": (Hkv * D, hid),
                             "o_proj": (hid, H * D)}.items():
            w[p + f"self_attn.{name}.weight"] = r(o, n, std=0.2)
            if qkv_bias and name != "o_proj":
                w[p + f"self_attn.{name}.bias"] = r(o, std=0.2)
        for name, (o, n) in {"gate_proj": (inter, hid), "up_proj": (inter, hid), "down_proj": (hid, inter)}.items():
            w[p + f"mlp.{name}.weight"] = r(o, n, std=0.2)
    return w


FUSED_GROUPS = {"q_proj": ("q_proj", "k_proj", "v_proj"), "k_proj": ("q_proj", "k_proj", "v_proj"),
                "v_proj": ("q_proj", "k_proj", "v_proj"), "gate_proj": ("gate_proj", "up_proj"),
                "up_proj": ("gate_proj", "up_proj"), "o_proj": ("o_proj",), "down_proj": ("down_proj",)}


def vllm_fused_fp8_linear(w: dict):
    """``linear(name, x)`` for :func:`llama_logits`: a per-tensor static FP8 layer as vLLM runs it fused (qkv,
    gate_up): each shard dequantized through float16 with its f16-rounded scale, requantized with the f32
    reciprocal of the group's max scale, the group's max input scale."""
    import ml_dtypes

    def linear(name, x):
        parent, leaf = name.rsplit(".", 1)
        s_max = max(np.float32(w[f"{parent}.{p}.weight_scale"]) for p in FUSED_GROUPS[leaf])
        dq = (w[name + ".weight"].astype(np.float32)
              * np.float16(w[name + ".weight_scale"]).astype(np.float32)).astype(np.float16)
        q = np.clip(dq.astype(np.float32) * (np.float32(1.0) / s_max), -448, 448).astype(ml_dtypes.float8_e4m3fn)
        s_in = max(np.float32(w[f"{parent}.{p}.input_scale"]) for p in FUSED_GROUPS[leaf])
        return vllm_fp8_linear(x, q, s_max, s_in)

    return linear


def fp8_kv_qdq(w: dict):
    """``kv_qdq`` for :func:`llama_logits`: vLLM's FP8 KV cache with the checkpoint's ``k_proj`` / ``v_proj``
    ``output_scale`` (``f32(fp8(clamp(x / s))) * s``)."""
    import ml_dtypes

    def kv_qdq(i, which, x):
        s = np.float32(w[f"model.layers.{i}.self_attn.{which}_proj.output_scale"])
        return np.clip(x.astype(np.float32) / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * s

    return kv_qdq


def greedy(logits_of, ids: np.ndarray, n: int) -> np.ndarray:
    """``n`` greedy tokens [B, n] from ``logits_of(ids [B, T]) -> [B, T, V]`` (full recomputation per step)."""
    ids = np.asarray(ids)
    out = []
    for _ in range(n):
        nxt = np.argmax(logits_of(ids)[:, -1], axis=-1)
        out.append(nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return np.stack(out, axis=1)
