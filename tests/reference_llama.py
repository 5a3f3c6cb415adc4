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


def llama_logits(w: dict, cfg: dict, ids: np.ndarray, inv_freq=None, kv_qdq=None) -> np.ndarray:
    """Logits [B, T, V] (float64) of the HF Llama/Qwen2 forward pass for ids [B, T]."""
    g = lambda n: np.asarray(w[n], np.float64)  # noqa: E731
    H, Hkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hidden = cfg["hidden_size"]
    D = cfg.get("head_dim") or hidden // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    if inv_freq is None:
        inv_freq = rope_inv_freq(D, cfg.get("rope_theta", 10000.0))
    B, T = ids.shape

    def rms(x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight

    def lin(x, name):
        y = x @ g(name + ".weight").T
        return y + g(name + ".bias") if name + ".bias" in w else y

    ang = np.arange(T)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang), np.sin(ang)  # [T, D/2]

    def rope(x):  # [B, T, heads, D]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)

    x = g("model.embed_tokens.weight")[ids]
    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, g(p + "input_layernorm.weight"))
        q = rope(lin(h, p + "self_attn.q_proj").reshape(B, T, H, D))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(B, T, Hkv, D))
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
        x = x + lin(out.reshape(B, T, H * D), p + "self_attn.o_proj")
        h = rms(x, g(p + "post_attention_layernorm.weight"))
        gate = lin(h, p + "mlp.gate_proj")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, g("model.norm.weight"))
    head = g("lm_head.weight") if "lm_head.weight" in w else g("model.embed_tokens.weight")
    return x @ head.T


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
