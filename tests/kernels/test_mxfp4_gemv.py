"""The one-kernel MXFP4 decode GEMM (``mxfp4_mm.pallas_triton_gemv``, M <= 16, bf16 x, activation quant-dequant
inside the kernel) against the XLA reference (bit for bit on data whose f32 sums are exact in any order), against
float64 numpy over every code and every E8M0 scale byte, and its in-kernel quant-dequant against
``quant.qdq_mxfp4``. On CPU the kernel runs in interpret mode with the portable decode; the CUDA lowering of every
named candidate is checked without a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy as ref
from quark_jax import quant
from quark_jax.kernels.mxfp4_mm import pallas_triton_gemv as gemv
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla

G = gemv.Config


def _exact_data(rng, m, k, n):
    """x on a 1/8 grid times block powers 2**-1..2**1 (bf16-exact), random weight bytes (every code in both
    nibbles), scale bytes 125..128, bias on a 1/8 grid: every partial sum is exact in f32 in any order (K <= 512)."""
    x = rng.integers(-32, 33, (m, k)) / 8 * 2.0 ** rng.integers(-1, 2, (m, k // 32)).repeat(32, axis=1)
    wp = jnp.asarray(rng.integers(0, 256, (n, k // 2)), jnp.uint8)
    ws = jnp.asarray(rng.integers(125, 129, (n, k // 32)), jnp.uint8)
    bias = jnp.asarray(rng.integers(-40, 41, n) / 8, jnp.float32)
    return jnp.asarray(x, jnp.bfloat16), wp, ws, bias


@pytest.mark.parametrize("m,k,n,cfg", [
    (1, 512, 64, G(block_n=32, block_k=128)),  # M = 1 (one x row broadcast to the MMA tile), 4 K steps
    (3, 256, 48, G(block_n=16, block_k=64, split_k=2)),  # ragged M, K split (f32 partials), 3 N tiles
    (16, 256, 32, G(block_n=32, block_k=256, split_k=1)),  # a full row tile, one K step
    (7, 384, 32, None),  # the default config fitted to an odd K (3 * 128)
    (2, 256, 64, G(block_n=64, block_k=128, decode="asm", pack=2)),  # on a GPU: the pack-2 PTX, scale outside
])
@pytest.mark.parametrize("quantize_input", [True, False])
def test_equals_xla_reference_bit_for_bit(m, k, n, cfg, quantize_input):
    rng = np.random.default_rng(m * 1000 + k)
    x, wp, ws, bias = _exact_data(rng, m, k, n)
    for b, fold in ((bias, False), (None, True)):  # fold: scale bytes are <= 128 here (on a GPU: the folded PTX)
        got = gemv.mxfp4_mm_gemv(x, wp, ws, b, quantize_input=quantize_input, out_dtype=jnp.float32, config=cfg,
                                 fold=fold)
        want = mxfp4_mm_xla(x, wp, ws, b, quantize_input=quantize_input, out_dtype=jnp.float32)
        assert got.shape == (m, n)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    got = gemv.mxfp4_mm_gemv(x, wp, ws, bias, quantize_input=quantize_input, config=cfg)  # bf16 output
    want = mxfp4_mm_xla(x, wp, ws, bias, quantize_input=quantize_input)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_every_code_in_both_nibbles_and_every_scale_byte():
    """Weight rows with one scale byte each (0..254), every byte value in every row: float64 numpy within the f32
    accumulation bound (W4A16: bf16 x; the W4A4 path is the same weight decode)."""
    k, n = 512, 256
    rng = np.random.default_rng(5)
    rows = np.stack([rng.permutation(256) for _ in range(n)]).astype(np.uint8)
    sbytes = np.concatenate([np.arange(255), [127]]).astype(np.uint8)
    big = sbytes[:, None] >= 253  # E2M1 * 2**(s-127) overflows bf16 past 1.5 * 2**127 there: magnitudes <= 1.5
    mags = rows & 0x77
    rows = np.where(big, (rows & 0x88) | np.minimum(mags & 0x7, 3) | (np.minimum(mags >> 4, 3) << 4),
                    rows).astype(np.uint8)
    ws = np.repeat(sbytes[:, None], k // 32, axis=1)
    w64 = ref.mxfp4_dequantize(rows, ws)
    checked = np.zeros(n, bool)
    for x_exp in (-60, 60):  # tiny x for the large weights, huge x for the small ones
        x = jnp.asarray(rng.standard_normal((2, k)) * 2.0 ** x_exp, jnp.bfloat16)
        got = np.asarray(gemv.mxfp4_mm_gemv(x, jnp.asarray(rows), jnp.asarray(ws), quantize_input=False,
                                            out_dtype=jnp.float32, config=G(block_n=64, block_k=128)), np.float64)
        x64 = np.asarray(x, np.float64)
        want, mag = x64 @ w64.T, np.abs(x64) @ np.abs(w64).T
        cols = (mag.min(0) > 2.0 ** -100) & (mag.max(0) < 2.0 ** 100)
        tol = mag * 2.0 ** -14 + np.abs(x64).sum(1, keepdims=True) * 6 * 2.0 ** -126  # f32 sums; flushed subnormals
        bad = np.abs(got - want) > tol
        assert np.isfinite(got[:, cols]).all() and not bad[:, cols].any(), np.argwhere(bad[:, cols])[:5]
        checked |= cols
    assert checked.all(), np.flatnonzero(~checked)


def test_in_kernel_activation_qdq_equals_quant_qdq_mxfp4():
    """``qdq_pairs`` (the kernel's prologue arithmetic) equals ``quant.qdq_mxfp4`` bit for bit: random blocks over
    a wide exponent range, every rounding tie of the E2M1 grid, saturation, zero blocks and blocks whose scale
    byte clamps at 0 (amax < 2**-125)."""
    rng = np.random.default_rng(3)
    blocks = [rng.standard_normal((6, 32)) * 2.0 ** rng.integers(-140, 120, (6, 1)),
              np.tile([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, -0.25, -2.5, -5.0, 0.0, -0.0, 4.5, 1.0],
                      2)[None] * 2.0 ** np.arange(-3, 3)[:, None],
              np.zeros((1, 32)), rng.standard_normal((2, 32)) * 2.0 ** -133]
    x = np.concatenate(blocks).reshape(-1, 96).astype(np.float32)  # 5 rows of 3 blocks
    x = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    want = np.asarray(quant.qdq_mxfp4(jnp.asarray(x)))
    ge, go = gemv.qdq_pairs(jnp.asarray(x[:, 0::2]), jnp.asarray(x[:, 1::2]))
    got = np.stack([np.asarray(ge), np.asarray(go)], axis=-1).reshape(x.shape)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_config_fit_candidates_and_errors():
    assert gemv.fit(G(block_n=64, block_k=512), 1, 4096, 14336).split_k == 2  # 224 tiles -> 448 programs
    assert gemv.fit(G(block_n=64, block_k=512), 1, 14336, 4096).split_k == 4  # 8 would split a 512-K step
    c = gemv.fit(G(block_n=128, block_k=1024, split_k=3), 1, 96, 48)
    assert (c.block_n, c.block_k, c.split_k) == (16, 32, 3)
    for name, cfg in gemv.CANDIDATES.items():
        f = gemv.fit(cfg, 1, 4096, 4096)
        assert (4096 // 2 // f.split_k) % (f.block_k // 2) == 0, name
    with pytest.raises(ValueError, match="decode"):
        G(decode="ptx")
    with pytest.raises(ValueError, match="pack"):
        G(pack=8)
    x = jnp.ones((17, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="M <= 16"):
        gemv.mxfp4_mm_gemv(x, jnp.zeros((16, 32), jnp.uint8), jnp.zeros((16, 2), jnp.uint8))
    assert not gemv.supported(jnp.float16, 1, 64, 16) and gemv.supported(jnp.bfloat16, 16, 64, 16)


@pytest.mark.parametrize("quantize_input", [True, False])
def test_candidates_lower_for_cuda(quantize_input):
    """Every named candidate's Pallas -> Triton lowering succeeds for CUDA (strided x loads, inline PTX decode,
    the in-kernel quant-dequant), without a GPU; not the Triton -> PTX stage."""
    args = (jax.ShapeDtypeStruct((1, 4096), jnp.bfloat16), jax.ShapeDtypeStruct((1024, 2048), jnp.uint8),
            jax.ShapeDtypeStruct((1024, 128), jnp.uint8))
    for name in gemv.CANDIDATES:
        cfg = gemv.fit(gemv.CANDIDATES[name], 1, 4096, 1024)
        fn = jax.jit(lambda x, w, s: gemv._gemv_jit(x, w, s, None, quantize_input=quantize_input,
                                                    out_dtype=jnp.bfloat16, cfg=cfg, fold=True, interpret=False))
        text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert "xla.gpu.triton" in text, name


def test_fused_entry_runs_a_decode_gemm_config_and_falls_back():
    """``pallas_triton.mxfp4_mm_pallas`` with a ``pallas_triton_gemv.Config`` (what a device table may name at
    M <= 16) runs the decode GEMM on bf16 x, and the fused kernel on operands it does not take (f32 x, M > 16)."""
    from quark_jax.kernels.mxfp4_mm import pallas_triton

    rng = np.random.default_rng(9)
    x, wp, ws, bias = _exact_data(rng, 2, 256, 32)
    cfg = G(block_n=16, block_k=64)
    assert isinstance(pallas_triton.default_config(1, 256, 32, table={"16": cfg}), G)
    got = pallas_triton.mxfp4_mm_pallas(x, wp, ws, bias, config=cfg, out_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(mxfp4_mm_xla(x, wp, ws, bias, out_dtype=jnp.float32)))
    x32 = jnp.concatenate([x] * 9).astype(jnp.float32)  # f32 and M = 18: the fused kernel
    got = pallas_triton.mxfp4_mm_pallas(x32, wp, ws, bias, config=cfg)
    assert got.dtype == jnp.float32 and got.shape == (18, 32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(mxfp4_mm_xla(x32, wp, ws, bias)))
