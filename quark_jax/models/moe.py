"""The sparse mixture-of-experts block of Mixtral and Qwen3-MoE (docs/SPEC.md section 13).

``MoEBlock(x)``: route, sort the (token, expert) pairs by expert, one grouped GEMM for gate and up of every chosen
expert, ``silu(g) * u`` (float32, rounded once), one grouped GEMM for down, unsort, and the routing-weighted sum
over the k choices (float32, rounded once). Routing as HF and vLLM do it: router logits ``x @ W_r.T`` (float32
accumulation, rounded to the model dtype), softmax in float32, top-k (ties: the lower expert index first, as
``jax.lax.top_k``), renormalized over the k chosen when ``norm_topk_prob`` (Mixtral always). The router (``gate``)
is never quantized. The expert weights are :class:`quark_jax.nn.QuarkExperts` ([E, N, K] per projection); which
expert weights a step reads is the grouped GEMM's business (:func:`quark_jax.kernels.grouped_mm`): nothing here
dequantizes or touches the experts no token chose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from quark_jax.models.config import ModelConfig
from quark_jax.nn import QuarkExperts
from quark_jax.quant import dot_precision, round_to

__all__ = ["Router", "Experts", "MoEBlock", "route", "moe_block_name", "small_sort", "SMALL_SORT_ROWS"]


def moe_block_name(names, cfg: ModelConfig) -> str:
    """The attribute (and checkpoint module) of a sparse layer's block: Mixtral's original ``"block_sparse_moe"``
    when the checkpoint (anything supporting ``in``: a reader, a set of tensor names) stores the router there,
    else ``"mlp"`` (HF transformers 5, Quark's exports, Qwen3-MoE).

    >>> cfg = ModelConfig.from_dict({"model_type": "mixtral", "vocab_size": 8, "hidden_size": 8,
    ...     "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1})
    >>> moe_block_name({"model.layers.0.block_sparse_moe.gate.weight"}, cfg), moe_block_name(set(), cfg)
    ('block_sparse_moe', 'mlp')
    """
    if not cfg.moe_layers:
        return "mlp"
    legacy = f"model.layers.{cfg.moe_layers[0]}.block_sparse_moe.gate.weight"
    return "block_sparse_moe" if legacy in names else "mlp"


class Router(nnx.Module):
    """The router ``gate``: ``weight`` [E, hidden] (HF ``mlp.gate.weight`` / ``block_sparse_moe.gate.weight``).

    >>> Router(4, 8, dtype=jnp.bfloat16)(jnp.ones((2, 8), jnp.bfloat16)).shape
    (2, 4)
    """

    def __init__(self, num_experts: int, hidden: int, *, dtype):
        self.weight = nnx.Param(jnp.zeros((num_experts, hidden), dtype))

    def __call__(self, x):
        """x [T, hidden] -> router logits [T, E] in x's dtype (float32 accumulation, one rounding)."""
        w = self.weight[...].astype(x.dtype)
        return round_to(jnp.dot(x, w.T, precision=dot_precision(x, w), preferred_element_type=jnp.float32), x.dtype)


def route(logits, top_k: int, *, normalize: bool, weights_dtype=jnp.float32):
    """Top-k routing: ``(weights [T, k], experts int32 [T, k])`` from router logits [T, E].

    Softmax over the experts in float32; the k largest probabilities (ties: lower expert index first); divided by
    their sum when ``normalize``; cast to ``weights_dtype`` (Qwen3-MoE: the model dtype, as HF).

    >>> w, e = route(jnp.array([[0.0, 1.0, 1.0, -1.0]]), 2, normalize=True)
    >>> e.tolist(), [round(v, 4) for v in w[0].tolist()]
    ([[1, 2]], [0.5, 0.5])
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights.astype(weights_dtype), experts.astype(jnp.int32)


class Experts(nnx.Module):
    """``gate_up_proj`` and ``down_proj``: :class:`~quark_jax.nn.QuarkExperts` at ``<moe>.experts.*`` (``path``),
    weights [E, 2 * moe_intermediate, hidden] and [E, hidden, moe_intermediate].

    >>> cfg = ModelConfig.from_dict({"model_type": "qwen3_moe", "vocab_size": 8, "hidden_size": 8,
    ...     "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "num_experts": 4,
    ...     "num_experts_per_tok": 2, "moe_intermediate_size": 4})
    >>> ex = Experts(cfg, "model.layers.0.mlp.experts", dtype=jnp.float32, expert_scales="vllm")
    >>> ex.gate_up_proj.weight[...].shape, ex.down_proj.weight[...].shape
    ((4, 8, 8), (4, 8, 4))
    """

    def __init__(self, cfg: ModelConfig, path: str, *, dtype, expert_scales: str):
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = QuarkExperts(e, h, (i, i), scheme=None, dtype=dtype, name=f"{path}.gate_up_proj",
                                         expert_scales=expert_scales)
        self.down_proj = QuarkExperts(e, i, (h,), scheme=None, dtype=dtype, name=f"{path}.down_proj",
                                      expert_scales=expert_scales)


class MoEBlock(nnx.Module):
    """A sparse MLP: ``gate`` (:class:`Router`) and ``experts`` (:class:`Experts`); ``x [B, T, hidden]`` -> same.

    ``path`` is the block's checkpoint module path (``model.layers.0.mlp`` or Mixtral's
    ``model.layers.0.block_sparse_moe``); the experts read ``<path>.experts.{i}.*``.

    >>> cfg = ModelConfig.from_dict({"model_type": "qwen3_moe", "vocab_size": 8, "hidden_size": 8,
    ...     "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "num_experts": 4,
    ...     "num_experts_per_tok": 2, "moe_intermediate_size": 4})
    >>> block = MoEBlock(cfg, "model.layers.0.mlp", dtype=jnp.float32)
    >>> _ = block.experts.gate_up_proj.mark_loaded(), block.experts.down_proj.mark_loaded()  # (zero weights)
    >>> block(jnp.ones((1, 2, 8))).shape
    (1, 2, 8)
    """

    def __init__(self, cfg: ModelConfig, path: str, *, dtype, expert_scales: str = "vllm"):
        self.num_experts, self.top_k = cfg.num_experts, cfg.num_experts_per_tok
        self.normalize = cfg.norm_topk_prob
        self.round_weights = cfg.round_routing_weights
        self.intermediate_size = cfg.moe_intermediate_size
        self.gate = Router(cfg.num_experts, cfg.hidden_size, dtype=dtype)
        self.experts = Experts(cfg, f"{path}.experts", dtype=dtype, expert_scales=expert_scales)

    def __call__(self, x):
        b, t, h = x.shape
        tokens = x.reshape(b * t, h)
        weights, chosen = route(self.gate(tokens), self.top_k, normalize=self.normalize,
                                weights_dtype=x.dtype if self.round_weights else jnp.float32)
        y = moe_experts(tokens, weights, chosen, self.experts.gate_up_proj, self.experts.down_proj,
                        self.num_experts, self.intermediate_size)
        return y.reshape(b, t, h)


SMALL_SORT_ROWS = 64
"""Routed rows (tokens x top-k) up to which :func:`moe_experts` sorts by :func:`small_sort` (compares and masked
sums: XLA fuses them into a couple of small reductions) instead of ``argsort`` + ``bincount`` + a scatter (a sort
kernel and scatter kernels per MoE layer at decode). Both give the same permutation."""


def small_sort(flat, num_experts: int):
    """Stable sort of a short vector of expert ids by compares: ``(order, rank, group_sizes)`` with ``order`` =
    ``argsort(flat, stable=True)``, ``rank`` its inverse (row r's sorted position) and ``group_sizes`` =
    ``bincount(flat, length=num_experts)``, all int32. Quadratic in ``len(flat)``: for decode-sized inputs.

    >>> order, rank, sizes = small_sort(jnp.array([2, 0, 2, 1]), 3)
    >>> order.tolist(), rank.tolist(), sizes.tolist()
    ([1, 3, 0, 2], [2, 0, 3, 1], [1, 1, 2])
    """
    flat = flat.astype(jnp.int32)
    i = jnp.arange(flat.shape[0], dtype=jnp.int32)
    before = (flat[None, :] < flat[:, None]) | ((flat[None, :] == flat[:, None]) & (i[None, :] < i[:, None]))
    rank = jnp.sum(before, axis=1, dtype=jnp.int32)  # rows sorted before row r
    order = jnp.sum(jnp.where(rank[None, :] == i[:, None], i[None, :], 0), axis=1, dtype=jnp.int32)
    sizes = jnp.sum(flat[None, :] == jnp.arange(num_experts, dtype=jnp.int32)[:, None], axis=1, dtype=jnp.int32)
    return order, rank, sizes


def moe_experts(tokens, weights, chosen, gate_up, down, num_experts: int, intermediate: int):
    """The expert part of a MoE block: tokens [T, H], routing ``weights`` [T, k] and ``chosen`` experts [T, k] ->
    [T, H] in tokens' dtype: ``sum_j weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))`` with ``e =
    chosen[t, j]``, over rows sorted by expert (one grouped GEMM per projection). ``gate_up(rows [R, H],
    group_sizes [E], row_expert [R]) -> [R, 2 * intermediate]`` and ``down(rows, group_sizes, row_expert) -> [R, H]``
    take rows sorted by expert.

    >>> gate_up = lambda x, sizes, e: jnp.concatenate([x, x], axis=1)  # gate = up = x
    >>> down = lambda a, sizes, e: a * (e[:, None] + 1.0)  # expert e multiplies by e + 1
    >>> y = moe_experts(jnp.ones((1, 2)), jnp.array([[0.5, 0.5]]), jnp.array([[2, 0]]), gate_up, down, 3, 2)
    >>> [round(v, 4) for v in y[0].tolist()]  # silu(1) * 1 * (0.5 * 3 + 0.5 * 1)
    [1.4621, 1.4621]
    """
    n_tok, k = chosen.shape
    flat = chosen.reshape(-1)  # [T * k]: row r is token r // k, choice r % k
    if flat.shape[0] <= SMALL_SORT_ROWS:  # decode: compares and masked sums, no sort / scatter kernels
        order, rank, group_sizes = small_sort(flat, num_experts)
    else:
        order = jnp.argsort(flat, stable=True)  # rows sorted by expert (stable: token order within an expert)
        group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
        rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))  # inverse
    row_expert = flat[order]
    xs = jnp.take(tokens, order // k, axis=0)  # [T * k, H]
    gu = gate_up(xs, group_sizes, row_expert)
    g, u = gu[:, :intermediate], gu[:, intermediate:]
    act = round_to(jax.nn.silu(g.astype(jnp.float32)) * u.astype(jnp.float32), tokens.dtype)
    ys = down(act, group_sizes, row_expert)  # [T * k, H], sorted
    y = jnp.take(ys, rank, axis=0).reshape(n_tok, k, -1)  # back to (token, choice): a gather, not a scatter of rows
    out = jnp.sum(y.astype(jnp.float32) * weights.astype(jnp.float32)[:, :, None], axis=1)
    return round_to(out, tokens.dtype)
