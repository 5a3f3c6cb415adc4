"""MXFP4 GEMM backends (``KernelContract``) against the XLA reference (vLLM's emulation) and float64 numpy, and the
MXFP4 kernel's own decoders and configs.

On CPU the kernels run in Pallas interpret mode with the portable ("jnp") decoder; on a CUDA GPU the same tests
run the compiled kernels with the PTX decoder.

"Exact" data: activations whose MX block scales span a few binades and random weight bytes (every code in both
nibbles) with scale bytes 125..128, so every f32 partial sum is exact in any order and the kernel must equal the
XLA reference bit for bit. The scale-byte sweep (0..254) compares with float64 numpy instead, where rounding and
the flushing of float32 subnormals (XLA on CPU) are the only allowed differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
import reference_numpy as ref
from kernels.base import ON_GPU, KernelContract, Variant
from quark_jax import formats, kernels, quant
from quark_jax.kernels.mxfp4_mm import decode, dequant_gemm, pallas_mosaic_gpu, pallas_triton
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla

C = pallas_triton.Config
D = dequant_gemm.Config
MC = pallas_mosaic_gpu.Config


def _pallas_triton(x, wp, ws, bias, quantize_input, out_dtype, config):
    return pallas_triton.mxfp4_mm_pallas(x, wp, ws, bias, quantize_input=quantize_input, out_dtype=out_dtype,
                                         config=config)


def _exact_data(rng, m, k, n, dtype):
    """x on a 1/16 grid (|x| <= 8, block magnitudes 2**-1..2**1), random weight bytes (every code in both
    nibbles) with scale bytes 125..128, bias on a 1/8 grid: every product is a multiple of 2**-7 below 2**7, so
    every f32 partial sum (K <= 512) is exact in any order."""
    x = rng.integers(-32, 33, (m, k)) / 8 * 2.0 ** rng.integers(-1, 2, (m, k // 32)).repeat(32, axis=1)
    x = jnp.asarray(x, jnp.float32).astype(dtype)
    wp = jnp.asarray(rng.integers(0, 256, (n, k // 2)), jnp.uint8)
    ws = jnp.asarray(rng.integers(125, 129, (n, k // 32)), jnp.uint8)
    bias = jnp.asarray(rng.integers(-40, 41, n) / 8, jnp.float32)
    return x, wp, ws, bias


class TestMxfp4Mm(KernelContract):
    OP = "mxfp4_mm"
    # ragged M, several row/column tiles and K steps each
    VARIANTS = [
        Variant(backend="pallas_triton", name="decode_wmajor", shape=(3, 192, 48),
                config=C(block_m=16, block_n=16, block_k=64, num_warps=4)),
        Variant(backend="pallas_triton", name="decode_split_k", shape=(1, 256, 64),
                config=C(block_m=16, block_n=32, block_k=64, split_k=2)),
        Variant(backend="pallas_triton", name="small_pack4", shape=(37, 256, 32),
                config=C(block_m=32, block_n=16, block_k=128, pack=4)),
        Variant(backend="pallas_triton", name="prefill_xmajor_grouped", shape=(45, 128, 48),
                config=C(block_m=16, block_n=16, block_k=64, w_major=False, group_m=2)),
        Variant(backend="pallas_triton", name="one_mx_block_k", shape=(17, 96, 32),
                config=C(block_m=16, block_n=16, block_k=32, w_major=False)),
        # dequantize-then-GEMM (large M): several row and K tiles of the dequant kernel, ragged M
        Variant(backend="dequant_gemm", name="pallas_tiles", shape=(19, 128, 32), config=D(block_n=16, block_k=64)),
        Variant(backend="dequant_gemm", name="xla", shape=(5, 128, 32), config=D(method="xla")),
        # the one-pass Pallas activation quant-dequant + permutation (3 row tiles of 8, 2 K tiles); W4A16 takes XLA
        Variant(backend="dequant_gemm", name="pallas_act", shape=(24, 128, 32),
                config=D(block_n=16, block_k=64, act="pallas", act_block_m=8)),
        Variant(backend="dequant_gemm", name="xla_pairs_act", shape=(7, 128, 32),
                config=D(block_n=16, block_k=64, act="xla_pairs")),
        # Mosaic GPU decode kernel (Mosaic GPU interpreter on CPU, slow: one variant; M = 13 with bias and W4A16
        # in test_mosaic_entry_config_and_errors): ragged M, two N tiles, a K split of two programs with two
        # pipeline steps of two MX blocks each (PTX decode compiled on a GPU, the portable one in the interpreter)
        Variant(backend="pallas_mosaic_gpu", name="decode_split_k", shape=(3, 256, 128),
                config=MC(block_n=64, block_k=64, stages=2, split_k=2, decode="ptx")),
        # the warp-specialized form (a TMA producer warpgroup, two consumers taking 64 rows each): two steps, W4A4
        # with bias only (three warpgroups make the interpreter slow)
        Variant(backend="pallas_mosaic_gpu", name="warp_specialized", shape=(3, 128, 128),
                config=MC(block_n=128, block_k=64, stages=2, consumer_warpgroups=2, decode="ptx")),
    ]
    # quantize_input (W4A4) or not (W4A16), with or without bias: each variant runs both modes, the bias pairing
    # alternates between variants so that every (mode, bias) pair and the split-K bias path are covered
    FLAVORS = ["w4a16-bias", "w4a4-nobias", "w4a16-nobias", "w4a4-bias"]
    ENTRY_SHAPE = (2, 64, 32)
    PALLAS = (pallas_triton, "mxfp4_mm_pallas")

    def flavors_for(self, variant):
        if variant.name == "warp_specialized":
            return ["w4a4-bias"]
        return self.FLAVORS[2:] if self.VARIANTS.index(variant) % 2 == 0 else self.FLAVORS[:2]

    def data(self, rng, m, k, n, flavor):
        x, wp, ws, bias = _exact_data(rng, m, k, n, jnp.bfloat16)
        return dict(x=x, wp=wp, ws=ws, bias=bias if flavor.endswith("-bias") else None, q=flavor.startswith("w4a4"))

    def run(self, variant, d, flavor):
        if variant.backend == "pallas_mosaic_gpu":
            return pallas_mosaic_gpu.mxfp4_mm_mosaic(d["x"], d["wp"], d["ws"], d["bias"], quantize_input=d["q"],
                                                     out_dtype=jnp.float32, config=variant.config)
        return _pallas_triton(d["x"], d["wp"], d["ws"], d["bias"], d["q"], jnp.float32, variant.config)

    def check(self, got, d, flavor):
        m, n = d["x"].shape[0], d["wp"].shape[0]
        want = mxfp4_mm_xla(d["x"], d["wp"], d["ws"], d["bias"], quantize_input=d["q"], out_dtype=jnp.float32)
        assert got.shape == (m, n) and got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        # and against float64 numpy (the sums are exact, so equal)
        want64 = kref.mxfp4_mm_f64(np.asarray(d["x"].astype(jnp.float32)), np.asarray(d["wp"]), np.asarray(d["ws"]),
                                   None if d["bias"] is None else np.asarray(d["bias"]), d["q"])
        np.testing.assert_array_equal(np.asarray(got, np.float64), want64)

    def auto_fallback(self, want, d):
        m, k = d["x"].shape
        ok = pallas_mosaic_gpu.supported(d["x"].dtype, d["q"], m, k, d["wp"].shape[0])
        return "pallas" if want == "mosaic" and not ok else want

    def entry(self, d, impl):
        return kernels.mxfp4_mm(d["x"], d["wp"], d["ws"], d["bias"], quantize_input=d["q"], impl=impl)

    def entry_check(self, got, want, d):
        assert got.dtype == d["x"].dtype
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("quantize_input", [True, False])
def test_input_and_output_dtypes(dtype, quantize_input):
    """Every activation dtype, default out_dtype (= x dtype): equal to the reference after one rounding."""
    v = TestMxfp4Mm.VARIANTS[0]
    cfg, (m, k, n) = v.config, v.shape
    rng = np.random.default_rng(7)
    x, wp, ws, bias = _exact_data(rng, m, k, n, dtype)
    got = _pallas_triton(x, wp, ws, bias, quantize_input, None, cfg)
    want = mxfp4_mm_xla(x, wp, ws, bias, quantize_input=quantize_input)
    assert got.dtype == dtype
    if dtype == jnp.float32 and not quantize_input:
        # f32 activations are not bf16-exact: an f32 (HIGHEST) dot; summation order may differ by an ulp or two
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


def test_every_code_in_both_nibbles_and_every_scale_byte():
    """Weight rows with one scale byte each (0..254) and all 256 byte values: matches float64 numpy."""
    k, n = 512, 256
    rng = np.random.default_rng(11)
    byte_rows = np.stack([rng.permutation(256) for _ in range(n)]).astype(np.uint8)  # K/2 = 256 bytes: all values
    sbytes = np.concatenate([np.arange(255), [127]]).astype(np.uint8)
    # keep |w| finite: at the top scale bytes E2M1 * 2**(s-127) overflows float32 (and bf16) past 1.5 * 2**127
    big = sbytes[:, None] >= 253
    mags = byte_rows & 0x77
    byte_rows = np.where(big, (byte_rows & 0x88) | np.minimum(mags & 0x7, 3) | (np.minimum(mags >> 4, 3) << 4),
                         byte_rows).astype(np.uint8)
    wp = jnp.asarray(byte_rows)
    ws = jnp.asarray(np.repeat(sbytes[:, None], k // 32, axis=1))
    w64 = ref.mxfp4_dequantize(byte_rows, np.asarray(ws))
    cfg = C(block_m=16, block_n=64, block_k=128)
    checked = np.zeros(n, bool)
    # one x per range of scale bytes: tiny x for the large weights, huge x for the small ones (f32 stays finite)
    for x_exp in (-60, 60):
        x = jnp.asarray(rng.standard_normal((5, k)) * 2.0 ** x_exp, jnp.float32)
        got = np.asarray(pallas_triton.mxfp4_mm_pallas(x, wp, ws, quantize_input=True, config=cfg), np.float64)
        xq = np.asarray(quant.qdq_mxfp4(x), np.float64)
        want = xq @ w64.T
        mag = np.abs(xq) @ np.abs(w64).T
        cols = (mag.min(0) > 2.0 ** -100) & (mag.max(0) < 2.0 ** 100)
        # f32 accumulation: a K-term sum is within K * 2**-24 of the sum of magnitudes; subnormal weights (scale
        # bytes 0 and 1) may be flushed to zero where float32 subnormals are flushed: <= 6 * 2**-126 per weight.
        tol = mag * 2.0 ** -14 + np.abs(xq).sum(1, keepdims=True) * 6 * 2.0 ** -126
        assert np.isfinite(got[:, cols]).all()
        bad = np.abs(got - want) > tol
        assert not bad[:, cols].any(), np.argwhere(bad[:, cols])[:5]
        checked |= cols
    assert checked.all(), np.flatnonzero(~checked)


@pytest.mark.parametrize("pack", [2, 4])
def test_ptx_decoder_model_all_bytes(pack):
    """The numpy model of the PTX decoder gives the E2M1 value of each nibble of every byte (with -0 for code 8)."""
    b = np.random.default_rng(pack).permutation(256).astype(np.uint8)  # every byte, in every position of a pack
    lo, hi = decode.ptx_decode_emulated(b, pack)
    table = np.asarray(formats.E2M1_VALUES)
    np.testing.assert_array_equal(lo, table[b & 15])
    np.testing.assert_array_equal(hi, table[b >> 4])
    np.testing.assert_array_equal(np.signbit(lo), np.signbit(table[b & 15]))
    np.testing.assert_array_equal(np.signbit(hi), np.signbit(table[b >> 4]))
    # the model and the asm use the same constants and steps
    for low in (True, False):
        asm = decode._ptx(low, False, pack)
        assert asm.count("prmt.b32") == pack // 2 and asm.count("mul.rn.bf16x2") == pack // 2
        assert "0x81C081C0" in asm and "0x7E807E80" in asm and ("shl.b32 q0, q0, 4;" in asm) == low
        assert ("0xB3A2" in asm) == (pack == 4) and "0x9180" in asm


def test_folded_ptx_decoder_model_all_bytes_and_scales_up_to_128():
    """The folded-scale PTX form (``_ptx(..., fold=True)``: the raw E2M1 * 2**-126 pattern times the bf16 scale
    2**(s - 1), one multiply) gives E2M1 * 2**(s - 127) (float64) on every byte x every scale byte 0..128, where that
    scale is a finite bf16 (subnormal results included, as the two-multiply form); above 128 it is not (the
    caller's precondition)."""
    b = np.arange(256, dtype=np.uint8)
    lo, hi = decode.ptx_decode_emulated(b, 2, raw=True)
    s = np.arange(decode.FOLD_MAX_SCALE_BYTE + 1, dtype=np.uint8)
    folded = np.asarray(decode.scale_bf16_folded(jnp.asarray(s)).astype(jnp.float32), np.float64)
    np.testing.assert_array_equal(folded, np.ldexp(1.0, s.astype(np.int64) - 1))
    table = np.asarray(formats.E2M1_VALUES, np.float64)
    exact = np.ldexp(1.0, s.astype(np.int64)[:, None] - 127)  # [129, 1]: float64 products, exact in bf16 too
    np.testing.assert_array_equal(lo[None, :] * folded[:, None], table[b & 15][None, :] * exact)
    np.testing.assert_array_equal(hi[None, :] * folded[:, None], table[b >> 4][None, :] * exact)
    asm = decode._ptx(True, True, 2, fold=True)
    assert asm.count("mul.rn.bf16x2") == 1 and "0x81C081C0" in asm
    # above 128 the folded scale is clamped to 2**127 (not 2**(s - 1)): wrong values, hence the precondition
    assert float(decode.scale_bf16_folded(jnp.asarray([129], jnp.uint8))[0]) == 2.0 ** 127


def test_portable_decoder_all_codes_and_scale_bytes():
    """decode_jnp equals quant.dequantize_mxfp4 on all byte values x all scale bytes (0..254)."""
    packed = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (255, 1))  # 16 blocks per scale byte
    sbytes = np.repeat(np.arange(255, dtype=np.uint8), 16)[:, None]
    lo, hi = jax.jit(decode.decode_jnp, static_argnums=2)(jnp.asarray(packed), jnp.asarray(sbytes), jnp.float32)
    w = np.asarray(quant.dequantize_mxfp4(jnp.asarray(packed), jnp.asarray(sbytes), jnp.float32))
    np.testing.assert_array_equal(np.asarray(lo), w[:, 0::2])
    np.testing.assert_array_equal(np.asarray(hi), w[:, 1::2])
    e2m1 = np.asarray(decode.e2m1_to_f32(jnp.arange(16, dtype=jnp.int32)))
    np.testing.assert_array_equal(np.signbit(e2m1), np.signbit(np.asarray(formats.E2M1_VALUES)))


def test_scale_bf16_is_exact_power_of_two():
    s = jnp.arange(255, dtype=jnp.uint8)
    got = np.asarray(decode.scale_bf16(s).astype(jnp.float32), np.float64)
    want = np.ldexp(1.0, np.arange(255) - 127)
    normal = want >= 2.0 ** -126
    np.testing.assert_array_equal(got[normal], want[normal])
    assert got[0] in (0.0, 2.0 ** -127)  # bf16 subnormal; flushed on backends that flush


def test_config_fit_and_errors():
    cfg = pallas_triton.fit(C(block_m=128, block_n=128, block_k=512, split_k=4), m=3, k=96, n=48)
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.split_k) == (16, 16, 32, 1)
    cfg = pallas_triton.fit(C(block_m=128, block_n=128, block_k=256, split_k=2), m=40, k=4096, n=14336)
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.split_k) == (64, 128, 256, 2)
    with pytest.raises(ValueError, match="block_k: expected a multiple of 32"):
        C(block_k=16)
    with pytest.raises(ValueError, match="block_n: expected a power of two"):
        C(block_n=48)
    with pytest.raises(ValueError, match="decode: expected one of"):
        C(decode="lut")
    with pytest.raises(ValueError, match="cannot tile N = 40"):
        pallas_triton.fit(C(), m=1, k=64, n=40)
    with pytest.raises(TypeError):
        C(16, 64, 256)  # keyword-only


def test_default_config_splits_k_where_n_gives_too_few_programs():
    # medium: about one program per SM (AUTO_SPLIT["medium"] = 100): 32 output tiles split 4 ways, 112 not split
    wide = pallas_triton.default_config(256, 4096, 14336)
    assert (wide.block_m, wide.block_n, wide.split_k) == (256, 128, 1)
    long_k = pallas_triton.default_config(256, 14336, 4096)
    assert (long_k.block_m, long_k.block_n, long_k.split_k) == (256, 128, 4)
    # up to M = 128 the narrower 128x64 tile: 64 tiles at 4096^2 -> split 2
    small_m = pallas_triton.default_config(100, 4096, 4096)
    assert (small_m.block_m, small_m.block_n, small_m.block_k, small_m.split_k) == (128, 64, 256, 2)
    # decode keeps its 224-program target: 64 tiles of 64 rows -> split 4
    assert pallas_triton.default_config(1, 4096, 4096).split_k == 4
    # prefill: no split, 256x128 tiles; a K that 256 does not divide shrinks the tile to 32 (one MX block)
    assert pallas_triton.default_config(600, 96, 48) == C(block_m=256, block_n=16, block_k=32, num_warps=8,
                                                          group_m=4)


def test_bytes_per_parameter_is_4_25_bits():
    n, k = 64, 4096
    wp, ws = quant.quantize_mxfp4(jnp.ones((n, k), jnp.float32))
    assert (wp.nbytes + ws.nbytes) * 8 / (n * k) == 4.25


def test_ptx_decoder_only_from_sm90(monkeypatch):
    """The inline-PTX decode (bf16x2 multiplies) is used from sm90 on; an sm80 / sm89 GPU gets the portable one."""
    from quark_jax.kernels import tuning

    for cc, ok in (("8.0", False), ("8.9", False), ("9.0", True), ("10.0", True)):
        monkeypatch.setattr(tuning, "current_device", lambda cc=cc: ("some GPU", cc))
        assert pallas_triton._ptx_decode_ok() is ok, cc
    monkeypatch.setattr(tuning, "current_device", lambda: ("cpu", None))
    assert pallas_triton._ptx_decode_ok() is False


def test_dequant_kernel_layout_and_xla_dequant_all_codes_and_scale_bytes():
    """Both dequantizers of the dequantize-then-GEMM path equal quant.dequantize_mxfp4 on every byte value x every
    scale byte (0..254): the XLA one in checkpoint order, the Pallas one in the permuted order that
    permute_activations gives the activations (so the GEMM sums the same products)."""
    packed = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (255, 4))  # [4080, 64]: K = 128
    sbytes = np.repeat(np.arange(255, dtype=np.uint8), 16)[:, None].repeat(4, axis=1)
    sbytes[::3, 1] = 127  # a second scale within a row
    wp, ws = jnp.asarray(packed), jnp.asarray(sbytes)
    w = np.asarray(quant.dequantize_mxfp4(wp, ws, jnp.float32))
    np.testing.assert_array_equal(np.asarray(jax.jit(dequant_gemm.dequantize_xla, static_argnums=2)(wp, ws,
                                                                                                  jnp.float32)), w)
    cfg = D(block_n=16, block_k=64, decode="jnp")
    rows = np.concatenate([np.arange(16 * s, 16 * s + 16) for s in (0, 1, 2, 126, 127, 128, 253, 254)])  # interpret
    got = np.asarray(dequant_gemm.dequantize_permuted(wp[rows], ws[rows], jnp.float32, cfg=cfg, interpret=True))
    np.testing.assert_array_equal(got, np.asarray(dequant_gemm.permute_activations(jnp.asarray(w[rows]), 64)))
    # the permutation is a per-tile even/odd split of K
    perm = np.asarray(dequant_gemm.permute_activations(jnp.arange(128.0)[None], 64))[0].astype(int)
    np.testing.assert_array_equal(perm[:64], np.r_[np.arange(0, 64, 2), np.arange(1, 64, 2)])
    np.testing.assert_array_equal(np.sort(perm), np.arange(128))


def test_tuned_table_selects_backend_and_config():
    """A TUNED entry is used as given (its K split kept) and a dequant_gemm.Config selects that path; without an
    entry the DEFAULTS bucket and the automatic K split apply."""
    fused = C(block_m=16, block_n=128, block_k=256, split_k=8, num_warps=8)
    table = {"16@4096x14336": fused, "max@4096x14336": D(block_n=64, block_k=1024), "max@96x48": D()}
    assert pallas_triton.default_config(1, 4096, 14336, table=table) == fused
    assert pallas_triton.default_config(8192, 4096, 14336, table=table) == D(block_n=64, block_k=1024)
    assert pallas_triton.default_config(3000, 96, 48, table=table) == D(block_n=16, block_k=32)  # fitted
    assert pallas_triton.default_config(1, 4096, 4096, table=table).split_k == 4  # DEFAULTS + auto split
    with pytest.raises(ValueError, match="method: expected one of"):
        D(method="cublas")
    with pytest.raises(ValueError, match="block_n: expected a power of two"):
        D(block_n=24)


def test_h200_table_dequantizes_only_at_prefill():
    """The H200 entries: the fused kernel up to M = 512 at the four benchmark shapes (the shipped defaults except
    the measured decode winners), the dequantize-then-GEMM path above; other cards get no entry."""
    table = pallas_triton.TUNED["nvidia_h200"]
    for k, n in ((4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)):
        for m in (1, 16, 17, 64, 65, 128, 200, 256, 300, 512):
            cfg = pallas_triton.default_config(m, k, n, table=table)
            assert isinstance(cfg, C), (m, k, n)
            if m > 16:
                assert cfg == pallas_triton.default_config(m, k, n, table={}), (m, k, n)
        for m in (513, 2048, 8192):
            assert pallas_triton.default_config(m, k, n, table=table) == D(block_n=32, block_k=512)
    # the 8B model's fused qkv / gate_up shapes: the dequant path at prefill only, every smaller M as without a table
    for k, n in ((4096, 6144), (4096, 28672)):
        for m in (1, 16, 17, 64, 65, 128, 200, 256, 300, 512):
            assert pallas_triton.default_config(m, k, n, table=table) == \
                pallas_triton.default_config(m, k, n, table={}), (m, k, n)
        for m in (513, 2048, 8192):
            assert pallas_triton.default_config(m, k, n, table=table) == D(block_n=32, block_k=512)
    assert pallas_triton.default_config(2048, 4096, 1024, table=table) == \
        pallas_triton.default_config(2048, 4096, 1024, table={})  # other shapes: DEFAULTS
    assert set(pallas_triton.TUNED) == {"nvidia_h200"}


@pytest.mark.skipif(not ON_GPU, reason="a realistic prefill shape: minutes in interpret mode (checked there once)")
@pytest.mark.parametrize("config", [C(block_m=256, block_n=128, block_k=128, num_warps=8, group_m=4),
                                    D(block_n=32, block_k=512), D(block_n=32, block_k=512, act="pallas")],
                         ids=["fused_prefill", "dequant_gemm", "dequant_gemm_act_pallas"])
def test_prefill_shape_on_gpu(config):
    """M = 2048, K = 4096, N = 14336 (an 8B MLP up projection; 896 fused programs): on the H200 (2026-12-02)
    the fused kernel's output there disagreed with both dequant paths (benchmarks/NOTES.md, session 5); both
    backends must equal the XLA reference up to f32 summation order."""
    from quark_jax.kernels.tuning import tuner

    x, wp, ws = tuner.operands("mxfp4_mm", 2048, 4096, 14336, copies=1)[0]
    want = np.asarray(mxfp4_mm_xla(x, wp, ws, quantize_input=True, out_dtype=jnp.float32), np.float64)
    got = np.asarray(pallas_triton.mxfp4_mm_pallas(x, wp, ws, quantize_input=True, out_dtype=jnp.float32,
                                                   config=config), np.float64)
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_mosaic_decode_all_codes_and_scale_bytes():
    """The Mosaic kernel's in-register decode (``decode_block``) equals ``quant.dequantize_mxfp4`` on every code
    and every scale byte 0..254 (float32, before the bf16 rounding; the kernel rounds once to bf16)."""
    codes = np.tile(np.arange(16), 2)[None, :].repeat(255, axis=0)  # [255, 32]: each code twice per row
    sbytes = np.arange(255, dtype=np.uint8)
    got = jax.jit(pallas_mosaic_gpu.decode_block)(jnp.asarray(codes, jnp.int32),
                                         jnp.asarray(np.repeat(sbytes[:, None], 32, axis=1), jnp.int32))
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # [255, 16]: codes in K order
    want = quant.dequantize_mxfp4(jnp.asarray(packed), jnp.asarray(sbytes[:, None]))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_mosaic_entry_config_and_errors():
    """impl="mosaic" through the entry equals impl="xla" (M = 13: 16 padded rows, W4A16 with bias, bf16 out, the
    default config fitted), and so does the portable decode; Config validation; the operand checks name the
    reason (dtype, M, N)."""
    rng = np.random.default_rng(3)
    x, wp, ws, bias = _exact_data(rng, 13, 64, 64, jnp.bfloat16)
    got = kernels.mxfp4_mm(x, wp, ws, bias, quantize_input=False, impl="mosaic")
    want = kernels.mxfp4_mm(x, wp, ws, bias, quantize_input=False, impl="xla")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
    got_jnp = pallas_mosaic_gpu.mxfp4_mm_mosaic(x, wp, ws, bias, quantize_input=False, config=MC(decode="jnp"))
    np.testing.assert_array_equal(np.asarray(got_jnp.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
    assert MC(block_n=128, block_k=1024, split_k=8).fit(k=4096, n=192) == MC(block_n=64, block_k=512, split_k=8)
    assert pallas_mosaic_gpu.default_config(14336, 4096) == MC(decode="ptx", step_wgmma=True, split_k=8)
    assert pallas_mosaic_gpu.default_config(14336, 4096, fold=True).decode == "ptx_fold"
    # the heuristic for shapes outside SPLITS gives the measured table's splits on the table's shapes
    table = dict(pallas_mosaic_gpu.SPLITS)
    pallas_mosaic_gpu.SPLITS.clear()
    try:
        assert {kn: pallas_mosaic_gpu.default_config(*kn).split_k for kn in table} == table
    finally:
        pallas_mosaic_gpu.SPLITS.update(table)
    assert pallas_mosaic_gpu.default_config(4096, 4096, warp_specialized=True) == MC(
        block_n=128, consumer_warpgroups=2, decode="ptx", split_k=8)
    for bad in (dict(block_n=32), dict(block_k=32), dict(stages=0), dict(consumer_warpgroups=3),
                dict(consumer_warpgroups=2, block_n=64), dict(decode="asm")):
        with pytest.raises(ValueError, match="Config"):
            MC(**bad)
    with pytest.raises(TypeError, match="bf16 x"):
        kernels.mxfp4_mm(x.astype(jnp.float16), wp, ws, impl="mosaic")
    with pytest.raises(ValueError, match="M <= 16"):
        kernels.mxfp4_mm(jnp.ones((17, 64), jnp.bfloat16), wp, ws, impl="mosaic")
    with pytest.raises(ValueError, match="multiples of 64"):
        kernels.mxfp4_mm(x, wp[:48], ws[:48], impl="mosaic")
    with pytest.raises(ValueError, match="128-row blocks"):
        pallas_mosaic_gpu.mxfp4_mm_mosaic(x, wp, ws, config=pallas_mosaic_gpu.WARP_SPECIALIZED)


def test_mosaic_scales_kn_and_folded_decode():
    """Scales given as [K/32, N] (``scales_kn``, the layout a load-time repack stores) and the folded-scale decode
    (``ptx_fold``, scale bytes <= 128 as in ``_exact_data``) and one wgmma call per step (``step_wgmma``: the
    blocks' decoded registers side by side) equal the XLA reference (compiled PTX on a GPU; the portable decode in
    interpret mode); a wrongly shaped scale operand and step_wgmma without PTX are refused."""
    rng = np.random.default_rng(5)
    x, wp, ws, bias = _exact_data(rng, 5, 128, 64, jnp.bfloat16)
    want = kernels.mxfp4_mm(x, wp, ws, bias, quantize_input=False, impl="xla")
    for cfg in (MC(decode="ptx_fold"), MC(decode="ptx"), MC(decode="ptx", step_wgmma=True, block_k=128)):
        got = pallas_mosaic_gpu.mxfp4_mm_mosaic(x, wp, ws.T, bias, quantize_input=False, config=cfg, scales_kn=True)
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
    with pytest.raises(ValueError, match="step_wgmma"):
        MC(step_wgmma=True)
    with pytest.raises(ValueError, match=r"\[K/32, N\]"):
        pallas_mosaic_gpu.mxfp4_mm_mosaic(x, wp, ws, scales_kn=True)


def test_mosaic_lowers_for_cuda():
    """The compiled kernel's Pallas -> Mosaic GPU lowering (register layouts, swizzled loads, register-A wgmma)
    succeeds for CUDA at a decode shape of the 8B model, without a GPU: it catches Mosaic lowering errors that the
    interpreter cannot see (benchmarks/NOTES.md, "Mosaic GPU MXFP4"; not the PTX / ptxas stage)."""
    args = (jax.ShapeDtypeStruct((16, 4096), jnp.bfloat16), jax.ShapeDtypeStruct((4096, 2048), jnp.uint8),
            jax.ShapeDtypeStruct((4096, 128), jnp.uint8))
    for cfg in (MC(decode="ptx", split_k=4), MC(decode="jnp", split_k=4), pallas_mosaic_gpu.WARP_SPECIALIZED,
                MC(decode="ptx_fold", split_k=4), MC(decode="probe", block_n=128, block_k=512, split_k=4),
                MC(decode="ptx", step_wgmma=True, split_k=4), pallas_mosaic_gpu.default_config(4096, 2048),
                pallas_mosaic_gpu.default_config(4096, 2048, fold=True)):
        fn = jax.jit(lambda x, w, s: pallas_mosaic_gpu.mxfp4_mm_mosaic(x, w, s, interpret=False, config=cfg))
        text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text


def _wide_activations(rng, m, k):
    """x [M, K] f32 whose MX blocks span 2**-30..2**30 (scale bytes ~95..157), with E2M1 ties (odd multiples of
    0.25, 2.5, 5 times the block's power of two), signed zeros and an all-zero block."""
    x = rng.standard_normal((m, k)) * 2.0 ** rng.integers(-30, 31, (m, k // 32)).repeat(32, axis=1)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -2.5, -5.0, 4.0, -0.0])
    x[0, :12] = ties  # block amax 5 -> scale byte 127: the ties sit exactly between E2M1 codes
    x[1, :32] = 0.0
    x[1, 3] = -0.0
    return x.astype(np.float32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_pallas_activation_pass_equals_reference(dtype):
    """The one-pass Pallas activation preparation equals float64 numpy's MX quant-dequant (tests/reference_numpy)
    in the dequant kernel's per-tile even/odd K order, and the XLA form bit for bit: several row and K tiles,
    blocks over a wide scale range, E2M1 ties, zeros."""
    rng = np.random.default_rng(5)
    m, k, bk = 16, 256, 128
    x = jnp.asarray(_wide_activations(rng, m, k)).astype(dtype)
    cfg = D(block_k=bk, act="pallas", act_block_m=8)
    got = np.asarray(dequant_gemm.prepare_activations_pallas(x, jnp.bfloat16, cfg=cfg, interpret=not ON_GPU)
                     .astype(jnp.float32))
    want64 = ref.mxfp4_qdq(np.asarray(x.astype(jnp.float32))).astype(np.float64)
    order = np.concatenate([t * bk + np.r_[np.arange(0, bk, 2), np.arange(1, bk, 2)] for t in range(k // bk)])
    np.testing.assert_array_equal(got, want64[:, order])
    assert np.signbit(got[1, order.tolist().index(3)])  # -0.0 keeps its sign
    xla = dequant_gemm.permute_activations(quant.qdq_mxfp4(x).astype(jnp.bfloat16), bk)
    np.testing.assert_array_equal(got, np.asarray(xla.astype(jnp.float32)))
    pairs = jax.jit(dequant_gemm.prepare_activations_xla_pairs, static_argnums=(1, 2))(x, jnp.bfloat16, bk)
    np.testing.assert_array_equal(np.asarray(pairs.astype(jnp.float32)), got)


def test_pallas_activation_pass_selection_and_override(monkeypatch):
    """``act="pallas"`` runs only for W4A4 with bf16 / f32 x and an M with a power-of-two row tile >= 8 (else the XLA
    form, same values); ``ACT_OVERRIDE`` switches every dequant config at trace time, results unchanged."""
    cfg = D(act="pallas", act_block_m=32)
    assert [dequant_gemm.act_rows(cfg, m) for m in (2048, 48, 24, 12, 19)] == [32, 16, 8, 0, 0]
    assert dequant_gemm.pallas_act(cfg, jnp.bfloat16, True, 2048)
    assert not dequant_gemm.pallas_act(cfg, jnp.float16, True, 2048)
    assert not dequant_gemm.pallas_act(cfg, jnp.bfloat16, False, 2048)
    assert not dequant_gemm.pallas_act(cfg, jnp.bfloat16, True, 12)
    assert not dequant_gemm.pallas_act(D(act="xla"), jnp.bfloat16, True, 2048)
    with pytest.raises(ValueError, match="Config.act"):
        D(act="triton")
    rng = np.random.default_rng(9)
    m, k, n = 12, 64, 32  # M = 12: no row tile >= 8 divides it, so the XLA form runs
    x, wp, ws, _ = _exact_data(rng, m, k, n, jnp.bfloat16)
    want = np.asarray(mxfp4_mm_xla(x, wp, ws, None, quantize_input=True, out_dtype=jnp.float32))
    for override in (None, "pallas", "xla"):
        monkeypatch.setattr(dequant_gemm, "ACT_OVERRIDE", override)
        for mm in (m, 8):
            got = pallas_triton.mxfp4_mm_pallas(x[:mm], wp, ws, quantize_input=True, out_dtype=jnp.float32,
                                                config=D(block_n=16, block_k=32, act="xla"), interpret=True)
            np.testing.assert_array_equal(np.asarray(got), want[:mm])
        jaxpr = str(jax.make_jaxpr(lambda v: pallas_triton.mxfp4_mm_pallas(
            v, wp, ws, quantize_input=True, config=D(block_n=16, block_k=32, act="xla"), interpret=True))(x[:8]))
        assert ("mxfp4_act_qdq_8x32" in jaxpr) == (override == "pallas")
