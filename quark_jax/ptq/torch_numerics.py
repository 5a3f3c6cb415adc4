"""A calibration forward pass that rounds as amd-quark's torch CPU forward does (SPEC section 8).

Quark calibrates by running Hugging Face's ``LlamaForCausalLM`` (eager attention) in torch on the CPU; its
static input scales are the min/max of what each linear sees there. quark_jax's decoder rounds as vLLM does, and
XLA's kernels sum in other orders, so its activations differ from torch's by a few ulps. This module recomputes
the forward pass of a quark_jax Llama-family model op by op with the roundings of torch 2.13's CPU kernels
(measured against torch on an AVX-512 x86 CPU, the machine amd-quark 0.13 made the fixtures on):

* GEMMs (``F.linear``, ``torch.matmul``; MKL's sgemm, oneDNN's bf16 GEMM): each output is a sum of float32 fused
  multiply-add chains from 0 over K blocks (:data:`MKL_K_BLOCK`), added in order (bf16: rounded once to bf16 at
  the end); a bias is added after. Torch takes other paths below 4 rows or 9 columns: not mirrored.
* ``mean(x**2, -1)`` of RMSNorm: ATen's cascade sum (8-lane vectors, 4 interleaved accumulators, 4 levels of
  16-row blocks, the scalar tail, then the lanes in order), divided by the width; ``rsqrt`` as ``1 / sqrt``.
* ``exp`` inside softmax and SiLU: SLEEF's ``expf`` (u10) polynomial with FMAs; softmax sums with ATen's
  ``reduce_all`` (16-lane accumulation, then halving), then multiplies by ``1 / sum``; SiLU is
  ``x / (1 + exp(-x))``.
* RoPE: ``inv_freq = 1 / f32(base ** f32(2i / d))``, angles ``f32(position * inv_freq)``; ``cos``/``sin`` are the
  correctly rounded float32 values (torch uses MKL's vector math, which is not reproducible: the one known residue).
* every other op (products, sums, casts) rounds once to the op's torch dtype.

Every float32 op is evaluated in float64 and rounded to float32 (bit-exact for + - * / sqrt: 53 >= 2*24 + 2); an
FMA likewise (a product of two float32 is exact in float64; the sum's float64 rounding can, with probability about
2^-29, land on a float32 midpoint: a double rounding torch's FMA does not make). Runs jitted with 64-bit types
enabled for its own scope only.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax.quant.rounding import round_to

__all__ = ["TorchNumerics", "torch_inverse_frequencies", "sleef_expf", "aten_sum_lastdim", "linear_fma"]

_F32, _F64 = jnp.float32, jnp.float64
_TINY = float(np.finfo(np.float32).tiny)


def _f32(v):
    """float64 ``v`` rounded (nearest even) to float32. Rounded on the float64 grid first (``reduce_precision``),
    so that XLA's excess precision cannot skip the rounding when it drops a float64 -> float32 -> float64 convert
    pair (quark_jax.quant.rounding). Results below float32's smallest normal (2^-126) flush to zero: only
    ``exp`` produces those here (see :func:`_f32_subnormal`)."""
    return jax.lax.reduce_precision(v, exponent_bits=8, mantissa_bits=23).astype(_F32)


def _f32_subnormal(v):
    """:func:`_f32` with float32 subnormals rounded as IEEE (torch does not flush them)."""
    r = jax.lax.reduce_precision(v, exponent_bits=8, mantissa_bits=23)
    r = jnp.where(jnp.abs(v) < _TINY, jnp.round(v * 2.0 ** 149) * 2.0 ** -149, r)  # exact scaling by 2^149
    return r.astype(_F32)


def _r(v, dtype=_F32):
    """float64 ``v`` rounded to float32, then to ``dtype`` (torch computes bf16 ops in float32 and rounds the
    result, so this double rounding is torch's too)."""
    v = _f32(v)
    return v if dtype == _F32 else round_to(v, dtype)


def _d(x):
    return x.astype(_F64)


def _fma(a, b, c):
    """float32 ``fma(a, b, c)`` (float32 inputs)."""
    return _f32(_d(a) * _d(b) + _d(c))


def _add(a, b):
    return _f32(_d(a) + _d(b))


def _mul(a, b):
    return _f32(_d(a) * _d(b))


def torch_inverse_frequencies(theta: float, head_dim: int, *, factor: float = 1.0) -> np.ndarray:
    """HF's default RoPE ``inv_freq`` as torch computes it in float32: ``1 / f32(theta ** f32(2i / d))`` (a
    ``linear`` rope divides by ``factor`` in float32).

    >>> torch_inverse_frequencies(10000.0, 16)[3].item()  # the float64 formula gives 0.031622775...
    0.03162277862429619
    """
    e = (np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)).astype(np.float32)
    p = np.power(np.float64(theta), e.astype(np.float64)).astype(np.float32)
    inv = (np.float32(1.0) / p).astype(np.float32)
    if factor != 1.0:
        inv = (inv / np.float32(factor)).astype(np.float32)
    return inv


_R_LN2 = np.float32(1.442695040888963407359924681001892137426645954152985934135449406931)
_L2U, _L2L = np.float32(0.693145751953125), np.float32(1.428606765330187045e-06)
_EXP_POLY = tuple(np.float32(c) for c in (0.000198527617612853646278381, 0.00139304355252534151077271,
                                          0.00833336077630519866943359, 0.0416664853692054748535156,
                                          0.166666671633720397949219, 0.5))


def _pow2(e):
    """2.0 ** e (float64, exact: built from the exponent bits; XLA's exp2 is not exact) for int32 |e| < 1000."""
    return jax.lax.bitcast_convert_type((e.astype(jnp.int64) + 1023) << 52, _F64)


def sleef_expf(d):
    """float32 ``exp`` as SLEEF's ``expf`` u10 computes it with FMAs (ATen's ``Vectorized<float>::exp``, used by
    softmax and SiLU): ``q = rint(d / ln 2)``, a two-step Cody-Waite reduction, a degree-5 polynomial, and the
    scaling by ``2^(q >> 1) * 2^(q - (q >> 1))``. Call under 64-bit types (:meth:`TorchNumerics.ranges` does).
    d: float32 array -> float32 array of its shape.

    >>> with jax.enable_x64(True):
    ...     sleef_expf(jnp.array([0.0, 1.0], jnp.float32)).tolist()
    [1.0, 2.7182817459106445]
    """
    d = d.astype(_F32)
    q = jnp.rint(_mul(d, _R_LN2))
    s = _fma(q, -_L2U, d)
    s = _fma(q, -_L2L, s)
    u = jnp.full_like(s, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        u = _fma(u, s, jnp.full_like(s, c))
    u = _add(jnp.ones_like(s), _fma(_mul(s, s), u, s))
    qi = jnp.clip(q, -300, 300).astype(jnp.int32)
    h = qi >> 1
    u = _f32(_d(u) * _pow2(h))
    u = _f32_subnormal(_d(u) * _pow2(qi - h))
    u = jnp.where(d < -104.0, jnp.float32(0), u)
    return jnp.where(d > 100.0, jnp.float32(jnp.inf), u)


def _seq_sum(rows, shape):
    """float32 sum of ``rows`` [n, ...] one after the other from 0 (``shape``: the result's)."""
    if rows.shape[0] == 0:
        return jnp.zeros(shape, _F32)
    tot, _ = jax.lax.scan(lambda acc, r: (_add(acc, r), None), jnp.zeros(shape, _F32), rows)
    return tot


def _groups(vals, step, shape):
    """Sums of the complete groups of ``step`` consecutive rows, and the sum of the rows left over."""
    n = vals.shape[0] // step
    full = vals[:n * step].reshape((n, step) + vals.shape[1:])
    sums = jax.vmap(lambda g: _seq_sum(g, shape))(full) if n else jnp.zeros((0,) + shape, _F32)
    return sums, _seq_sum(vals[n * step:], shape)


def _multi_row_sum(rows):
    """ATen's ``multi_row_sum`` (4 levels): rows [size, ...] -> their float32 sum. Blocks of ``2^p`` rows
    (p = max(4, ceil(log2 size) // 4)) are summed from 0 at level 0; each complete block moves up to level 1,
    each complete group of 2^p blocks to level 2, and so on to level 3; the levels are added last, 0 to 3."""
    size, shape = rows.shape[0], rows.shape[1:]
    power = max(4, (size - 1).bit_length() // 4 if size > 1 else 0)
    step = 1 << power
    level1, tail0 = _groups(rows, step, shape)      # complete blocks; the rows after the last one (level 0)
    level2, part1 = _groups(level1, step, shape)    # what level 1 holds at the end
    level3, part2 = _groups(level2, step, shape)
    top = _seq_sum(level3, shape)                   # level 3 keeps every complete group of level 2
    return _add(_add(_add(tail0, part1), part2), top)


def aten_sum_lastdim(x, *, lanes: int = 8):
    """Sum over the last axis of float32 ``x`` in the order of ATen's CPU ``sum`` of a contiguous row (its AVX2
    kernel, which torch also runs on AVX-512 CPUs): 8-lane vectors, 4 interleaved accumulators summed in a
    cascade, the scalar tail, then the lanes one by one. Returns x.shape[:-1] float32.

    >>> import jax
    >>> with jax.enable_x64(True):
    ...     float(aten_sum_lastdim(jnp.arange(20.0, dtype=jnp.float32)))
    190.0
    """
    n = x.shape[-1]
    if n < lanes:
        lanes = 1  # ATen's scalar path: the same cascade over single elements
    nvec = n // lanes
    ilp = 4
    size_ilp = nvec // ilp
    if size_ilp:  # row i of the cascade: vectors 4i .. 4i+3, one per accumulator
        rows = x[..., :size_ilp * ilp * lanes].reshape(x.shape[:-1] + (size_ilp, ilp, lanes))
        acc = _multi_row_sum(jnp.moveaxis(rows, -3, 0))  # [..., ilp, lanes]
        parts = [acc[..., k, :] for k in range(ilp)]
    else:
        parts = [jnp.zeros(x.shape[:-1] + (lanes,), _F32) for _ in range(ilp)]
    for i in range(size_ilp * ilp, nvec):
        parts[0] = _add(parts[0], x[..., i * lanes:(i + 1) * lanes])
    for k in range(1, ilp):
        parts[0] = _add(parts[0], parts[k])
    out = jnp.zeros(x.shape[:-1], _F32)
    if lanes > 1:
        for k in range(nvec * lanes, n):
            out = _add(out, x[..., k])
    for l in range(lanes):
        out = _add(out, parts[0][..., l])
    return out


def _reduce_all_sum(x, lanes: int = 16):
    """ATen's ``vec::reduce_all(+)`` over the last axis (softmax's sum, AVX-512: 16 lanes): lane-wise
    accumulation of full vectors, the tail into the first lanes, then halving (lane i + lane i + w/2)."""
    n = x.shape[-1]
    if n < lanes:
        out = x[..., 0]
        for k in range(1, n):
            out = _add(out, x[..., k])
        return out
    acc = x[..., :lanes]
    d = lanes
    while d + lanes <= n:
        acc = _add(acc, x[..., d:d + lanes])
        d += lanes
    if n > d:
        r = n - d
        acc = jnp.concatenate([_add(acc[..., :r], x[..., d:]), acc[..., r:]], axis=-1)
    while acc.shape[-1] > 1:
        h = acc.shape[-1] // 2
        acc = _add(acc[..., :h], acc[..., h:])
    return acc[..., 0]


MKL_K_BLOCK = 192
"""MKL's sgemm splits K into blocks of ``K`` (K <= 192), ``K // 2`` (192 < K <= 384) or 192, the remainder last;
each block is an FMA chain from 0 and the block results are added in order (measured: torch 2.13, M >= 4 rows)."""


def _k_block(k: int) -> int:
    return k if k <= MKL_K_BLOCK else min(k // 2, MKL_K_BLOCK)


def _fma_gemm(xs, ws, prod, shape):
    """sum over k of ``prod(xs[k], ws[k])`` (float64 products of float32 values) in MKL's order: FMA chains
    over K blocks (:data:`MKL_K_BLOCK`), the block sums added in order. xs [K, ...], ws [K, ...] -> float32
    ``shape``."""
    k = xs.shape[0]
    kc = _k_block(k)
    nfull = k // kc

    def chain(x_blk, w_blk):
        def step(acc, xw):
            return _f32(_d(acc) + prod(*xw)), None
        acc, _ = jax.lax.scan(step, jnp.zeros(shape, _F32), (x_blk, w_blk))
        return acc

    def block(tot, xw):
        return _add(tot, chain(*xw)), None  # 0 + the first block is exact

    xb = xs[:nfull * kc].reshape((nfull, kc) + xs.shape[1:])
    wb = ws[:nfull * kc].reshape((nfull, kc) + ws.shape[1:])
    tot, _ = jax.lax.scan(block, jnp.zeros(shape, _F32), (xb, wb))
    if k > nfull * kc:
        tot = _add(tot, chain(xs[nfull * kc:], ws[nfull * kc:]))
    return tot


def linear_fma(x, w, dtype):
    """``x @ w`` in MKL's order (FMA chains over K blocks, :data:`MKL_K_BLOCK`; oneDNN's bf16 GEMM rounds to the
    same bf16 values on everything measured), rounded to ``dtype``. x [..., K], w [K, N] (values exact in
    float32) -> [..., N]. Torch takes another path (GEMV) below 4 rows; not mirrored. Call under 64-bit types.

    >>> with jax.enable_x64(True):
    ...     linear_fma(jnp.ones((4, 3), jnp.float32), jnp.full((3, 2), 0.5, jnp.float32), jnp.bfloat16)[0].tolist()
    [1.5, 1.5]
    """
    xs = jnp.moveaxis(_d(x), -1, 0)
    acc = _fma_gemm(xs, _d(w), lambda xk, wk: xk[..., None] * wk, x.shape[:-1] + (w.shape[1],))
    return _r(acc, dtype)


def _rms_norm(x, weight, eps, dtype):
    xf = x.astype(_F32)
    var = _f32(_d(aten_sum_lastdim(_mul(xf, xf))) / x.shape[-1])
    r = _f32(1.0 / _d(_f32(jnp.sqrt(_d(_add(var, jnp.float32(eps)))))))  # 1 / sqrt, each rounded
    h = _r(_d(xf) * _d(r)[..., None], dtype)
    return _r(_d(weight.astype(_F32)) * _d(h.astype(_F32)), dtype)


def _softmax_f32(s):
    m = jnp.max(s, axis=-1, keepdims=True)
    e = sleef_expf(_f32(_d(s) - _d(m)))
    inv = _f32(1.0 / _d(_reduce_all_sum(e)))
    return _f32_subnormal(_d(e) * _d(inv[..., None]))


def _silu(g, dtype):
    gf = g.astype(_F32)
    e = sleef_expf(-gf)
    return _r(_d(gf) / _d(_add(jnp.ones_like(gf), e)), dtype)


class TorchNumerics:
    """Observed (min, max) ranges of a quark_jax Llama-family float model's linears, computed with torch's CPU
    roundings (module docstring). ``model``: :class:`quark_jax.models.LlamaForCausalLM` with plain (unquantized)
    ``nnx.Linear`` projections, fused or not; ``observe`` maps module paths to (inputs, outputs).

    >>> from flax import nnx
    >>> from quark_jax.models import LlamaForCausalLM, ModelConfig
    >>> cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 16, "hidden_size": 8,
    ...     "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})
    >>> TorchNumerics(LlamaForCausalLM(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))).linear_paths[:2]
    ['lm_head', 'model.layers.0.mlp.down_proj']
    """

    def __init__(self, model):
        from flax import nnx

        from quark_jax.models import LlamaForCausalLM

        if not isinstance(model, LlamaForCausalLM):
            raise ValueError(f"calibration numerics 'torch': needs a quark_jax LlamaForCausalLM, got "
                             f"{type(model).__name__}; use numerics='xla'")
        cfg = model.config
        if cfg.num_experts:
            raise ValueError(f"calibration numerics 'torch': {cfg.model_type} has MoE layers, which are not "
                             "mirrored (dense Llama, Mistral, Qwen2, Qwen3 are); use numerics='xla'")
        if cfg.rope.rope_type not in ("default", "linear"):
            raise ValueError(f"calibration numerics 'torch': rope_type {cfg.rope.rope_type!r} is not mirrored "
                             "(default and linear are); use numerics='xla'")
        self.cfg, self.dtype = cfg, jnp.dtype(model.dtype)
        self.inv_freq = torch_inverse_frequencies(cfg.rope.theta, cfg.head_dim,
                                                  factor=cfg.rope.factor if cfg.rope.rope_type == "linear" else 1.0)
        params = {}
        for path, m in nnx.iter_modules(model):
            if isinstance(m, nnx.Linear):
                p = ".".join(str(k) for k in path)
                params[p + ".kernel"] = m.kernel[...]
                if m.bias is not None:
                    params[p + ".bias"] = m.bias[...]
            elif hasattr(m, "eps") and hasattr(m, "weight"):  # the decoder's RMSNorm
                params[".".join(str(k) for k in path) + ".weight"] = m.weight[...]
            elif isinstance(m, nnx.Embed):
                params[".".join(str(k) for k in path) + ".embedding"] = m.embedding[...]
            elif isinstance(m, nnx.Module) and hasattr(m, "kernel"):
                raise ValueError(f"calibration numerics 'torch': {'.'.join(map(str, path))} is not a float "
                                 "nnx.Linear")
        self.params = params
        self.linear_paths = [k[: -len(".kernel")] for k in params if k.endswith(".kernel")]
        self.fused = bool(model.fuse_projections)

    def ranges(self, input_ids, observe, slices):
        """input_ids [B, T] -> {path: (input (lo, hi) float32 [2], [output (lo, hi) per slice])} for the paths
        in ``observe`` (path -> (inputs, outputs)); ``slices``: path -> [(start, stop)] output column ranges.

        Every linear is observed (min/max are cheap) and each decoder layer runs as one jitted function compiled
        once per layer structure, so one compilation serves every layer and any ``observe``."""
        def cuts(p):  # one slice over all columns is the default (None, None)
            sl = [tuple(c) for c in (slices.get(p) or ())]
            return tuple(sl) if len(sl) > 1 else ((None, None),)

        ids = np.asarray(input_ids)
        t = ids.shape[1]
        dtype = str(self.dtype)
        out = {}
        with jax.enable_x64(True):
            cos, sin = _rope_tables(t, self.inv_freq, self.dtype)
            x = _embed(self.params["model.embed_tokens.embedding"], jnp.asarray(ids, jnp.int32), dtype)
            for i in range(self.cfg.num_hidden_layers):
                pre = f"model.layers.{i}."
                lp = {k[len(pre):]: v for k, v in self.params.items() if k.startswith(pre)}
                key = tuple(sorted((k[: -len(".kernel")], cuts(pre + k[: -len(".kernel")])) for k in lp
                                   if k.endswith(".kernel")))
                x, r = _layer(self.cfg, dtype, self.fused, key, lp, x, cos, sin)
                out.update({pre + k: v for k, v in r.items()})
            if "lm_head" in observe:
                out["lm_head"] = _head(self.cfg, dtype, cuts("lm_head"), self.params["model.norm.weight"],
                                       self.params["lm_head.kernel"], x)
            out = jax.device_get(out)
        return {p: out[p] for p in observe}


@partial(jax.jit, static_argnums=2)
def _embed(table, ids, dtype_name):
    return table[ids].astype(jnp.dtype(dtype_name))


def _observed(x, y, cuts):
    xf = x.astype(_F32)
    routs = [jnp.stack([jnp.min(y[..., lo:hi].astype(_F32)), jnp.max(y[..., lo:hi].astype(_F32))])
             for lo, hi in cuts]
    return jnp.stack([jnp.min(xf), jnp.max(xf)]), routs


def _linear(lp, name, x, dtype):
    y = linear_fma(x, lp[name + ".kernel"], _F32)
    if name + ".bias" in lp:  # added to the float32 chains' result (measured: torch's addmm)
        y = _add(y, lp[name + ".bias"].astype(_F32))
    return _r(y, dtype)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _head(cfg, dtype_name, cuts, norm_weight, kernel, x):
    dtype = jnp.dtype(dtype_name)
    h = _rms_norm(x, norm_weight, cfg.rms_norm_eps, dtype)
    return _observed(h, _linear({"lm_head.kernel": kernel}, "lm_head", h, dtype), cuts)


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _layer(cfg, dtype_name, fused, key, lp, x, cos, sin):
    """One decoder layer (HF ``LlamaDecoderLayer``, eager attention) with torch's roundings: x [B, T, hidden]
    -> (x, {linear name in the layer: observed ranges})."""
    dtype = jnp.dtype(dtype_name)
    cuts = dict(key)
    out = {}

    def lin(name, v):
        y = _linear(lp, name, v, dtype)
        out[name] = _observed(v, y, cuts[name])
        return y

    bsz, t = x.shape[:2]
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    scaling = jnp.float32(hd ** -0.5)
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]

    def rope(v):  # v [B, H, T, D] in dtype
        vf = v.astype(_F32)
        rot = jnp.concatenate([-vf[..., hd // 2:], vf[..., :hd // 2]], axis=-1)
        a = _r(_d(vf) * _d(cos), dtype).astype(_F32)
        b = _r(_d(rot) * _d(sin), dtype).astype(_F32)
        return _r(_d(a) + _d(b), dtype)

    h = _rms_norm(x, lp["input_layernorm.weight"], cfg.rms_norm_eps, dtype)
    if fused:
        qkv = lin("self_attn.qkv_proj", h)
        q, k, v = qkv[..., :nh * hd], qkv[..., nh * hd:(nh + nkv) * hd], qkv[..., (nh + nkv) * hd:]
    else:
        q, k, v = (lin(f"self_attn.{n}_proj", h) for n in "qkv")
    q, k = q.reshape(bsz, t, nh, hd), k.reshape(bsz, t, nkv, hd)
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's D before RoPE
        q = _rms_norm(q, lp["self_attn.q_norm.weight"], cfg.rms_norm_eps, dtype)
        k = _rms_norm(k, lp["self_attn.k_norm.weight"], cfg.rms_norm_eps, dtype)
    q, k = rope(q.transpose(0, 2, 1, 3)), rope(k.transpose(0, 2, 1, 3))
    v = v.reshape(bsz, t, nkv, hd).transpose(0, 2, 1, 3)
    g = nh // nkv
    k, v = jnp.repeat(k, g, axis=1), jnp.repeat(v, g, axis=1)
    s = _bmm(q, jnp.swapaxes(k, -1, -2), dtype)
    s = _r(_d(s.astype(_F32)) * _d(scaling), dtype)
    p = _softmax_masked(s.astype(_F32), causal)
    o = _bmm(_r(_d(p), dtype), v, dtype)
    o = o.transpose(0, 2, 1, 3).reshape(bsz, t, nh * hd)
    a = lin("self_attn.o_proj", o)
    x = _r(_d(x.astype(_F32)) + _d(a.astype(_F32)), dtype)
    h = _rms_norm(x, lp["post_attention_layernorm.weight"], cfg.rms_norm_eps, dtype)
    if fused:
        gu = lin("mlp.gate_up_proj", h)
        gt, up = gu[..., :cfg.intermediate_size], gu[..., cfg.intermediate_size:]
    else:
        gt, up = lin("mlp.gate_proj", h), lin("mlp.up_proj", h)
    m = _r(_d(_silu(gt, dtype).astype(_F32)) * _d(up.astype(_F32)), dtype)
    d = lin("mlp.down_proj", m)
    x = _r(_d(x.astype(_F32)) + _d(d.astype(_F32)), dtype)
    return x, out


def _rope_tables(t, inv_freq, dtype):
    """cos, sin [T, D] float32 (values of ``dtype``) for positions 0..T-1, on the host: angles
    ``f32(position * inv_freq)`` (HF's K=1 matmul), then the correctly rounded float32 cos/sin (numpy's float64
    libm, rounded), rounded to the model dtype as HF's ``.to(x.dtype)``."""
    inv = np.asarray(inv_freq, np.float32)
    ang = (np.arange(t, dtype=np.float64)[:, None] * inv.astype(np.float64)[None]).astype(np.float32)
    ang = np.concatenate([ang, ang], axis=-1).astype(np.float64)
    out = []
    for f in (np.cos, np.sin):
        v = f(ang).astype(np.float32)
        out.append(np.asarray(v.astype(dtype), np.float32))
    return out


def _bmm(a, b, dtype):
    """Batched ``a @ b`` (a [..., M, K], b [..., K, N]) in MKL's order (:func:`linear_fma`), rounded to
    ``dtype``."""
    xs = jnp.moveaxis(_d(a), -1, 0)   # [K, ..., M]
    ws = jnp.moveaxis(_d(b), -2, 0)   # [K, ..., N]
    acc = _fma_gemm(xs, ws, lambda xk, wk: xk[..., :, None] * wk[..., None, :], a.shape[:-1] + (b.shape[-1],))
    return _r(acc, dtype)


def _softmax_masked(s, causal):
    """Softmax (float32) of scores [B, H, T, S] with HF's additive causal mask: a masked score becomes the dtype's
    lowest value, whose exp is 0 (SLEEF returns 0 below -104)."""
    lowest = jnp.float32(np.finfo(np.float32).min)
    s = jnp.where(causal, s, lowest)
    return _softmax_f32(s)

