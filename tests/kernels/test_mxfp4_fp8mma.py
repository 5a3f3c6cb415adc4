"""The W4A4 MXFP4 decode GEMM on FP8 MMAs (``mxfp4_mm.pallas_triton_fp8mma``): the E2M1 -> E4M3 bit placement for
every code of both nibbles (jnp form and the numpy model of the PTX word formulas) against ml_dtypes' E4M3 values,
the kernel (interpret mode, jnp decode) against float64 numpy and the XLA reference on ragged M 1..16, K splits,
bias, both x operand builds, and the scale range (its exact edges, and loud failure beyond); the CUDA lowering of
every named candidate without a GPU.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import reference_numpy as ref
from kernels.base import triton_ir
from quark_jax.kernels.mxfp4_mm import pallas_triton_fp8mma as f8
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla

C = f8.Config
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def test_e4m3_bytes_are_e2m1_times_2_pow_minus_6_for_every_code_and_nibble():
    """Every packed byte (all 16 codes in each nibble): the E4M3 value of the low / high plane byte is the nibble's
    E2M1 value times 2**-6 exactly (the subnormal code 1 included), by the jnp form and by the word model."""
    packed = np.arange(256, dtype=np.uint8)
    want_lo, want_hi = E2M1[packed & 15] * 2.0 ** -6, E2M1[packed >> 4] * 2.0 ** -6
    for lo, hi in (tuple(np.asarray(v) for v in f8.e4m3_planes_jnp(jnp.asarray(packed))),
                   f8.e4m3_planes_words_np(packed)):
        got_lo = lo.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
        got_hi = hi.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
        np.testing.assert_array_equal(got_lo, want_lo)
        np.testing.assert_array_equal(got_hi, want_hi)
        assert np.array_equal(np.signbit(got_lo), np.signbit(want_lo))  # -0 codes (8) keep their sign
    codes = np.arange(16, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(f8.e4m3_bytes(jnp.asarray(codes))).view(ml_dtypes.float8_e4m3fn)
                                  .astype(np.float64), E2M1 * 2.0 ** -6)


def _exact_data(rng, m, k, n):
    """bf16 x on a 1/8 grid times block powers 2**-1..2**1, random weight bytes (every code in both nibbles),
    scale bytes 125..128, bias on a 1/8 grid: every f32 partial sum exact in any order (K <= 1024)."""
    x = rng.integers(-32, 33, (m, k)) / 8 * 2.0 ** rng.integers(-1, 2, (m, k // 32)).repeat(32, axis=1)
    wp = rng.integers(0, 256, (n, k // 2)).astype(np.uint8)
    ws = rng.integers(125, 129, (n, k // 32)).astype(np.uint8)
    bias = rng.integers(-40, 41, n) / 8
    return jnp.asarray(x, jnp.bfloat16), wp, ws, bias


def _ref64(x, wp, ws, bias=None):
    y = ref.mxfp4_qdq(np.asarray(x, np.float32)).astype(np.float64) @ ref.mxfp4_dequantize(wp, ws).T
    return y if bias is None else y + bias


@pytest.mark.parametrize("m,k,n,cfg", [
    (1, 1024, 64, C(block_n=32, cols=16, split_k=1)),  # M = 1: 16 MX blocks per group, 2 groups per program
    (1, 1024, 32, C(block_n=16, cols=16, split_k=2, xdiag="hbm")),  # K split, x's diagonal from the prologue
    (3, 512, 48, C(block_n=16, cols=16, unroll=2)),  # ragged M (4 padded rows x 4 blocks), 3 N tiles
    (16, 256, 32, C(block_n=32, cols=32, unroll=2, split_k=2)),  # 16 rows x 2 blocks, unrolled, split
    (9, 192, 32, None),  # the default fitted to K = 3 * 64 (2-block groups, rows padded to 16)
    (1, 64, 16, None),  # the smallest K: x padded to 8 rows so that 8 x 2 blocks fill the MMA's 16 columns
    (1, 1024, 32, C(block_n=16, split_k=2, xq="kernel")),  # x quantized in the kernel, K split
    (1, 512, 64, C(block_n=32, split_k=1, xq="kernel")),  # ... one group, bias fused
    (2, 512, 32, C(block_n=16, mma="promote")),  # the two planes' dots promoted to f32 separately
])
def test_equals_float64_and_xla_reference(m, k, n, cfg):
    rng = np.random.default_rng(m * 1000 + k + n)
    x, wp, ws, bias = _exact_data(rng, m, k, n)
    b = jnp.asarray(bias, jnp.float32)
    got = f8.mxfp4_mm_fp8mma(x, jnp.asarray(wp), jnp.asarray(ws), b, out_dtype=jnp.float32, config=cfg,
                             interpret=True)
    np.testing.assert_array_equal(np.asarray(got), _ref64(x, wp, ws, bias))
    want = mxfp4_mm_xla(x, jnp.asarray(wp), jnp.asarray(ws), b)  # bf16 out, one rounding
    np.testing.assert_array_equal(np.asarray(f8.mxfp4_mm_fp8mma(x, jnp.asarray(wp), jnp.asarray(ws), b, config=cfg,
                                                                interpret=True)).astype(np.float32),
                                  np.asarray(want).astype(np.float32))


def _scaled_data(rng, m, k, n, total, sx_choices):
    """x already on the MXFP4 grid (f32): block j of row r holds E2M1 values (one of them +-6, so that the
    quantizer recovers the byte) times 2**(sx - 127), sx drawn from ``sx_choices``; the weight's scale bytes are
    ``total - sx`` of the same block (the rows share x's bytes), so every block contributes at the same magnitude
    2**(total - 254) and a wrong scale in any block shows."""
    nb = k // 32
    row = rng.choice(np.asarray(sx_choices), nb)
    row[:len(sx_choices)] = sx_choices  # every choice appears
    sx = np.broadcast_to(row, (m, nb))
    vals = E2M1[rng.integers(0, 16, (m, k))].reshape(m, nb, 32)
    vals[:, :, 5] = np.where(rng.integers(0, 2, (m, nb)) == 1, 6.0, -6.0)
    x = (vals * np.ldexp(1.0, sx - 127)[:, :, None]).reshape(m, k)
    ws = np.broadcast_to(total - sx[0], (n, nb)).astype(np.uint8)
    wp = rng.integers(0, 256, (n, k // 2)).astype(np.uint8)
    return np.asarray(x, np.float32), wp, ws


@pytest.mark.parametrize("total,sx_choices", [
    (130, [2, 3, 60, 127, 128]),  # weight bytes 128..2: products 2**-124 * E2M1^2, the normal floor
    (250, [2, 100, 127, 200, 246, 248]),  # weight bytes 248..2: the largest exact scale byte on both sides
    (360, [112, 127, 200, 248]),  # products up to 36 * 2**106
])
@pytest.mark.parametrize("xq", ["xla", "kernel"])
def test_scale_range_edges(total, sx_choices, xq):
    """Scale bytes at the edges of the exact range (2 and 248 on both operands): equal to float64 up to f32
    summation (the blocks' magnitudes are equal, so a block with a wrong scale would be off by its whole share)."""
    rng = np.random.default_rng(total)
    m, k, n = (2 if xq == "xla" else 1), 1024, 32
    x, wp, ws = _scaled_data(rng, m, k, n, total, sx_choices)
    assert np.array_equal(ref.mxfp4_qdq(x), x)  # x is its own quant-dequant: the bytes below are x's scales
    _, s = ref.mxfp4_quantize(x)
    assert set(np.unique(s).tolist()) == set(sx_choices)
    assert set(np.unique(ws).tolist()) == {total - v for v in sx_choices}
    terms = x.astype(np.float64)[:, None, :] * ref.mxfp4_dequantize(wp, ws)[None, :, :]
    want, mag = terms.sum(-1), np.abs(terms).sum(-1)
    got = np.asarray(f8.mxfp4_mm_fp8mma(jnp.asarray(x), jnp.asarray(wp), jnp.asarray(ws),
                                        config=C(block_n=16, xq=xq), interpret=True), np.float64)
    assert np.all(np.abs(got - want) <= mag * (k + 2) * 2.0 ** -24)
    xla = np.asarray(mxfp4_mm_xla(jnp.asarray(x), jnp.asarray(wp), jnp.asarray(ws)), np.float64)
    assert np.all(np.abs(got - xla) <= mag * 2 * (k + 2) * 2.0 ** -24)


def test_scale_bytes_beyond_the_exact_range_are_loud():
    """A weight scale byte above ``MAX_SCALE_BYTE`` gives a non-finite output (the factor is +inf), not a
    silently wrong finite number."""
    rng = np.random.default_rng(5)
    x, wp, ws, _ = _exact_data(rng, 1, 512, 16)
    ws[3, 7] = f8.MAX_SCALE_BYTE + 1
    got = np.asarray(f8.mxfp4_mm_fp8mma(x, jnp.asarray(wp), jnp.asarray(ws), out_dtype=jnp.float32, interpret=True))
    assert not np.isfinite(got[0, 3]) and np.isfinite(np.delete(got, 3, axis=1)).all()


def test_in_kernel_quantization_equals_quantize_mxfp4():
    """``quantize_pairs_e4m3`` (the in-kernel x quantization) gives quantize_mxfp4's scale bytes and, as E4M3
    values times 2**6, its E2M1 codes' values, on every rounding tie of the E2M1 grid, saturation, zero blocks and
    scale bytes 2..248."""
    rng = np.random.default_rng(3)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 6.5, 0.1, 0.0, 6.0])
    blocks = []
    for sx in (2, 3, 100, 126, 127, 128, 200, 248):
        v = rng.choice(np.concatenate([ties, -ties]), 32)
        v[7] = 6.0  # the amax: byte sx
        blocks.append(v * 2.0 ** (sx - 127))
    blocks.append(np.zeros(32))
    blocks.append(rng.normal(size=32) * 3.7)
    x = np.concatenate(blocks)[None].astype(np.float32)
    qe, qo, s = f8.quantize_pairs_e4m3(jnp.asarray(x[:, 0::2]), jnp.asarray(x[:, 1::2]))
    packed, want_s = ref.mxfp4_quantize(x)
    np.testing.assert_array_equal(np.asarray(s), want_s.astype(np.int64))
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(1, -1)
    got = np.stack([np.asarray(qe), np.asarray(qo)], axis=-1).reshape(1, -1).astype(np.float64) * 64
    np.testing.assert_array_equal(np.abs(got), np.abs(E2M1[codes]))
    nz = E2M1[codes] != 0
    np.testing.assert_array_equal(np.sign(got[nz]), np.sign(E2M1[codes][nz]))
    np.testing.assert_array_equal(np.asarray(qe).astype(ml_dtypes.float8_e4m3fn).astype(np.float32), np.asarray(qe))


def test_block_diagonal_and_prologue_layouts():
    """The in-kernel block-diagonal operand equals the prologue's stored one (``xdiag="hbm"``), row by row, and
    ``fx`` holds 2**(sx - 121) in the (group, row, block) order the kernel reads."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 256)), jnp.float32)
    for mp, bks in ((4, 4), (16, 2)):
        xe, xo, fx = f8.prologue(x, mp=mp, bks=bks, xdiag="kernel")
        de, do, fx2 = f8.prologue(x, mp=mp, bks=bks, xdiag="hbm")
        gh = 16 * bks
        for g in range(256 // 2 // gh):
            for plane, stored in ((xe, de), (xo, do)):
                np.testing.assert_array_equal(np.asarray(f8.block_diagonal(plane[:, g * gh:(g + 1) * gh], bks)),
                                              np.asarray(stored[:, g * gh:(g + 1) * gh]))
        _, s = ref.mxfp4_quantize(np.asarray(x))
        s = np.pad(s.astype(np.int64), ((0, mp - 3), (0, 0)))
        want = np.ldexp(1.0, s - 121).reshape(mp, -1, bks).transpose(1, 0, 2).reshape(-1, mp * bks)
        np.testing.assert_array_equal(np.asarray(fx), want)
        np.testing.assert_array_equal(np.asarray(fx2), want)


def test_fit_and_config_validation():
    assert f8.fit(C(), 1, 4096, 14336).split_k == 2  # 224 N tiles x 2 >= 264 programs
    c = f8.fit(C(programs=528), 1, 14336, 4096)  # 64 N tiles; 28 groups of 512: 8 splits would leave 3.5 each
    assert c.split_k == 4 and c.blocks == 16
    c = f8.fit(C(cols=32, unroll=4), 16, 192, 32)  # 2-block groups, unroll shrinks to divide K = 3 * 64
    assert (c.blocks, c.unroll) == (2, 1)
    assert f8.fit(C(cols=16), 3, 4096, 64).blocks == 4  # 4 padded rows x 4 blocks
    assert f8.fit(C(xq="kernel"), 1, 4096, 64).xq == "kernel"
    assert f8.fit(C(xq="kernel"), 2, 4096, 64).xq == "xla" and f8.fit(C(xq="kernel"), 1, 64, 64).xq == "xla"
    for bad in (dict(cols=8), dict(block_n=48), dict(decode="ptx"), dict(xdiag="smem"), dict(blocks=3),
                dict(split_k=-1), dict(xq="host"), dict(mma="fp32")):
        with pytest.raises(ValueError):
            C(**bad)
    with pytest.raises(ValueError, match="M <= 16"):
        f8.mxfp4_mm_fp8mma(jnp.ones((17, 64)), jnp.zeros((16, 32), jnp.uint8), jnp.zeros((16, 2), jnp.uint8))
    assert not f8.supported(jnp.bfloat16, 1, 96, 16) and f8.supported(jnp.float32, 16, 64, 16)


@pytest.mark.parametrize("m", [1, 3, 16])
def test_candidates_lower_for_cuda(m):
    """Every named candidate's Pallas -> Triton lowering succeeds for CUDA (inline PTX planes, fp8 bitcasts, the
    chained FP8 dots, the block-diagonal build, the reshapes), without a GPU; not the Triton -> PTX stage."""
    k, n = 4096, 1024
    args = (jax.ShapeDtypeStruct((m, k), jnp.bfloat16), jax.ShapeDtypeStruct((n, k // 2), jnp.uint8),
            jax.ShapeDtypeStruct((n, k // 32), jnp.uint8))
    for name, cfg in f8.CANDIDATES.items():
        cfg = f8.fit(cfg, m, k, n)
        fn = jax.jit(lambda x, w, s: f8._fp8mma_jit(x, w, s, None, out_dtype=jnp.bfloat16, cfg=cfg,
                                                     interpret=False))
        text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert "xla.gpu.triton" in text, name
        asm = cfg.decode == "asm"  # the weight-plane PTX and the x block mask are in the kernel's IR
        assert ("0x1C1C1C1C" in text) == asm and ("and.b32 $0, $1, $2" in text) == (asm and cfg.xdiag == "kernel")
        if m == 1:  # the Triton dialect's verifier accepts the IR (a uint8 inline-asm result failed on the H200)
            [ir_text] = triton_ir(lambda x, w, s: f8._fp8mma_jit(x, w, s, None, out_dtype=jnp.bfloat16, cfg=cfg,
                                                                 interpret=False), *args)
            assert "tt.dot" in ir_text, name
