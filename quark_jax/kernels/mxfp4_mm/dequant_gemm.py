"""Large-M MXFP4 GEMM: a Pallas (Triton) kernel dequantizes the packed weight into a transient bf16 copy, then the
bf16 tensor cores run XLA's GEMM (cuBLAS) on it. Its ``Config``.

At prefill sizes the fused kernel (``pallas_triton``) serializes its in-register decode with the MMA and reaches
~0.6x of a bf16 GEMM on Hopper; here the decode is one memory-bound pass (reads 4.25 bits, writes 16 bits per
weight: ~35-40 us for a 4096x14336 weight on an H200) and the GEMM runs at the bf16 GEMM's own speed, so the
ratio to bf16 dense is ``t_gemm / (t_gemm + t_dequant + t_activation_prep)``. The persistent weight stays packed
(4.25 bits per parameter); the bf16 copy lives only for the duration of the call (N * K * 2 bytes of transient
device memory).

Layout: each program decodes a [block_n, block_k / 2] byte tile and writes its two nibble planes side by side,
``w_perm[n, t*bk + p*bk/2 + i] = plane_p[n, t*bk/2 + i]`` (p = 0: low nibbles, K element ``t*bk + 2i``; p = 1:
high nibbles, ``t*bk + 2i + 1``), so the stores are plain row slices (no in-register interleave). The activation
gets the same permutation of its K columns (:func:`permute_activations`, in the same XLA pass as its quant-dequant),
which leaves every product and the set of summed terms unchanged: the result is the XLA reference's up to the
order of the f32 sums.

Activation preparation (``act``): ``"xla"`` runs the quant-dequant and the permutation as XLA ops (XLA makes a
block-max reduction and an elementwise pass of them: x read twice, written once); ``"pallas"`` runs them as one
Pallas-Triton pass (:func:`prepare_activations_pallas`: each program loads the even and odd columns of a
[act_block_m, block_k] tile with strided loads, quant-dequantizes them with ``pallas_triton_gemv.qdq_pairs``, the
reference's integer arithmetic, and stores them side by side: x read once, written once). It applies to W4A4 with
bf16 / f32 x and an M with a power-of-two divisor >= 8 (at most ``act_block_m``); other calls take the XLA form.
On finite input both equal ``qdq_mxfp4`` bit for bit; a block holding NaN / inf is the reference's only in the
XLA form. ``"xla_pairs"`` (W4A4, bf16 / f32 x) is an XLA hedge for ``"pallas"``: ``qdq_pairs`` on the strided even
and odd column views, stacked per tile in the kernel's order, so that the permutation is an output index of the
quant-dequant's elementwise pass (no separate transpose pass).

``method="xla"`` instead dequantizes with XLA integer/float ops into the checkpoint order (the same values; no
activation permutation) and keeps it out of the GEMM's fusion with an optimization barrier: the fallback where the
Pallas dequant kernel is slower or unavailable.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import tiling
from quark_jax.kernels.mxfp4_mm import decode
from quark_jax.kernels.mxfp4_mm.pallas_triton_gemv import qdq_pairs
from quark_jax.quant import qdq_mxfp4

METHODS = ("pallas", "xla")
ACTS = ("xla", "xla_pairs", "pallas")
# None, or "xla" / "pallas": overrides every Config's ``act`` at trace time (``pallas_triton.mxfp4_mm_pallas``), so
# a device session can run the other activation pass end to end with ``bench_e2e.py --set`` and no code change
ACT_OVERRIDE: str | None = None
_ACT_MIN_ROWS = 8  # the Pallas activation pass needs a power-of-two row tile >= 8 dividing M


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Tiling of the dequant kernel (block sizes powers of two, ``block_k`` a multiple of 32).

    >>> Config(block_n=32, block_k=512).block_k
    512
    """

    block_n: int = 32  # weight rows per program
    block_k: int = 512  # K elements per program (block_k / 2 packed bytes)
    num_warps: int = 4  # Triton warps per program
    num_stages: int = 1  # no loop in the kernel: nothing to pipeline
    decode: str = "asm"  # "asm" (PTX, sm90+), "asm_scaled" or "jnp" (portable); as pallas_triton.Config.decode
    pack: int = 4  # packed bytes per asm instance: 4 suits this kernel's blocked layout
    method: str = "pallas"  # "pallas": this kernel; "xla": XLA ops into the checkpoint order
    act: str = "pallas"  # W4A4 activation quant-dequant + permutation: one "pallas" pass (measured faster on the
    # H200, session 10: 0.80-0.98x bf16 vs 0.73-0.92x for "xla", equal results) or "xla" / "xla_pairs" ops; an M
    # without a power-of-two row tile >= 8 (or non-bf16/f32 x, W4A16) takes "xla"
    act_block_m: int = 16  # rows per program of the Pallas activation pass (its K tile is block_k): 16 x 512 keeps
    # the two f32 planes at 32 registers each per thread with 4 warps (no spills from qdq_pairs' temporaries)
    act_num_warps: int = 4  # Triton warps per program of the Pallas activation pass

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_n", "block_k", "num_warps"))
        if self.block_k < 32:
            raise ValueError(f"Config.block_k: expected a multiple of 32 (one MX block), got {self.block_k}")
        if self.method not in METHODS:
            raise ValueError(f"Config.method: expected one of {METHODS}, got {self.method!r}")
        if self.pack not in (2, 4):
            raise ValueError(f"Config.pack: expected 2 or 4 bytes per asm instance, got {self.pack}")
        if self.act not in ACTS:
            raise ValueError(f"Config.act: expected one of {ACTS}, got {self.act!r}")
        tiling.check_powers_of_two(self, ("act_block_m", "act_num_warps"))


def fit(cfg: Config, k: int, n: int) -> Config:
    """``cfg`` with tiles shrunk to divide N (a multiple of 16) and K (a multiple of 32).

    >>> c = fit(Config(block_n=64, block_k=512), k=96, n=48)
    >>> c.block_n, c.block_k
    (16, 32)
    """
    bn = cfg.block_n
    while n % bn and bn > 1:
        bn //= 2
    bk = min(cfg.block_k, tiling.pow2_floor(k))
    while k % bk:
        bk //= 2
    if bk < 32:
        raise ValueError(f"mxfp4_mm: cannot tile K = {k} (need K % 32 == 0)")
    return dataclasses.replace(cfg, block_n=bn, block_k=bk)


def permute_activations(xq, block_k: int):
    """x [M, K] with its K columns in the dequant kernel's order: per K tile of ``block_k``, the even columns, then
    the odd ones.

    >>> permute_activations(jnp.arange(8.0)[None], 4)[0].tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    """
    m, k = xq.shape
    return xq.reshape(m, k // block_k, block_k // 2, 2).swapaxes(-1, -2).reshape(m, k)


def act_rows(cfg: Config, m: int) -> int:
    """Row tile of the Pallas activation pass for M rows: the largest power of two <= ``cfg.act_block_m`` dividing
    M, or 0 where that is below 8 (the XLA form runs then).

    >>> act_rows(Config(act_block_m=32), 2048), act_rows(Config(act_block_m=32), 24), act_rows(Config(), 19)
    (32, 8, 0)
    """
    bm = cfg.act_block_m
    while bm > 1 and m % bm:
        bm //= 2
    return bm if bm >= _ACT_MIN_ROWS else 0


def _act_kernel(x_ref, o_ref, *, bkh: int, dtype, interpret: bool):
    if interpret:  # interpret mode has no strided loads: the contiguous tile, then its even / odd columns
        pairs = x_ref[...].reshape(x_ref.shape[0], bkh, 2)
        xe, xo = pairs[:, :, 0], pairs[:, :, 1]
    else:
        xe = x_ref[:, pl.ds(0, bkh, stride=2)]
        xo = x_ref[:, pl.ds(1, bkh, stride=2)]
    qe, qo = qdq_pairs(xe.astype(jnp.float32), xo.astype(jnp.float32))
    o_ref[:, pl.ds(0, bkh)] = qe.astype(dtype)
    o_ref[:, pl.ds(bkh, bkh)] = qo.astype(dtype)


def prepare_activations_pallas(x, dtype, *, cfg: Config, interpret: bool):
    """``permute_activations(qdq_mxfp4(x).astype(dtype), cfg.block_k)`` in one Pallas-Triton pass (x read once,
    written once); x [M, K] with M divisible by ``act_rows(cfg, M)`` > 0, K by ``cfg.block_k``. Equal to the XLA
    form bit for bit on finite x (``pallas_triton_gemv.qdq_pairs``).

    >>> x = jnp.concatenate([jnp.array([0.25, 0.75, 1.25, 1.75, 5.0]), jnp.zeros(27)])[None].repeat(8, 0)
    >>> prepare_activations_pallas(x, jnp.float32, cfg=Config(block_k=32), interpret=True)[0, :3].tolist()
    [0.0, 1.0, 4.0]
    """
    m, k = x.shape
    bm, bk = act_rows(cfg, m), cfg.block_k
    if not bm:
        raise ValueError(f"prepare_activations_pallas: M = {m} has no power-of-two row tile >= {_ACT_MIN_ROWS}")
    kernel = functools.partial(_act_kernel, bkh=bk // 2, dtype=jnp.dtype(dtype), interpret=interpret)
    launch = dataclasses.replace(cfg, num_warps=cfg.act_num_warps)
    return tiling.triton_call(
        kernel, cfg=launch, name=f"mxfp4_act_qdq_{bm}x{bk}", interpret=interpret,
        out_shape=jax.ShapeDtypeStruct((m, k), dtype), grid=(m // bm, k // bk),
        in_specs=[pl.BlockSpec((bm, bk), lambda i, j: (i, j))],
        out_specs=pl.BlockSpec((bm, bk), lambda i, j: (i, j)),
    )(x)


def prepare_activations_xla_pairs(x, dtype, block_k: int):
    """``permute_activations(qdq_mxfp4(x).astype(dtype), block_k)`` from XLA ops on the even / odd column views
    (``pallas_triton_gemv.qdq_pairs``: equal bit for bit on finite x).

    >>> x = jnp.concatenate([jnp.array([0.25, 0.75, 1.25, 1.75, 5.0]), jnp.zeros(27)])[None]
    >>> prepare_activations_xla_pairs(x, jnp.float32, 32)[0, :3].tolist()
    [0.0, 1.0, 4.0]
    """
    m, k = x.shape
    xf = x.astype(jnp.float32)
    qe, qo = qdq_pairs(xf[:, 0::2], xf[:, 1::2])
    tiles = (m, k // block_k, block_k // 2)
    return jnp.stack([qe.reshape(tiles), qo.reshape(tiles)], axis=2).reshape(m, k).astype(dtype)


def _kernel(w_ref, s_ref, o_ref, *, cfg: Config, dtype):
    bkh = cfg.block_k // 2
    packed = w_ref[...]
    sbytes = s_ref[...]
    if cfg.decode == "jnp":
        lo, hi = decode.decode_jnp(packed, sbytes, dtype)
    else:
        lo, hi = decode.decode_asm(packed, sbytes, dtype, pack=cfg.pack, scale_in_asm=cfg.decode == "asm_scaled")
    o_ref[:, pl.ds(0, bkh)] = lo
    o_ref[:, pl.ds(bkh, bkh)] = hi


def dequantize_permuted(w_packed, w_scales, dtype, *, cfg: Config, interpret: bool):
    """The dequantized weight [N, K] in ``dtype``, K columns in :func:`permute_activations` order (Pallas); w_packed
    uint8 [N, K/2], w_scales uint8 E8M0 [N, K/32]; ``cfg`` fitted (:func:`fit`).

    >>> w = jnp.full((16, 16), 0x21, jnp.uint8); s = jnp.full((16, 1), 128, jnp.uint8)  # K pairs (1.0, 2.0)
    >>> cfg = Config(block_n=16, block_k=32, decode="jnp")
    >>> dequantize_permuted(w, s, jnp.float32, cfg=cfg, interpret=True)[0, 14:18].tolist()  # evens, then odds
    [1.0, 1.0, 2.0, 2.0]
    """
    n, kh = w_packed.shape
    k = 2 * kh
    bn, bk = cfg.block_n, cfg.block_k
    bkh = bk // 2
    kernel = functools.partial(_kernel, cfg=cfg, dtype=jnp.dtype(dtype))
    return tiling.triton_call(
        kernel, cfg=cfg, name=f"mxfp4_dequant_{bn}x{bk}", interpret=interpret,
        out_shape=jax.ShapeDtypeStruct((n, k), dtype), grid=(n // bn, k // bk),
        in_specs=[pl.BlockSpec((bn, bkh), lambda i, j: (i, j)),
                  pl.BlockSpec((bn, bk // formats.MX_BLOCK_SIZE), lambda i, j: (i, j))],
        out_specs=pl.BlockSpec((bn, bk), lambda i, j: (i, j)),
    )(w_packed, w_scales)


def dequantize_xla(w_packed, w_scales, dtype):
    """The dequantized weight [N, K] in ``dtype``, checkpoint order, from XLA integer/float ops (no table gather).

    >>> w = jnp.array([[0x21] * 16], jnp.uint8); s = jnp.array([[128]], jnp.uint8)
    >>> dequantize_xla(w, s, jnp.float32)[0, :2].tolist()
    [1.0, 2.0]
    """
    lo, hi = decode.decode_jnp(w_packed, w_scales, dtype)
    n, kh = w_packed.shape
    return jnp.stack([lo, hi], axis=-1).reshape(n, 2 * kh)


def pallas_act(cfg: Config, x_dtype, quantize_input: bool, m: int) -> bool:
    """Whether the call runs the Pallas activation pass (``cfg.act == "pallas"``, W4A4, bf16 / f32 x, an M that
    :func:`act_rows` tiles), else the XLA form.

    >>> c = Config(act="pallas")
    >>> [pallas_act(c, dt, True, m) for dt, m in ((jnp.bfloat16, 2048), (jnp.float16, 2048), (jnp.bfloat16, 19))]
    [True, False, False]
    """
    return (cfg.method == "pallas" and cfg.act == "pallas" and quantize_input and _bf16_or_f32(x_dtype) and
            act_rows(cfg, m) > 0)


def _bf16_or_f32(dtype) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("quantize_input", "out_dtype", "cfg", "mma_dtype", "interpret"))
def mxfp4_mm_dequant_gemm(x, w_packed, w_scales, bias, *, quantize_input, out_dtype, cfg, mma_dtype, interpret):
    """``out(linear(qdq_mxfp4(x) or x, dequantize(w)) + bias)`` through a transient dequantized weight (the
    operands as ``quark_jax.kernels.mxfp4_mm`` validates them; ``mma_dtype`` from ``pallas_triton.mma_dtype``).

    >>> w = jnp.full((16, 16), 0x22, jnp.uint8); s = jnp.full((16, 1), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm_dequant_gemm(jnp.ones((1, 32)), w, s, None, quantize_input=False, out_dtype=jnp.float32,
    ...                       cfg=Config(method="xla"), mma_dtype=jnp.float32, interpret=True)[0, :2].tolist()
    [32.0, 32.0]
    """
    if cfg.method == "xla":
        xq = (qdq_mxfp4(x) if quantize_input else x).astype(mma_dtype)
        w = lax.optimization_barrier(dequantize_xla(w_packed, w_scales, mma_dtype))
    else:
        w = dequantize_permuted(w_packed, w_scales, mma_dtype, cfg=cfg, interpret=interpret)
        if pallas_act(cfg, x.dtype, quantize_input, x.shape[0]):
            xq = prepare_activations_pallas(x, mma_dtype, cfg=cfg, interpret=interpret)
        elif cfg.act == "xla_pairs" and quantize_input and _bf16_or_f32(x.dtype):
            xq = prepare_activations_xla_pairs(x, mma_dtype, cfg.block_k)
        else:
            xq = (qdq_mxfp4(x) if quantize_input else x).astype(mma_dtype)
            xq = permute_activations(xq, cfg.block_k)
    precision = lax.Precision.HIGHEST if mma_dtype == jnp.float32 else None
    dims = (((1,), (1,)), ((), ()))
    if bias is None:
        # the GEMM accumulates in f32 and rounds once to out_dtype in its epilogue (cuBLAS's f32 compute type):
        # the reference's rounding, without an f32 [M, N] round trip through HBM
        return lax.dot_general(xq, w, dims, precision=precision, preferred_element_type=out_dtype)
    acc = lax.dot_general(xq, w, dims, precision=precision, preferred_element_type=jnp.float32)
    return (acc + bias.astype(jnp.float32)).astype(out_dtype)
