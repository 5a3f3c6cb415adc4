"""Pallas (Triton lowering) MXFP4 decode GEMM for M <= 16 in ONE kernel, the activation quant-dequant included;
its ``Config``, named candidates (``CANDIDATES``) and defaults.

``y[M, N] = out(linear(qdq_mxfp4(x) if quantize_input else x, dequantize_mxfp4(w_packed, w_scales), bias))``,
f32 accumulation, one rounding to ``out_dtype`` (the contract of ``kernels.mxfp4_mm``), for bf16 x with M <= 16.

Structure (the bf16 decode GEMM ``kernels.dense_mm``'s, in bytes): one program per (``block_n`` weight rows, K
split); each walks its K range in ``block_k`` steps with plain ``pl.ds`` loads (Triton pipelines them,
``num_stages``). A step loads a [block_n, block_k/2] packed tile (K contiguous: the checkpoint layout) and its
[block_n, block_k/32] scale bytes, decodes the two nibble planes in registers (``decode.py``) and multiplies them with
the even and odd columns of x on tensor cores: ``acc[bn, 16] += lo @ xe^T + hi @ xo^T`` (the weight the tall
operand, Hopper's register-A wgmma m64n16k16).

The activation never leaves the kernel: x's even and odd columns are read with stride-2 loads (no XLA split pass),
and for W4A4 each step quantize-dequantizes its [rows, block_k] slice of x (MX blocks of 32 lie inside a step,
``block_k`` being a multiple of 32) with the integer arithmetic of ``quant.qdq_mxfp4`` (:func:`qdq_pairs`); at
M = 1 that is one row, broadcast to the 16 rows of the MMA (the other rows' outputs are not stored). So the timed
op is one kernel (plus, with ``split_k > 1``, XLA's elementwise sum of the f32 partials, which fuses into the
consumer).

``Config.act="xla"`` instead quantize-dequantizes x in one XLA pass before the kernel (two kernels; at M = 16 the
per-step quant-dequant of 16 rows costs more issue slots than the weight decode).

Decodes (``Config.decode``): ``"asm"``: PTX on 2 (``pack=2``) or 4 (``pack=4``) packed bytes, the E8M0 scale
multiplied per element pair outside the asm; ``"asm_scaled"``: the scale multiplied inside the asm (one fewer
broadcast pass); both times two bf16x2 multiplies per pair, or one with ``fold`` (the decode's 2**126 folded into
the scale: exact only when every scale byte is <= 128, which a load-time check establishes; ``fold`` is the
caller's claim). ``"jnp"``: the portable decode (interpret mode, tests).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quark_jax import formats
from quark_jax.kernels import _dispatch, _validate, tiling
from quark_jax.kernels.mxfp4_mm import decode
from quark_jax.quant import qdq_mxfp4

MAX_M = 16
DECODES = ("asm", "asm_scaled", "jnp")
ACTS = ("kernel", "xla")
_ROWS = 16  # the MMA's row tile (x^T is the [block_k/2, 16] right operand)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One tiling of the decode GEMM: ``block_n`` weight rows and ``block_k`` K elements (``block_k / 2`` packed
    bytes) per step, ``split_k`` programs per N tile, Triton's warps / stages, the decode and its PTX ``pack``.

    >>> Config(block_n=64, block_k=512).step_bytes()
    16384
    """

    block_n: int = 64
    block_k: int = 512  # a multiple of 32 (one MX block); block_k / 2 packed bytes per row and step
    split_k: int = 0  # 0: automatic (programs ~ AUTO_PROGRAMS); else programs per N tile
    num_warps: int = 4
    num_stages: int = 3
    decode: str = "asm_scaled"  # "asm" / "asm_scaled" (PTX, sm90+) or "jnp"
    pack: int = 4  # packed bytes per PTX instance (2 or 4)
    act: str = "kernel"  # W4A4: x's quant-dequant in each K step ("kernel") or one XLA pass before it ("xla")

    def __post_init__(self):
        tiling.check_powers_of_two(self, ("block_n", "block_k", "num_warps"))
        if self.block_n < 16 or self.block_k < 32:
            raise ValueError(f"Config: block_n >= 16 and block_k >= 32 needed, got {self.block_n}, {self.block_k}")
        if self.decode not in DECODES:
            raise ValueError(f"Config.decode: expected one of {DECODES}, got {self.decode!r}")
        if self.pack not in (2, 4):
            raise ValueError(f"Config.pack: expected 2 or 4, got {self.pack}")
        if self.act not in ACTS:
            raise ValueError(f"Config.act: expected one of {ACTS}, got {self.act!r}")
        if self.split_k < 0 or self.num_stages < 1:
            raise ValueError(f"Config: split_k >= 0 and num_stages >= 1 needed, got {self.split_k}, "
                             f"{self.num_stages}")

    def step_bytes(self) -> int:
        """Packed weight bytes one program loads per K step."""
        return self.block_n * self.block_k // 2


AUTO_PROGRAMS = 264  # two programs per SM of an H100 / H200 (132 SMs), as dense_mm's automatic split

# Named candidates for one GPU sweep (benchmarks/sweep_mxfp4_decode.py); benchmarks/NOTES.md "Session 9, helper
# mx4dec" gives each one's SASS (registers, instructions per packed byte) and predicted time. A 16 KB step is
# dense_mm's streaming step (bn 128 x bk 64 bf16) in bytes.
CANDIDATES = {
    "n64k512": Config(block_n=64, block_k=512),  # 16 KB step, pack 4, scale in the asm, K split to ~264 programs
    "n64k512_s1": Config(block_n=64, block_k=512, split_k=1),  # no K split: no XLA sum of partials
    "n64k512_p2": Config(block_n=64, block_k=512, decode="asm", pack=2),  # the fused Triton kernel's decode
    "n64k256": Config(block_n=64, block_k=256, num_stages=4),  # 8 KB step, ~114 registers: 4 programs per SM
    "n128k256": Config(block_n=128, block_k=256),  # 16 KB step, x's share per weight byte halved
    "n128k256_w8": Config(block_n=128, block_k=256, num_warps=8),  # two warpgroups, ~114 registers
    "n64k512_xq": Config(block_n=64, block_k=512, act="xla"),  # W4A4 with x's quant-dequant in XLA (M > 1)
    "n128k256_xq": Config(block_n=128, block_k=256, act="xla"),
}
DEFAULT = CANDIDATES["n64k512"]


def fit(cfg: Config, m: int, k: int, n: int) -> Config:
    """``cfg`` fitted to the shape: ``block_n`` divides N (halved down to 16), the K split (automatic with
    ``split_k=0``: doubling up to 8 while fewer than ``AUTO_PROGRAMS`` programs) divides K into whole steps,
    ``block_k`` divides K / split_k (halved down to 32).

    >>> fit(Config(block_n=64, block_k=512), 1, 4096, 4096).split_k  # 64 N tiles x 8 = 512 programs
    8
    """
    if n % 16 or k % 32:
        raise ValueError(f"mxfp4 decode GEMM: N = {n} must be a multiple of 16 and K = {k} of 32")
    bn = cfg.block_n
    while n % bn:
        bn //= 2
    splits = cfg.split_k
    if splits == 0:
        splits = 1
        while splits < 8 and (n // bn) * splits < AUTO_PROGRAMS and (k // (2 * splits)) % cfg.block_k == 0:
            splits *= 2
    while splits > 1 and (k // splits) % 32:
        splits //= 2
    bk = min(cfg.block_k, tiling.pow2_floor(k // splits))
    while (k // splits) % bk:
        bk //= 2
    return dataclasses.replace(cfg, block_n=bn, block_k=bk, split_k=splits)


_F32_EXP_MASK = 0x7F800000
_EVEN_ROUND_ADD = 1 << 21  # quant.mxfp4: "even" rounding of the block amax
_SIGN = 0x80000000


def _f32(bits):
    return lax.bitcast_convert_type(bits, jnp.float32)


def _u32(v):
    return lax.bitcast_convert_type(v, jnp.uint32)


def _rne_to_e2m1(a):
    """|v| (float32, already <= 6) rounded half-to-even to the E2M1 grid: adding 2**22 / 2**23 / 2**24 rounds to a
    multiple of 0.5 / 1 / 2 (float32 addition rounds to nearest even), subtracting gives it back exactly."""
    magic = jnp.where(a < 2.0, jnp.float32(2.0 ** 22), jnp.where(a < 4.0, jnp.float32(2.0 ** 23),
                                                                  jnp.float32(2.0 ** 24)))
    return (a + magic) - magic


def qdq_pairs(xe, xo):
    """``quant.qdq_mxfp4`` of the rows whose even and odd columns are ``xe`` and ``xo`` (float32 [rows, K/2], K a
    multiple of 32: MX block b is columns 16b..16b+15 of both), in ops the Triton lowering has (no round, no
    copysign): the same scale byte (amax "even"-rounded by its bit pattern), E2M1 rounding half to even and the
    same dequantization, so the result equals the reference bit for bit on finite input.

    >>> x = jnp.concatenate([jnp.array([0.25, 0.75, 1.25, 1.75, 5.0]), jnp.zeros(27)])[None]
    >>> [v.tolist()[0][:3] for v in qdq_pairs(x[:, 0::2], x[:, 1::2])]
    [[0.0, 1.0, 4.0], [1.0, 2.0, 0.0]]
    """
    rows, half = xe.shape
    nb = half // 16
    ae = jnp.abs(xe).reshape(rows, nb, 16)
    ao = jnp.abs(xo).reshape(rows, nb, 16)
    amax = jnp.max(jnp.maximum(ae, ao), axis=2)  # [rows, nb]
    biased = (((_u32(amax) + jnp.uint32(_EVEN_ROUND_ADD)) & jnp.uint32(_F32_EXP_MASK)) >> 23).astype(jnp.int32)
    s = jnp.clip(biased - 2, 0, 254)  # E8M0 byte
    inv = _f32(jnp.clip(254 - s, 0, 254).astype(jnp.uint32) << 23)[:, :, None]  # 2**(127 - s)
    sc = _f32(jnp.maximum(s, 1).astype(jnp.uint32) << 23)[:, :, None]  # 2**(s - 127), s >= 1
    half_s0 = jnp.where(s == 0, jnp.float32(0.5), jnp.float32(1.0))[:, :, None]

    def one(v):
        vb = v.reshape(rows, nb, 16)
        a = jnp.minimum(jnp.abs(vb * inv), jnp.float32(formats.E2M1_MAX))
        r = _rne_to_e2m1(a) * sc * half_s0
        return _f32(_u32(r) | (_u32(vb) & jnp.uint32(_SIGN))).reshape(rows, half)

    return one(xe), one(xo)


def _kernel(x_ref, w_ref, s_ref, *rest, m: int, k: int, cfg: Config, quantize_input: bool, fold: bool,
            has_bias: bool, partial: bool, out_dtype, interpret: bool):
    b_ref = rest[0] if has_bias else None
    o_ref = rest[-1]
    bn, bkh = cfg.block_n, cfg.block_k // 2
    bks = cfg.block_k // formats.MX_BLOCK_SIZE
    pid_n, split = pl.program_id(0), pl.program_id(1)
    c0 = pl.multiple_of(pid_n * bn, bn)
    kh_len = k // 2 // cfg.split_k  # packed bytes per split
    steps = kh_len // bkh
    x_rows = 1 if m == 1 else _ROWS
    row_mask = None
    if 1 < m < _ROWS:
        row_mask = lax.broadcasted_iota(jnp.int32, (_ROWS, bkh), 0) < m
    dims = (((1,), (1,)), ((), ()))
    kn_dims = (((1,), (0,)), ((), ()))

    def load_x(j0, parity):
        if interpret:  # interpret mode has no strided loads: the contiguous slice, then its parity's columns
            rows = tiling.masked_load(x_ref.at[pl.ds(0, x_rows), pl.ds(2 * j0, 2 * bkh)], None if row_mask is None
                                      else jnp.repeat(row_mask, 2, axis=1))
            return rows.reshape(x_rows, bkh, 2)[:, :, parity].astype(jnp.float32)
        ref = x_ref.at[pl.ds(0, x_rows), pl.ds(2 * j0 + parity, bkh, stride=2)]
        return tiling.masked_load(ref, row_mask).astype(jnp.float32)

    def body(i, acc):
        j0 = pl.multiple_of(split * kh_len + i * bkh, bkh)  # first packed byte (= x pair) of the step
        packed = w_ref[pl.ds(c0, bn), pl.ds(j0, bkh)]
        sbytes = s_ref[pl.ds(c0, bn), pl.ds(j0 // 16, bks)]
        if cfg.decode == "jnp":
            lo, hi = decode.decode_jnp(packed, sbytes, jnp.bfloat16)
        else:
            lo, hi = decode.decode_asm(packed, sbytes, jnp.bfloat16, pack=cfg.pack,
                                       scale_in_asm=cfg.decode == "asm_scaled", fold=fold)
        xe, xo = load_x(j0, 0), load_x(j0, 1)
        if quantize_input:
            xe, xo = qdq_pairs(xe, xo)
        xe, xo = xe.astype(jnp.bfloat16), xo.astype(jnp.bfloat16)  # exact: bf16 x, or qdq'd values
        if x_rows == 1:  # M = 1: the row as a [bkh, 16] column block (rows 1.. of y computed, never stored)
            xe, xo = (jnp.broadcast_to(v.reshape(bkh, 1), (bkh, _ROWS)) for v in (xe, xo))
            acc += lax.dot_general(lo, xe, kn_dims, preferred_element_type=jnp.float32)
            acc += lax.dot_general(hi, xo, kn_dims, preferred_element_type=jnp.float32)
            return acc
        acc += lax.dot_general(lo, xe, dims, preferred_element_type=jnp.float32)
        acc += lax.dot_general(hi, xo, dims, preferred_element_type=jnp.float32)
        return acc

    acc = lax.fori_loop(0, steps, body, jnp.zeros((bn, _ROWS), jnp.float32)).T  # [16, bn]
    from jax.experimental.pallas import triton as plgpu

    out_mask = None
    if m < _ROWS:
        out_mask = lax.broadcasted_iota(jnp.int32, (_ROWS, bn), 0) < m
    if partial:
        plgpu.store(o_ref.at[split, pl.ds(0, _ROWS), pl.ds(c0, bn)], acc, mask=out_mask)
        return
    if has_bias:
        acc = acc + b_ref[pl.ds(c0, bn)].astype(jnp.float32)[None, :]
    plgpu.store(o_ref.at[pl.ds(0, _ROWS), pl.ds(c0, bn)], acc.astype(out_dtype), mask=out_mask)


def supported(x_dtype, m: int, k: int, n: int) -> bool:
    """Whether :func:`mxfp4_mm_gemv` takes the operands: bf16 x, 1 <= M <= 16, N a multiple of 16, K of 32.

    >>> supported(jnp.bfloat16, 1, 4096, 14336), supported(jnp.float32, 1, 4096, 14336)
    (True, False)
    """
    return jnp.dtype(x_dtype) == jnp.bfloat16 and 1 <= m <= MAX_M and n % 16 == 0 and k % 32 == 0


def mxfp4_mm_gemv(x, w_packed, w_scales, bias=None, *, quantize_input=True, out_dtype=None, config=None,
                  fold: bool = False, interpret=None):
    """MXFP4 decode GEMM as one Pallas-Triton kernel; the contract of ``kernels.mxfp4_mm`` for bf16 x, M <= 16.

    Args:
      x: [M, K] bf16, 1 <= M <= 16, K a multiple of 32.
      w_packed: [N, K/2] uint8 (element 2j in the low nibble); N a multiple of 16.
      w_scales: [N, K/32] uint8 E8M0 bytes.
      bias: optional [N], added in f32.
      quantize_input: W4A4 (MXFP4 quant-dequant of x inside the kernel) or weight-only.
      out_dtype: default bf16. config: a :class:`Config` (fitted) or a name of ``CANDIDATES``; None: ``DEFAULT``.
      fold: the caller checked every scale byte <= ``decode.FOLD_MAX_SCALE_BYTE``: the PTX decode may fold its
        2**126 into the scale (one bf16x2 multiply per element pair fewer; WRONG for larger bytes).
      interpret: Pallas interpret mode (None: unless on a CUDA GPU); it uses the portable decode.

    >>> w = jnp.full((16, 16), 0x22, jnp.uint8); s = jnp.full((16, 1), 127, jnp.uint8)  # every weight 1.0
    >>> mxfp4_mm_gemv(jnp.ones((1, 32), jnp.bfloat16), w, s, out_dtype=jnp.float32)[0, :2].tolist()
    [32.0, 32.0]
    """
    m, k = x.shape
    n = w_packed.shape[0]
    if not supported(x.dtype, m, k, n):
        raise ValueError(f"mxfp4_mm_gemv: needs bf16 x with 1 <= M <= {MAX_M}, N % 16 == 0, K % 32 == 0; got "
                         f"{x.dtype} x of shape {tuple(x.shape)}, N = {n}")
    _validate.packed_shape("w_packed", w_packed, (n, k // 2), k)
    _validate.packed_shape("w_scales", w_scales, (n, k // formats.MX_BLOCK_SIZE), k)
    out_dtype = jnp.dtype(jnp.bfloat16 if out_dtype is None else out_dtype)
    interpret = _dispatch.pallas_interpret() if interpret is None else bool(interpret)
    if isinstance(config, str):
        config = CANDIDATES[config]
    cfg = fit(DEFAULT if config is None else config, m, k, n)
    if interpret:
        cfg = dataclasses.replace(cfg, decode="jnp")  # the inline PTX needs an sm90+ GPU
    if quantize_input and cfg.act == "xla":  # one fused XLA pass; its bf16 output is exact (E2M1 * 2**k values)
        x, quantize_input = qdq_mxfp4(x), False
    return _gemv_jit(x, w_packed, w_scales, bias, quantize_input=bool(quantize_input), out_dtype=out_dtype,
                     cfg=cfg, fold=bool(fold) and cfg.decode != "jnp", interpret=interpret)


@functools.partial(jax.jit, static_argnames=("quantize_input", "out_dtype", "cfg", "fold", "interpret"))
def _gemv_jit(x, w_packed, w_scales, bias, *, quantize_input, out_dtype, cfg, fold, interpret):
    m, k = x.shape
    n = w_packed.shape[0]
    partial = cfg.split_k > 1
    has_bias = bias is not None and not partial
    out_shape = (jax.ShapeDtypeStruct((cfg.split_k, m, n), jnp.float32) if partial
                 else jax.ShapeDtypeStruct((m, n), out_dtype))
    kernel = functools.partial(_kernel, m=m, k=k, cfg=cfg, quantize_input=quantize_input, fold=fold,
                               has_bias=has_bias, partial=partial, out_dtype=out_dtype, interpret=interpret)
    operands = [x, w_packed, w_scales] + ([bias] if has_bias else [])
    name = f"mxfp4_gemv_{cfg.block_n}x{cfg.block_k}_s{cfg.split_k}_{cfg.decode}{cfg.pack}"
    y = tiling.triton_call(kernel, cfg=cfg, name=name, interpret=interpret, out_shape=out_shape,
                           grid=(n // cfg.block_n, cfg.split_k))(*operands)
    return tiling.finish_splits(y, bias, out_dtype) if partial else y


__all__ = ["mxfp4_mm_gemv", "qdq_pairs", "supported", "Config", "CANDIDATES", "DEFAULT", "fit", "MAX_M"]
