"""A Flax NNX decoder for the Llama family (Llama, Qwen2, Mistral, Qwen3; the MoE Mixtral and Qwen3-MoE), with HF
module paths.

Every projection is an ``nnx.Linear`` (:class:`DenseLinear`: decode-sized calls on a GPU may run
``kernels.dense_mm``, see ``DENSE_DECODE_GEMM``) at the path Hugging Face uses (``model.layers.0.self_attn.q_proj``,
``model.layers.0.mlp.gate_proj``, ``lm_head``, ...), so :func:`quark_jax.quantize_model` can swap them for Quark
layers and :func:`quark_jax.load_weights` can fill the model from a checkpoint by name. ``nnx.Linear`` kernels are
``[in, out]`` (the transpose of the checkpoint's ``[out, in]``).

Numerics follow vLLM in the model dtype: RMSNorm statistics in float32, cast back to the model dtype before the
weight product; RoPE angles in float32, cos/sin and their products in the model dtype; attention scores, softmax
and the probability-value product in float32 (as a fused attention kernel does), rounded once; ``silu(g) * u`` in
float32, rounded once (vLLM's ``SiluAndMul``); residual adds in the model dtype. Qwen3's q/k RMSNorm runs per head
before RoPE. Sparse layers (``cfg.moe_layers``) have a :class:`~quark_jax.models.moe.MoEBlock` instead of the MLP.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from quark_jax.kernels import (SplitSums, add_rmsnorm, decode_attention, decode_attention_impl, dense_mm,
                               dense_mm_impl, fused_prefill_impl, in_query_blocks, prefill_attention,
                               fp8_gate_up_silu, rope_cache_supported, rope_cache_update)
from quark_jax.models.config import ModelConfig
from quark_jax.models.inputs import _Tracer, check_token_ids
from quark_jax.models.kv_cache import FP8_KV_DTYPE, KVCache, dequantize_kv, quantize_kv
from quark_jax.models.moe import MoEBlock
from quark_jax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin
from quark_jax.nn import InputCodes, FP8KVCacheScales, KVScale, QuarkLinear, TransformedInput
from quark_jax.schemes import QuarkW8A8Fp8
from quark_jax.quant import dot_precision, round_to
from quark_jax.runtime_checks import check_finite, check_token_ids_in_range
from quark_jax.runtime_checks import enabled as _checks_enabled

__all__ = ["LlamaForCausalLM", "LlamaModel", "DecoderLayer", "Attention", "MLP", "RMSNorm", "KVScale",
           "check_token_ids"]

_NEG_INF = float(np.finfo(np.float32).min)


DECODE_ADD_NORM: str | None = None
"""The decode step's (T == 1) residual adds and RMSNorms: None (off, the default: as written; XLA runs each norm
as three kernels: the add, the sum of squares, the normalize), "pallas" (``kernels.add_rmsnorm``: each residual add
and the RMSNorm after it, plus the static FP8 / INT8 quantization of the GEMM that follows where its scheme has one
(:meth:`quark_jax.nn.QuarkLinear.static_input_quant`), in one kernel; on CPU in interpret mode) or "xla" (the same
restructure through the XLA reference). Read when the decode step is traced (set it before the first
``generate``, or call ``jax.clear_caches()`` after changing it). Numerics: SPEC 11.6 (the sum of
squares in another float32 order with "pallas" on a GPU; else bit for bit). Off until measured on the GPU
(benchmarks/NOTES.md, "RMSNorm fused with the residual add")."""


DECODE_PROLOGUE_FUSION: bool = False
"""The decode step's (T == 1) RMSNorms before the fused ``qkv_proj`` / ``gate_up_proj`` and its ``silu(gate) *
up`` before ``down_proj``, formed inside those layers' GEMMs (the Pallas-Triton FP8 GEMM's prologue: it reads the
un-normalized residual h, the rows' inverse RMS and the norm weight, or the gate_up output, then quantizes with
the static input scale) where the layer takes them (:meth:`quark_jax.nn.QuarkLinear.takes_transform`: static
per-tensor FP8 with vLLM's fused layout; every other layer gets the XLA output as before). XLA still computes
each norm's ``rsqrt(mean(h**2) + eps)`` (its sum-of-squares reduction). Saves 3 small XLA kernels per layer. Read
when the decode step is traced (like ``DECODE_ADD_NORM``, which takes precedence when set). Numerics: SPEC 11.7
(the norm bit for bit; the SiLU within an ulp of float32 on a GPU). Off until measured on the GPU
(benchmarks/NOTES.md, "Session 8, helper prologue")."""

DECODE_ROPE_CACHE: str | None = None
"""The decode step's (T == 1) RoPE of q and k and the k/v cache write after the fused ``qkv_proj``: None (off,
the default: as written; XLA runs three kernels per layer: q's RoPE, k's RoPE + the k-cache update, the v-cache
update, each re-running a split-K qkv GEMM's epilogue), "auto" ("pallas" on a CUDA GPU, else off), "pallas"
(``kernels.attention.rope_cache_update``: one Pallas-Triton kernel taking the qkv GEMM's unfinished split-K sums,
writing the caches in place; on the CPU in interpret mode) or "xla" (the same restructure through the XLA
reference). Applies to fused-projection layers
without q/k norms and with a cache in the model dtype (not an FP8 cache); others run as written. Read when the
decode step is traced (set it before the first ``generate``, or call ``jax.clear_caches()``). Numerics: bit for
bit the path as written (SPEC 11.9). Off until measured on the GPU (benchmarks/NOTES.md, "Session 9, helper
fp8step")."""


def _rope_cache_impl() -> str | None:
    """``DECODE_ROPE_CACHE`` resolved: "auto" is "pallas" where Pallas kernels compile (a CUDA GPU), else None."""
    if DECODE_ROPE_CACHE == "auto":
        return "pallas" if jax.default_backend() == "gpu" else None
    if DECODE_ROPE_CACHE not in (None, "pallas", "xla"):
        raise ValueError(f"llama.DECODE_ROPE_CACHE: expected None, 'auto', 'pallas' or 'xla', got "
                         f"{DECODE_ROPE_CACHE!r}")
    return DECODE_ROPE_CACHE


DECODE_MLP_EPILOGUE: bool = False
"""The decode step's (T == 1) ``silu(gate) * up`` and down_proj's static FP8 input quantizer in the epilogue of
the fused ``gate_up_proj`` GEMM (``kernels.fp8_gate_up_silu``: one Pallas-Triton kernel where the FP8 GEMM runs
on Pallas, each program computing matching gate and up column blocks), down_proj then taking the codes
(``nn.InputCodes``). Applies to static per-tensor e4m3fn ``QuarkW8A8Fp8`` gate_up / down layers (stored input
scale reciprocals, no bias); others run as written. Saves the SiLU-mul + quantize kernel per layer. Read when
traced. Numerics: the path as written bit for bit in interpret mode; compiled, the SiLU is the kernel's
``g / (1 + exp(-g))`` (SPEC 11.7's bound: a bf16 value one ulp away now and then, so an FP8 code one step away).
Off until measured on the GPU (benchmarks/NOTES.md, "Session 9, helper fp8step")."""

DECODE_PROLOGUE_MAX_ROWS: int = 16
"""``DECODE_PROLOGUE_FUSION`` applies to decode steps of at most this many rows (the batch): the kernel forms
only the real row at M = 1, all 16 rows of its tile above (the form of the in-kernel quantize that measured slower,
benchmarks/NOTES.md "Decode fusion and compile time"); 1 restricts it to batch 1. Read when traced."""


class RMSNorm(nnx.Module):
    """``weight * dtype(x * rsqrt(mean(x**2) + eps))`` with the statistics in float32 (HF ``LlamaRMSNorm``)."""

    def __init__(self, dim: int, *, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def inverse_rms(self, x):
        """``rsqrt(mean(x**2) + eps)`` over the last axis, float32 [..., 1] (the statistics of ``__call__``)."""
        xf = x.astype(jnp.float32)
        return jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = round_to(xf * self.inverse_rms(x), x.dtype)
        return round_to(self.weight[...].astype(jnp.float32) * y.astype(jnp.float32), x.dtype)

    def fused_input(self, x, consumer):
        """``self(x)`` for ``consumer`` (the layer that reads it): a :class:`~quark_jax.nn.TransformedInput`
        (x, its inverse RMS, the weight) where the consumer forms the norm in its GEMM
        (``DECODE_PROLOGUE_FUSION``), else the norm's output."""
        if consumer is not None and hasattr(consumer, "takes_transform") and consumer.takes_transform():
            return TransformedInput("rmsnorm", x, self.inverse_rms(x), self.weight[...])
        return self(x)


DENSE_DECODE_GEMM: str = "layers"
"""The float model's projections at decode sizes (M = tokens <= 16, ``kernels.dense_mm_impl``): "auto" (a
bf16 / f16 model on one CUDA sm90 GPU runs ``kernels.dense_mm``'s Pallas kernel on the ``nnx.Linear`` kernel as
stored, the LM head included), "layers" (the default: the same, but the LM head stays on XLA) or "xla"
(``nnx.Linear`` as is, everywhere). Measured on the H200 (session 8, M = 1, GPU kernel time): the kernel 16.2 /
10.9 / 54.5 / 29.4 us vs XLA 18.8 / 12.9 / 58.9 / 32.7 at 4096x6144 / 4096x4096 / 4096x28672 / 14336x4096, but
253.5 vs 235.4 us on the 4096x128256 LM head; the bf16 8B decodes at 4.38 ms/token with "layers" (4.70 with XLA). Read when a function is traced (the layers' shared jit keeps what it traced: set it before the first
call, or call ``jax.clear_caches()`` after changing it). Off a GPU (CPU), under a multi-device mesh, for f32 models and larger
M every setting is ``nnx.Linear``'s own computation, bit for bit. Numerics: the same f32 accumulation and one
rounding to the model dtype as ``_proj`` applies, in another f32 summation order."""
DENSE_DECODE_GEMMS = ("auto", "layers", "xla")


class DenseLinear(nnx.Linear):
    """``nnx.Linear`` (the same ``kernel`` [in, out] and ``bias`` params: checkpoints load unchanged) whose
    decode-sized calls run ``kernels.dense_mm`` (see ``DENSE_DECODE_GEMM``) and return x's dtype (the value
    ``_proj`` rounds to); every other call is ``nnx.Linear.__call__``. ``head``: the LM head (off with "layers").

    >>> layer = DenseLinear(4, 2, use_bias=False, rngs=nnx.Rngs(0))
    >>> isinstance(layer, nnx.Linear), layer(jnp.ones((1, 4))).shape   # on the CPU: nnx.Linear's own result
    (True, (1, 2))
    """

    def __init__(self, *args, head: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.head = head

    def uses_kernel(self, inputs) -> bool:
        """Whether ``self(inputs)`` runs the Pallas decode GEMM (``DENSE_DECODE_GEMM``, device, shape, dtype)."""
        if DENSE_DECODE_GEMM not in DENSE_DECODE_GEMMS:
            raise ValueError(f"DENSE_DECODE_GEMM: expected one of {DENSE_DECODE_GEMMS}, got {DENSE_DECODE_GEMM!r}")
        if DENSE_DECODE_GEMM == "xla" or (self.head and DENSE_DECODE_GEMM == "layers"):
            return False
        m = int(np.prod(inputs.shape[:-1]))
        dtype = jnp.dtype(self.kernel.get_value().dtype)
        return (m > 0 and inputs.dtype == dtype and self.dtype in (None, dtype)
                and jax.device_count() == 1  # a pallas_call is not partitioned: no tensor-parallel mesh
                and dense_mm_impl(m, self.in_features, self.out_features, dtype) == "pallas")

    def __call__(self, inputs, out_sharding=None):
        if out_sharding is not None or not self.uses_kernel(inputs):
            return super().__call__(inputs, out_sharding=out_sharding)
        bias = self.bias[...] if self.bias is not None else None
        y = dense_mm(inputs.reshape(-1, inputs.shape[-1]), self.kernel[...], bias, impl="pallas")
        return y.reshape(*inputs.shape[:-1], y.shape[-1])


def _linear(din, dout, bias, dtype, rngs, *, head: bool = False):
    # float32 accumulation and bias add, rounded once by _proj (as cuBLAS does for a bf16 GEMM; XLA's CPU bf16 dot
    # without it rounds partial sums)
    # (float32 models: full-f32 products, not XLA-on-GPU's default TF32; see quant.rounding.dot_precision)
    return DenseLinear(din, dout, use_bias=bias, dtype=dtype, param_dtype=dtype, precision=dot_precision(dtype),
                       preferred_element_type=jnp.float32, rngs=rngs, head=head)


def _proj(layer, x):
    """``layer(x)`` rounded to x's dtype (a float ``nnx.Linear`` accumulates in float32; a Quark layer returns x's
    dtype, rounded again here so that XLA's excess precision cannot pass its unrounded value on)."""
    return round_to(layer(x), x.dtype)


def _proj_unfinished(layer, x):
    """:func:`_proj`, except that a Quark layer whose split-K GEMM a consumer kernel can finish
    (``QuarkLinear.unfinished``) returns its ``kernels.tiling.SplitSums`` (their ``finish()`` is x's dtype: the
    rounding of :func:`_proj` is the cast)."""
    y = layer.unfinished(x) if hasattr(layer, "unfinished") else layer(x)
    return y if isinstance(y, SplitSums) else round_to(y, x.dtype)


def _proj_unfinished_codes(layer, x):
    """:func:`_proj_unfinished`, also for x given as :class:`~quark_jax.nn.InputCodes` (``DECODE_ADD_NORM``'s
    codes): the scheme's ``apply_codes(..., finish=False)``, the same GEMM on the same codes."""
    if (isinstance(x, InputCodes) and getattr(layer, "weights_loaded", False)
            and getattr(layer, "shard_layout", None) is None and layer.static_input_quant() is not None):
        bias = layer.bias[...] if layer.use_bias else None
        out_dtype = layer.dtype if layer.dtype is not None else jnp.dtype(x.dtype)
        y = layer.scheme.apply_codes(layer.params(), x.codes, bias, out_dtype=out_dtype, finish=False)
        return y if isinstance(y, SplitSums) else round_to(y, x.dtype)
    return _proj_unfinished(layer, x)


def _gate_up_silu_codes(mlp, x):
    """``DECODE_MLP_EPILOGUE``: down_proj's input codes (``InputCodes`` [B, 1, I]) from one
    ``kernels.fp8_gate_up_silu`` call, or None where it does not apply (not a decode step, not a fused static-FP8
    MLP, a bias)."""
    if not getattr(mlp, "fused", False) or len(x.shape) != 3 or x.shape[1] != 1:
        return None
    gu, down = mlp.gate_up_proj, mlp.down_proj
    if not (isinstance(gu, QuarkLinear) and isinstance(down, QuarkLinear) and isinstance(gu.scheme, QuarkW8A8Fp8)
            and isinstance(down.scheme, QuarkW8A8Fp8)) or gu.use_bias:
        return None
    qa, qd = gu.static_input_quant(), down.static_input_quant()
    if qa is None or qd is None or qa.codes != "fp8" or qd.codes != "fp8":
        return None
    p = gu.params()
    ws = p["weight_scale"]
    ws = ws.reshape(()) if ws.size == 1 else ws
    b, t, _ = x.shape
    dtype = gu.dtype if gu.dtype is not None else jnp.dtype(x.dtype)
    x2 = x.codes.reshape(b * t, -1) if isinstance(x, InputCodes) else round_to(x, dtype).reshape(b * t, -1)
    codes = fp8_gate_up_silu(x2, p["weight"], jnp.reshape(qa.scale, ()), ws, jnp.reshape(qd.scale, ()),
                             out_dtype=dtype, impl=gu.scheme.impl,
                             x_scale_reciprocal=jnp.reshape(qa.scale_reciprocal, ()),
                             out_scale_reciprocal=jnp.reshape(qd.scale_reciprocal, ()))
    return InputCodes(codes.reshape(b, t, -1), dtype)


class MLP(nnx.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``; ``silu(g) * u`` in float32, rounded once to the model
    dtype (vLLM's fused ``SiluAndMul``; HF rounds after the activation too)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, fused: bool = False):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.fused, self.intermediate_size = fused, i
        if fused:  # vLLM's layout: one GEMM for gate and up
            self.gate_up_proj = _linear(h, 2 * i, cfg.mlp_bias, dtype, rngs)
        else:
            self.gate_proj = _linear(h, i, cfg.mlp_bias, dtype, rngs)
            self.up_proj = _linear(h, i, cfg.mlp_bias, dtype, rngs)
        self.down_proj = _linear(i, h, cfg.mlp_bias, dtype, rngs)

    def __call__(self, x, *, finish: bool = True, prologue: bool = False):
        """``finish=False``: the result may be down_proj's unfinished split-K sums (see ``Attention``).
        ``prologue``: ``silu(g) * u`` inside down_proj's GEMM where it takes it (``DECODE_PROLOGUE_FUSION``)."""
        codes = _gate_up_silu_codes(self, x) if DECODE_MLP_EPILOGUE else None
        if codes is not None:
            return _proj(self.down_proj, codes) if finish else _proj_unfinished_codes(self.down_proj, codes)
        if self.fused and prologue and hasattr(self.down_proj, "takes_transform") and self.down_proj.takes_transform():
            return _proj(self.down_proj, TransformedInput("silu_mul", _proj(self.gate_up_proj, x)))
        if self.fused:
            gu = _proj(self.gate_up_proj, x)
            g, u = gu[..., : self.intermediate_size], gu[..., self.intermediate_size:]
        else:
            g, u = _proj(self.gate_proj, x), _proj(self.up_proj, x)
        h = jax.nn.silu(g.astype(jnp.float32)) * u.astype(jnp.float32)
        h = round_to(h, x.dtype)
        return _proj(self.down_proj, h) if finish else _proj_unfinished(self.down_proj, h)


ATTENTION_SCORE_BYTES = 1 << 28
"""Budget for one block of float32 attention scores [B, H, T_block, S]: longer prompts run in query blocks."""


def _attend_block(q, k, v, q_slots, first_slot):
    b, t, h, d = q.shape
    hkv = k.shape[2]
    qg = q.astype(jnp.float32).reshape(b, t, hkv, h // hkv, d)  # exact: q/k/v hold rounded values (round_to)
    if t == 1:  # decode: products and sums in float32 as elementwise reductions, which XLA fuses with the cache
        # read (two small fused kernels per layer instead of two batched GEMM launches)
        kf = k.astype(jnp.float32)
        scores = jnp.sum(qg[:, 0, :, :, None, :] * kf.transpose(0, 2, 1, 3)[:, :, None], axis=-1)[:, :, :, None]
    elif q.dtype == k.dtype and q.dtype in (jnp.bfloat16, jnp.float16):
        # q and k in the model dtype: their products are exact in float32, so a low-precision dot accumulating in
        # float32 (tensor cores) gives the float32 scores up to summation order
        scores = jnp.einsum("btkgd,bskd->bkgts", q.reshape(b, t, hkv, h // hkv, d), k,
                            preferred_element_type=jnp.float32)
    else:
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(jnp.float32), precision=lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    slots = jnp.arange(k.shape[1], dtype=jnp.int32)
    mask = (slots[None, None, :] <= q_slots[None, :, None]) & (slots[None, None, :] >= first_slot[:, None, None])
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    if t == 1:
        vf = v.astype(jnp.float32)
        out = jnp.sum(probs[:, :, :, 0, :, None] * vf.transpose(0, 2, 1, 3)[:, :, None], axis=-2)[:, None]
    else:
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32), precision=lax.Precision.HIGHEST,
                         preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d)


def attend(q, k, v, q_slots, first_slot=None):
    """Grouped-query causal attention in float32. q [B, T, H, D]; k, v [B, S, H_kv, D] (cache slots 0..S-1);
    ``q_slots`` [T] int32: the slot of each query; ``first_slot`` [B] int32 (default 0): the first valid slot of
    each row (left padding). Query t of row b attends to the slots ``first_slot[b] <= s <= q_slots[t]``.

    Query head h reads KV head ``h // (H / H_kv)``. Returns [B, T, H, D] float32. The float32 scores are computed
    in query blocks of at most :data:`ATTENTION_SCORE_BYTES` (equal to one block up to float32 summation order),
    so a long prompt never holds all of [B, H, T, S].

    >>> q = jnp.ones((1, 2, 2, 4)); k = v = jnp.arange(8.0).reshape(1, 2, 1, 4)
    >>> [round(x, 4) for x in attend(q, k, v, jnp.array([0, 1]))[0, :, 0, 0].tolist()]  # query 1: mostly slot 1
    [0.0, 3.9987]
    """
    b, t, h, d = q.shape
    s = k.shape[1]
    first_slot = jnp.zeros((b,), jnp.int32) if first_slot is None else jnp.asarray(first_slot, jnp.int32)
    q_slots = jnp.asarray(q_slots, jnp.int32)
    block = max(1, ATTENTION_SCORE_BYTES // max(1, 4 * b * h * s))
    # blocks of a power of two: they divide the (power-of-two) prefill buckets
    return in_query_blocks(lambda qb, sb: _attend_block(qb, k, v, sb, first_slot), q, q_slots, block=block,
                           pad_slot=s - 1)


class Attention(FP8KVCacheScales, nnx.Module):
    """Self-attention with RoPE, grouped-query heads and an optional FP8 KV cache (``kv_fp8``; the scales come
    through nn's :class:`~quark_jax.nn.FP8KVCacheScales` interface)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, kv_fp8: bool = False, fused: bool = False):
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.fused = fused
        if fused:  # vLLM's layout: one GEMM for q, k and v
            self.qkv_proj = _linear(h, (self.num_heads + 2 * self.num_kv_heads) * d, cfg.qkv_bias, dtype, rngs)
        else:
            self.q_proj = _linear(h, self.num_heads * d, cfg.qkv_bias, dtype, rngs)
            self.k_proj = _linear(h, self.num_kv_heads * d, cfg.qkv_bias, dtype, rngs)
            self.v_proj = _linear(h, self.num_kv_heads * d, cfg.qkv_bias, dtype, rngs)
        self.o_proj = _linear(self.num_heads * d, h, cfg.o_bias, dtype, rngs)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's head_dim, before RoPE
            self.q_norm = RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype)
            self.k_norm = RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype)
        self.kv_fp8 = False
        # prefill attention (T > 1 tokens from slot 0): "auto" = cuDNN's fused flash attention on a CUDA GPU for
        # bf16/f16 q/k/v (probabilities rounded to bf16 before the PV product, as vLLM's FlashAttention; SPEC
        # 11.2), else the float32 path of ``attend``; "cudnn" / "xla" (the fused numerics in XLA) force one;
        # "float32" always takes ``attend``
        self.attention_impl = "auto"
        # decode (one new token attending to the cache): "auto" = the flash-decoding Pallas kernel for caches of
        # >= kernels.attention.DECODE_PALLAS_MIN_SLOTS slots on a CUDA GPU (an online softmax in float32, SPEC
        # 11.2; 1.5-1.9x XLA at 4096 slots on the H200), else "xla", the float32 elementwise path of ``attend``;
        # "xla" / "pallas" force one
        self.decode_attention_impl = "auto"
        if kv_fp8:
            self.enable_fp8_kv_cache()

    def _store(self, x, which):
        """The value a cache slot holds: FP8 codes for an FP8 cache, else x itself."""
        return quantize_kv(x, getattr(self, which)[...]) if self.kv_fp8 else x

    def _load(self, x, which):
        return dequantize_kv(x, getattr(self, which)[...]) if self.kv_fp8 else x

    def __call__(self, x, cos, sin, kv=None, start=0, first_slot=None, *, finish: bool = True):
        """x [B, T, hidden]; cos/sin [B, T, D] (the tokens' RoPE angles).

        Without ``kv``: causal attention over the T tokens (k/v pass through the FP8 cache's quant-dequant when
        ``kv_fp8``, so the result equals a cached run). With ``kv = (k_cache, v_cache)`` [B, S, H_kv, D]: the T
        new k/v are written at slots ``start .. start+T-1`` (``start`` may be traced) and the query at slot p
        attends to the slots ``first_slot[b] .. p`` (``first_slot`` [B], default 0: rows left-padded by that
        many slots). Returns (y [B, T, hidden], new kv or None). ``finish=False``: y may be o_proj's unfinished
        split-K sums (:func:`_proj_unfinished`; the fused add + norm of ``DECODE_ADD_NORM`` finishes them).
        """
        b, t, _ = x.shape
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        rope_cache = _rope_cache_impl()
        if (rope_cache is not None and t == 1 and kv is not None and self.fused and not self.qk_norm
                and not self.kv_fp8 and kv[0].dtype == x.dtype):
            return self._decode_rope_cache(x, cos, sin, kv, start, first_slot, finish, rope_cache)
        if self.fused:
            qkv = _proj(self.qkv_proj, x)
            q, k, v = qkv[..., :nq], qkv[..., nq:nq + nkv], qkv[..., nq + nkv:]
        else:
            q, k, v = _proj(self.q_proj, x), _proj(self.k_proj, x), _proj(self.v_proj, x)
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        ks, vs = self._store(k, "k_scale"), self._store(v, "v_scale")
        q_slots = start + jnp.arange(t, dtype=jnp.int32)
        if kv is None:
            k_all, v_all = self._load(ks, "k_scale"), self._load(vs, "v_scale")
            new_kv = None
        else:
            kc, vc = kv
            idx = (0, start, 0, 0)
            kc = jax.lax.dynamic_update_slice(kc, ks.astype(kc.dtype), idx)
            vc = jax.lax.dynamic_update_slice(vc, vs.astype(vc.dtype), idx)
            k_all, v_all = self._load(kc, "k_scale"), self._load(vc, "v_scale")
            new_kv = (kc, vc)
        fused = self._fused_prefill(q, ks, t, start)
        decode_impl = getattr(self, "decode_attention_impl", "auto")
        if t == 1 and kv is not None and decode_attention_impl(decode_impl, kc.shape[1], self.head_dim,
                                                               kc.dtype) == "pallas":
            scales = (self.k_scale[...], self.v_scale[...]) if self.kv_fp8 else None
            out = decode_attention(q[:, 0], kc, vc, pos=start, first_slot=first_slot, scales=scales, impl=decode_impl,
                                   out_dtype=x.dtype)[:, None]  # rounded once, as round_to
        elif fused is not None:  # the T new tokens attend only to each other: their own k/v, not the cache
            out = prefill_attention(q, self._load(ks, "k_scale"), self._load(vs, "v_scale"), first_slot=first_slot,
                                    impl=fused)
        else:
            out = round_to(attend(q, k_all, v_all, q_slots, first_slot), x.dtype)
        out = out.reshape(b, t, self.num_heads * self.head_dim)
        return (_proj(self.o_proj, out) if finish else _proj_unfinished(self.o_proj, out)), new_kv


    def _decode_rope_cache(self, x, cos, sin, kv, start, first_slot, finish, impl):
        """The decode step (T == 1) with ``DECODE_ROPE_CACHE``: the qkv GEMM's output (or its split-K sums), the
        RoPE and the cache write in ``kernels.attention.rope_cache_update``; the rest as in ``__call__``."""
        b = x.shape[0]
        qkv = _proj_unfinished_codes(self.qkv_proj, x)  # [B, 1, N] or its SplitSums
        qkv = qkv.reshape(b, qkv.shape[-1])
        if impl == "pallas" and not rope_cache_supported(qkv, kv[0], head_dim=self.head_dim):
            impl = "xla"
        q, kc, vc = rope_cache_update(qkv, cos[:, 0], sin[:, 0], kv[0], kv[1], start, num_heads=self.num_heads,
                                      num_kv_heads=self.num_kv_heads, impl=impl)
        decode_impl = getattr(self, "decode_attention_impl", "auto")
        if decode_attention_impl(decode_impl, kc.shape[1], self.head_dim, kc.dtype) == "pallas":
            out = decode_attention(q, kc, vc, pos=start, first_slot=first_slot, impl=decode_impl,
                                   out_dtype=x.dtype)[:, None]
        else:
            q_slots = start + jnp.arange(1, dtype=jnp.int32)
            out = round_to(attend(q[:, None], kc, vc, q_slots, first_slot), x.dtype)
        out = out.reshape(b, 1, self.num_heads * self.head_dim)
        return (_proj(self.o_proj, out) if finish else _proj_unfinished(self.o_proj, out)), (kc, vc)

    def _fused_prefill(self, q, ks, t, start):
        """The fused prefill backend for this call, or None (the float32 ``attend``): only for T > 1 tokens
        starting at slot 0 (a static 0: the prefill and the full pass) with k/v in q's dtype (no FP8 cache)."""
        impl = getattr(self, "attention_impl", "auto")
        if impl == "float32" or t == 1 or not (isinstance(start, int) and start == 0):
            return None
        if self.kv_fp8 or ks.dtype != q.dtype:
            return None
        return fused_prefill_impl(impl, q.dtype, self.head_dim)


def _add_norm(norm: RMSNorm, x, residual, consumer):
    """``(h, y)``: ``h = dtype(x + residual)`` (x when ``residual`` is None) and ``norm(h)`` in one
    ``kernels.add_rmsnorm`` call (``DECODE_ADD_NORM``); y as :class:`~quark_jax.nn.InputCodes` when ``consumer``
    (the layer that reads y) quantizes its input with a static FP8 or INT8 scale, else in x's dtype."""
    quant = consumer.static_input_quant() if hasattr(consumer, "static_input_quant") else None
    kw = {} if quant is None else dict(codes=quant.codes, scale=quant.scale, scale_reciprocal=quant.scale_reciprocal,
                                       zero_point=quant.zero_point)
    h, y = add_rmsnorm(x, norm.weight[...], residual, eps=norm.eps, impl=DECODE_ADD_NORM, **kw)
    return h, (y if quant is None else InputCodes(y, x.dtype))


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``h = x + attn(norm(x)); y = h + mlp(norm(h))``; a sparse layer's ``mlp`` is a
    :class:`~quark_jax.models.moe.MoEBlock` at attribute ``moe_module`` ("mlp", or Mixtral's "block_sparse_moe")."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, kv_fp8: bool = False, fused: bool = False,
                 index: int = 0, moe_module: str = "mlp", expert_scales: str = "vllm"):
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs, kv_fp8=kv_fp8, fused=fused)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=eps, dtype=dtype)
        if index in cfg.moe_layers:
            self.ffn_name = moe_module
            setattr(self, moe_module, MoEBlock(cfg, f"model.layers.{index}.{moe_module}", dtype=dtype,
                                               expert_scales=expert_scales))
        else:
            self.ffn_name = "mlp"
            self.mlp = MLP(cfg, dtype=dtype, rngs=rngs, fused=fused)

    def __call__(self, x, cos, sin, kv=None, start=0, first_slot=None, prologue: bool = False):
        """x [B, T, hidden] -> (y, new kv); the arguments after x as :meth:`Attention.__call__`.

        ``prologue`` (``DECODE_PROLOGUE_FUSION``): the norms before the fused qkv_proj / gate_up_proj and the
        SiLU-mul before down_proj are formed in those layers' GEMMs where they take them (the same values).

        With ``DECODE_ADD_NORM`` the decode step passes x as ``(x, pending)``, the residual stream and the
        previous layer's MLP output not yet added to it (None before the first layer), and gets back
        ``((h, m), new kv)``: each residual add runs inside the RMSNorm kernel that follows it."""
        if isinstance(x, tuple):
            return self._call_fused_norms(*x, cos, sin, kv, start, first_slot)
        attn, ffn = self.self_attn, getattr(self, self.ffn_name)
        if prologue:
            mlp = isinstance(ffn, MLP) and ffn.fused
            xn = self.input_layernorm.fused_input(x, attn.qkv_proj if attn.fused else None)
            a, kv = attn(xn, cos, sin, kv, start, first_slot)
            h = round_to(x.astype(jnp.float32) + a.astype(jnp.float32), x.dtype)
            hn = self.post_attention_layernorm.fused_input(h, ffn.gate_up_proj if mlp else None)
            m = ffn(hn, prologue=True) if isinstance(ffn, MLP) else ffn(hn)
            return round_to(h.astype(jnp.float32) + m.astype(jnp.float32), x.dtype), kv
        a, kv = attn(self.input_layernorm(x), cos, sin, kv, start, first_slot)
        h = round_to(x.astype(jnp.float32) + a.astype(jnp.float32), x.dtype)
        m = ffn(self.post_attention_layernorm(h))
        return round_to(h.astype(jnp.float32) + m.astype(jnp.float32), x.dtype), kv

    def _call_fused_norms(self, x, pending, cos, sin, kv, start, first_slot):
        attn, ffn = self.self_attn, getattr(self, self.ffn_name)
        h, xn = _add_norm(self.input_layernorm, x, pending, attn.qkv_proj if attn.fused else None)
        a, kv = attn(xn, cos, sin, kv, start, first_slot, finish=False)  # o_proj's epilogue: in the next kernel
        mlp = isinstance(ffn, MLP)
        h, xn = _add_norm(self.post_attention_layernorm, h, a, ffn.gate_up_proj if mlp and ffn.fused else None)
        return (h, ffn(xn, finish=False) if mlp else ffn(xn)), kv


class LlamaModel(nnx.Module):
    """``embed_tokens``, ``layers`` and the final ``norm`` (HF ``model.*``)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, kv_fp8: bool = False, fused: bool = False,
                 moe_module: str = "mlp", expert_scales: str = "vllm"):
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs, kv_fp8=kv_fp8, fused=fused, index=i,
                                             moe_module=moe_module, expert_scales=expert_scales)
                                for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)


class LlamaForCausalLM(nnx.Module):
    """The decoder with its LM head; ``model(input_ids [B, T]) -> logits [B, T, vocab]`` in the model dtype.

    ``lm_head`` is an ``nnx.Linear`` unless the embeddings are tied (then logits use ``embed_tokens``).
    ``kv_fp8`` makes the KV cache FP8 with per-layer ``k_scale``/``v_scale`` (:class:`KVScale` variables).
    ``fuse_projections`` uses vLLM's layout: one ``self_attn.qkv_proj`` (rows q, k, v) and one ``mlp.gate_up_proj``
    (rows gate, up) instead of the HF projections; loading concatenates the checkpoint's shards.
    A MoE config (``cfg.moe_layers``) gets :class:`~quark_jax.models.moe.MoEBlock` layers at ``moe_module``
    ("mlp", or "block_sparse_moe" for Mixtral's original checkpoints), their expert scales per ``expert_scales``
    (:class:`quark_jax.nn.QuarkExperts`: "vllm" or "checkpoint").

    >>> from quark_jax.models.config import ModelConfig
    >>> cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    ...     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    >>> model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    >>> model(jnp.array([[1, 2, 3]])).shape
    (1, 3, 32)
    """

    def __init__(self, cfg: ModelConfig, *, dtype=None, rngs: nnx.Rngs, kv_fp8: bool = False,
                 fuse_projections: bool = False, moe_module: str = "mlp", expert_scales: str = "vllm"):
        dtype = jnp.dtype(dtype) if dtype is not None else cfg.jnp_dtype
        self.config = cfg
        self.dtype = dtype
        self.fuse_projections = fuse_projections
        self.model = LlamaModel(cfg, dtype=dtype, rngs=rngs, kv_fp8=kv_fp8, fused=fuse_projections,
                                moe_module=moe_module, expert_scales=expert_scales)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, False, dtype, rngs, head=True)
        self.inv_freq = tuple(float(f) for f in inverse_frequencies(cfg.rope, cfg.head_dim))

    @classmethod
    def abstract(cls, cfg: ModelConfig, *, dtype=None, kv_fp8: bool = False, fuse_projections: bool = False,
                 moe_module: str = "mlp", expert_scales: str = "vllm"):
        """The model with every variable a ``jax.ShapeDtypeStruct`` (no memory, no random init), as
        ``nnx.eval_shape(lambda: cls(cfg, ...))`` gives it, built in time linear in the layers: one dense decoder
        layer is traced and cloned, each sparse (MoE) layer traced on its own (a trace of the whole model costs
        time quadratic in its variables: seconds for 32 layers). What ``from_pretrained`` fills.

        >>> from quark_jax.models.config import ModelConfig
        >>> cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...     "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2})
        >>> m = LlamaForCausalLM.abstract(cfg)
        >>> len(m.model.layers), type(m.model.layers[2].mlp.down_proj.kernel.get_value()).__name__
        (3, 'ShapeDtypeStruct')
        """
        kw = dict(kv_fp8=kv_fp8, moe_module=moe_module, expert_scales=expert_scales)
        empty = dataclasses.replace(cfg, num_hidden_layers=0)
        model = nnx.eval_shape(lambda: cls(empty, dtype=dtype, rngs=nnx.Rngs(0), fuse_projections=fuse_projections,
                                           **kw))
        layers, dense = [], None
        for i in range(cfg.num_hidden_layers):
            def build(i=i):
                return DecoderLayer(cfg, dtype=model.dtype, rngs=nnx.Rngs(0), fused=fuse_projections, index=i, **kw)

            if i in cfg.moe_layers:  # its MoE block's names hold the layer index
                layers.append(nnx.eval_shape(build))
            else:
                dense = nnx.eval_shape(build) if dense is None else dense
                layers.append(dense if not any(x is dense for x in layers) else nnx.clone(dense))
        model.model.layers = nnx.List(layers)
        model.config = cfg
        return model

    @property
    def kv_fp8(self) -> bool:
        """Whether the KV cache is FP8 (set at construction, or by ``quantize_model`` for a KV-cache config)."""
        return bool(self.model.layers[0].self_attn.kv_fp8) if len(self.model.layers) else False

    @property
    def kv_cache_dtype(self):
        return jnp.dtype(FP8_KV_DTYPE) if self.kv_fp8 else self.dtype

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache [B, max_len, H_kv, D] per layer in :attr:`kv_cache_dtype`."""
        c = self.config
        return KVCache.create(c.num_hidden_layers, batch, max_len, c.num_key_value_heads, c.head_dim,
                              self.kv_cache_dtype)

    def _run(self, input_ids, cache, start, first_slot=None, last=None):
        """Tokens at slots ``start ..`` (positions = slot - first_slot) -> (logits, new cache or None).

        ``last`` (traced int, optional): only the logits of that token, [B, 1, vocab] (a prefill needs no more).
        """
        b, t = input_ids.shape
        input_ids = check_token_ids_in_range(input_ids, self.config.vocab_size)  # checks=True only (as below)
        x = check_finite(self.model.embed_tokens(input_ids), "model.embed_tokens")
        positions = start + jnp.arange(t, dtype=jnp.int32)[None, :]
        if first_slot is not None:
            positions = jnp.maximum(positions - first_slot[:, None], 0)
        positions = jnp.broadcast_to(positions, (b, t))
        cos, sin = rope_cos_sin(positions, np.asarray(self.inv_freq, np.float32), self.dtype)
        ks, vs = [], []
        mesh = getattr(self, "mesh", None)
        shared = _shared_layer_graphs(self.model.layers, mesh)
        fused_norms = (DECODE_ADD_NORM is not None and t == 1 and mesh is None and not _checks_enabled()
                       and len(self.model.layers) > 0)
        prologue = (DECODE_PROLOGUE_FUSION and not fused_norms and t == 1 and b <= DECODE_PROLOGUE_MAX_ROWS
                    and mesh is None and not _checks_enabled())
        if fused_norms:  # each layer gets (residual stream, the MLP output still to add): see DecoderLayer
            x = (x, None)
        for i, layer in enumerate(self.model.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            if shared is None:
                x, kv = _call_layer(layer, x, cos, sin, kv, start, first_slot, prologue)
            else:  # one trace (and one lowered function) serves every layer of the same structure
                # a Python-int start (the prefill's 0) stays static: the fused prefill attention needs it
                run = _layer_jit_static_start if isinstance(start, int) else _layer_jit
                x, kv = run(shared[i], nnx.state(layer), x, cos, sin, kv, start, first_slot, prologue)
            if not fused_norms:
                x = check_finite(x, f"model.layers.{i}")
            if kv is not None:
                ks.append(kv[0])
                vs.append(kv[1])
        if fused_norms:  # the last residual add inside the final norm's kernel
            x = _add_norm(self.model.norm, x[0], x[1], None)[1]
        if last is not None:
            x = jax.lax.dynamic_slice_in_dim(x, last, 1, axis=1)
        logits = check_finite(self._head(x, normed=fused_norms), "lm_head")
        return logits, (None if cache is None else KVCache(tuple(ks), tuple(vs)))

    def _head(self, x, normed: bool = False):
        """The final norm (unless ``normed``) and the LM head: hidden [B, T, hidden] -> logits [B, T, vocab]
        (model dtype)."""
        if not normed:
            x = self.model.norm(x)
        if self.config.tie_word_embeddings:
            table = self.model.embed_tokens.embedding[...]
            return round_to(jnp.dot(x, table.T, precision=dot_precision(x, table),
                                    preferred_element_type=jnp.float32), x.dtype)
        return _proj(self.lm_head, x)

    def __call__(self, input_ids, *, checks: bool = False):
        """Logits [B, T, vocab] (model dtype) of a full causal pass, no cache. Token ids are range-checked.

        Called eagerly, the pass runs as one jitted function (compiled once per input shape); inside a jax
        transformation it is traced inline (traced ids cannot be checked: an out-of-range one gives NaN logits).
        ``checks=True`` runs it with jax.experimental.checkify checks (ids in range; finite embeddings, Quark
        layer outputs, decoder-layer outputs and logits) and raises
        :class:`~quark_jax.errors.RuntimeCheckError` naming the first layer that failed (called eagerly only).
        """
        if checks:
            from quark_jax.runtime_checks import run_checked

            graphdef, state = nnx.split(self)
            err, logits = run_checked(_logits_of, graphdef, state, jnp.asarray(input_ids, jnp.int32),
                                      static_argnums=(0,))
            if err is not None:
                raise err
            return logits
        check_token_ids(input_ids, self.config.vocab_size)
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if not _tracing(input_ids, self):
            graphdef, state = nnx.split(self)
            return _jit_call(graphdef, state, input_ids)
        return self._logits(input_ids)

    def _logits(self, input_ids):
        return self._run(input_ids, None, 0)[0]

    def forward_cached(self, input_ids, cache: KVCache, start):
        """Run T tokens at positions ``start .. start+T-1`` against ``cache``; returns (logits, new cache).

        ``start`` may be traced (one compiled function for every decode position). The caller keeps
        ``start + T <= cache.max_len``; ids are not range-checked here (see :func:`check_token_ids`). Called
        eagerly it runs jitted (like ``__call__``).
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        start = jnp.asarray(start, jnp.int32)
        if not _tracing(input_ids, cache, start, self):
            graphdef, state = nnx.split(self)
            return _jit_forward_cached(graphdef, state, input_ids, cache, start)
        return self._cached(input_ids, cache, start)

    def _cached(self, input_ids, cache, start, first_slot=None, last=None):
        return self._run(input_ids, cache, start, first_slot, last)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """Greedy (default) or sampled continuation; see :func:`quark_jax.models.generate`."""
        from quark_jax.models.generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def generate_stream(self, input_ids, max_new_tokens: int, **kwargs):
        """New tokens in chunks as the device produces them; see :func:`quark_jax.models.generate_stream`."""
        from quark_jax.models.generation import generate_stream

        return generate_stream(self, input_ids, max_new_tokens, **kwargs)

    def generate_text(self, prompt, max_new_tokens: int = 64, **kwargs) -> str:
        """Text (or chat messages) in, text out; see :func:`quark_jax.models.generate_text`."""
        from quark_jax.models.text import generate_text

        return generate_text(self, prompt, max_new_tokens, **kwargs)

    def stream_text(self, prompt, max_new_tokens: int = 64, **kwargs):
        """The continuation as text pieces while it is generated; see :func:`quark_jax.models.stream_text`."""
        from quark_jax.models.text import stream_text

        return stream_text(self, prompt, max_new_tokens, **kwargs)


def _structure_key(graphdef):
    """A layer's graph definition without its layer-specific names (``QuarkLinear.name``: messages only)."""
    return tuple(graphdef.nodes), tuple((k, None if k == "name" else v) for k, v in graphdef.attributes)


def _shared_layer_graphs(layers, mesh):
    """For each decoder layer, the graph definition to trace it with: the first layer's where the structure is
    the same (so the layer function is traced and lowered once, not once per layer: the first call of a
    32-layer model traces and lowers ~32x less Python, and a warm compilation cache is hit sooner), else its own.
    None (trace each layer inline, as written) with runtime checks on (their messages name each layer), on a
    mesh, under ``jax.disable_jit()`` (eager: wrappers that record values see concrete arrays) or where a layer
    holds an unhashable static attribute (a user's module wrapping a layer with a dict, say). XLA inlines the calls: the compiled program is the same as with the layers traced inline."""
    from quark_jax.runtime_checks import enabled

    if enabled() or mesh is not None or len(layers) < 2 or jax.config.jax_disable_jit:
        return None
    graphs = [nnx.graphdef(layer) for layer in layers]
    seen: dict = {}
    try:
        return [seen.setdefault(_structure_key(g), g) for g in graphs]
    except TypeError:  # a layer holds an unhashable static attribute (e.g. a user's wrapper with a dict): inline
        return None


def _call_layer(layer, x, cos, sin, kv, start, first_slot, prologue):
    # a layer called without ``prologue`` where it is off: user wrappers of DecoderLayer need not take it
    return layer(x, cos, sin, kv, start, first_slot, prologue) if prologue else layer(x, cos, sin, kv, start,
                                                                                      first_slot)


@partial(jax.jit, static_argnums=(0, 8))
def _layer_jit(graphdef, state, x, cos, sin, kv, start, first_slot, prologue=False):
    return _call_layer(nnx.merge(graphdef, state), x, cos, sin, kv, start, first_slot, prologue)


@partial(jax.jit, static_argnums=(0, 6, 8))
def _layer_jit_static_start(graphdef, state, x, cos, sin, kv, start, first_slot, prologue=False):
    return _call_layer(nnx.merge(graphdef, state), x, cos, sin, kv, start, first_slot, prologue)


def _tracing(*trees) -> bool:
    """True when any array in ``trees`` (modules included) is a tracer, i.e. we are inside a transformation."""
    leaves = jax.tree_util.tree_leaves([nnx.state(t) if isinstance(t, nnx.Module) else t for t in trees])
    return any(isinstance(x, _Tracer) for x in leaves)


def _logits_of(graphdef, state, input_ids):
    return nnx.merge(graphdef, state)._logits(input_ids)


@partial(jax.jit, static_argnums=0)
def _jit_call(graphdef, state, input_ids):
    return nnx.merge(graphdef, state)._logits(input_ids)


@partial(jax.jit, static_argnums=0)
def _jit_forward_cached(graphdef, state, input_ids, cache, start):
    return nnx.merge(graphdef, state)._cached(input_ids, cache, start)
