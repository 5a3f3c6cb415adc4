"""The Pallas INT8 W8A8 kernels (interpret mode on CPU) against the XLA reference and float64 numpy.

* the int32 accumulator (with the azp term) equals ``lax.dot_general(..., preferred_element_type=int32)`` bit for
  bit, for every kernel variant (tensor-core tiles, swapped MMA operands, split-K, CUDA-core GEMV);
* after the epilogue the output is within one rounding of the output dtype of the XLA reference (plus one f32 ulp
  of the scaled product, which an FMA-fused bias add may round differently), and close to float64 numpy;
* ragged M, N, K (not multiples of the blocks), symmetric and asymmetric (per-tensor azp folded into azp_adj,
  per-token azp with column sums), per-tensor and per-token / per-channel scales, with and without bias.
"""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import kernel_reference as kref
from quark_jax import kernels, quant
from quark_jax.kernels.int8_scaled_mm import block_config, pallas_mosaic_gpu, pallas_triton, xla
from quark_jax.kernels.int8_scaled_mm.block_config import Config

# One config per kernel family, small enough for interpret mode, chosen so the test shapes are ragged for them.
VARIANTS = {
    "mma": Config(16, 32, 64, num_warps=4, num_stages=3),
    "mma_swap": Config(16, 32, 64, swap_ab=True),
    "mma_split": Config(16, 16, 32, split_k=4),
    "mma_tile_grouped": Config(32, 16, 64, group_m=2),
    "gemv": Config(1, 16, 64, kind="gemv"),
    "gemv_split": Config(1, 32, 32, split_k=2, kind="gemv"),
}
MODES = ["sym", "per_tensor_azp", "per_token_azp"]
MANTISSA = {jnp.bfloat16: 7, jnp.float16: 10, jnp.float32: 23}


def make_case(seed, m, k, n, mode, *, per_token_scale=True, per_channel=True, with_bias=True):
    """Quantized operands through the library's own (vLLM-exact) quantizers, as QuarkW8A8Int8 produces them."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((m, k)) + 0.6, jnp.float32)
    wq = jnp.asarray(rng.integers(-128, 128, (n, k)), jnp.int8)
    ws = jnp.asarray(rng.uniform(0.002, 0.01, n) if per_channel else 0.004, jnp.float32)
    bias = jnp.asarray(rng.standard_normal(n), jnp.float32) if with_bias else None
    if mode == "sym":
        xq, xs, _ = quant.scaled_int8_quant(x, None if per_token_scale else jnp.float32(0.03))
        adj, azp = None, None
    elif mode == "per_tensor_azp":
        xq, xs, z = quant.scaled_int8_quant(x, jnp.float32(0.025), jnp.int32(-17))
        adj, azp = quant.compute_azp_adj(wq, z), None
    else:
        xq, xs, azp = quant.scaled_int8_quant(x, symmetric=False)
        adj = quant.compute_azp_adj(wq, 1)
    return dict(x_q=xq, w_q=wq, x_scale=jnp.asarray(xs, jnp.float32), w_scale=ws, bias=bias, azp_adj=adj, azp=azp)


def shape_for(variant, m):
    """Ragged for every variant: N = 48 and K = 96 are not multiples of the 32/64 blocks; M as given."""
    return (1 if variant.startswith("gemv") else m), 96, 48


def output_slack(c, want, out_dtype):
    """Allowed |kernel - reference| per element: one rounding of the output dtype at the reference's magnitude,
    plus one f32 ulp of the scaled product (the bias add may be fused into an FMA)."""
    acc = np.asarray(xla.apply_azp(xla.int8_accumulate(c["x_q"], c["w_q"]), c["azp_adj"], c["azp"]), np.float64)
    prod = np.abs(np.asarray(c["x_scale"], np.float64).reshape(-1, 1) if np.ndim(c["x_scale"]) else
                  np.asarray(c["x_scale"], np.float64)) * np.abs(np.asarray(c["w_scale"], np.float64)) * np.abs(acc)
    mag = np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    one_out = 2.0 ** (np.floor(np.log2(mag)) - MANTISSA[out_dtype])
    one_f32 = 2.0 ** (np.floor(np.log2(np.maximum(prod, np.finfo(np.float32).tiny))) - 23)
    return one_out + one_f32


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
def test_accumulator_is_exact(variant, mode):
    m, k, n = shape_for(variant, 13)
    c = make_case(10, m, k, n, mode)
    got = pallas_triton.int8_accumulate_pallas(c["x_q"], c["w_q"], azp_adj=c["azp_adj"], azp=c["azp"],
                                               config=VARIANTS[variant])
    want = xla.apply_azp(xla.int8_accumulate(c["x_q"], c["w_q"]), c["azp_adj"], c["azp"])
    assert got.dtype == jnp.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_accumulator_extreme_values_exact():
    """All -128 against all -128 / 127 over a long K: the int32 sum must not saturate or round."""
    k = 4096
    x = jnp.full((3, k), -128, jnp.int8)
    w = jnp.concatenate([jnp.full((16, k), -128, jnp.int8), jnp.full((16, k), 127, jnp.int8)])
    for cfg in (Config(16, 16, 512, split_k=2), Config(1, 16, 256, kind="gemv")):
        xx = x[:1] if cfg.kind == "gemv" else x
        got = np.asarray(pallas_triton.int8_accumulate_pallas(xx, w, config=cfg))
        assert (got[:, :16] == 128 * 128 * k).all() and (got[:, 16:] == -128 * 127 * k).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode,with_bias,out_dtype", [
    ("sym", False, jnp.bfloat16), ("sym", True, jnp.float32), ("per_tensor_azp", True, jnp.bfloat16),
    ("per_tensor_azp", False, jnp.float16), ("per_token_azp", True, jnp.float32),
    ("per_token_azp", False, jnp.bfloat16)])
def test_output_matches_reference(variant, mode, with_bias, out_dtype):
    m, k, n = shape_for(variant, 21)
    c = make_case(20, m, k, n, mode, with_bias=with_bias)
    got = pallas_triton.int8_scaled_mm_pallas(**c, out_dtype=out_dtype, config=VARIANTS[variant])
    assert got.dtype == out_dtype and got.shape == (m, n)
    ref = xla.int8_scaled_mm_xla(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], out_dtype=out_dtype)
    got64 = np.asarray(got.astype(jnp.float32), np.float64)
    ref64 = np.asarray(ref.astype(jnp.float32), np.float64)
    slack = output_slack(c, ref64, out_dtype)
    bad = np.abs(got64 - ref64) > slack
    assert not bad.any(), f"{bad.sum()} elements beyond one rounding, e.g. {got64[bad][:3]} vs {ref64[bad][:3]}"
    want = kref.scaled_mm_f64(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], c["azp_adj"], c["azp"])
    rel = np.abs(got64 - want).max() / np.abs(want).max()
    assert rel <= {jnp.bfloat16: 2**-8, jnp.float16: 2**-11, jnp.float32: 1e-6}[out_dtype]


MOSAIC_VARIANTS = {  # the Mosaic GPU skinny kernel (GPU interpreter on CPU): (config, M); M = 33 pads to 48 rows
    "skinny": (pallas_mosaic_gpu.SkinnyConfig(64, 32, 2, 1), 13),
    "skinny_split_k": (pallas_mosaic_gpu.SkinnyConfig(64, 32, 2, 2), 33),
}


@pytest.mark.parametrize("variant", list(MOSAIC_VARIANTS))
@pytest.mark.parametrize("mode,with_bias,out_dtype", [
    ("sym", True, jnp.float32), ("per_tensor_azp", False, jnp.bfloat16), ("per_token_azp", True, jnp.float16)])
def test_mosaic_kernel_matches_reference(variant, mode, with_bias, out_dtype):
    """The Mosaic GPU kernel: int32-exact accumulation (float32 output of unit scales), then within one rounding
    of the XLA reference after the epilogue, against float64 too."""
    cfg, m = MOSAIC_VARIANTS[variant]
    c = make_case(60, m, 128, 128, mode, with_bias=with_bias)
    unit = dict(c, x_scale=jnp.float32(1), w_scale=jnp.float32(1), bias=None)
    acc = pallas_mosaic_gpu.int8_scaled_mm_mosaic(**unit, out_dtype=jnp.float32, config=cfg)
    want_acc = xla.apply_azp(xla.int8_accumulate(c["x_q"], c["w_q"]), c["azp_adj"], c["azp"])
    np.testing.assert_array_equal(np.asarray(acc), np.asarray(want_acc, np.float32))
    got = pallas_mosaic_gpu.int8_scaled_mm_mosaic(**c, out_dtype=out_dtype, config=cfg)
    assert got.dtype == out_dtype and got.shape == (m, 128)
    ref = xla.int8_scaled_mm_xla(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], out_dtype=out_dtype)
    got64 = np.asarray(got.astype(jnp.float32), np.float64)
    ref64 = np.asarray(ref.astype(jnp.float32), np.float64)
    assert (np.abs(got64 - ref64) <= output_slack(c, ref64, out_dtype)).all()
    want = kref.scaled_mm_f64(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], c["azp_adj"], c["azp"])
    assert np.abs(got64 - want).max() / np.abs(want).max() <= {jnp.bfloat16: 2**-8, jnp.float16: 2**-11,
                                                               jnp.float32: 1e-6}[out_dtype]


def test_mosaic_entry_point_and_padding_rule():
    c = make_case(70, 2, 64, 64, "per_token_azp")
    got = kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], impl="mosaic")
    ref = kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], impl="xla")
    g, r = np.asarray(got.astype(jnp.float32), np.float64), np.asarray(ref.astype(jnp.float32), np.float64)
    assert (np.abs(g - r) <= output_slack(c, r, jnp.bfloat16)).all()
    # 8-bit integer wgmma takes N in {8, 16, 24, 32, 48, 64, ...}: rows pad to 8 up to 32, to 16 above
    rows = pallas_mosaic_gpu._mosaic_skinny.padded_rows
    assert [rows(m, jnp.int8) for m in (1, 9, 32, 33, 100)] == [8, 16, 32, 48, 112]
    assert [rows(m, jnp.float8_e4m3fn) for m in (1, 33, 100)] == [8, 40, 104]
    with pytest.raises(TypeError, match="takes float8_e4m3fn or int8"):
        from quark_jax.kernels import _validate
        _validate.mosaic_skinny_shape(jnp.float16, 1, 64, 64)


@pytest.mark.parametrize("per_token_scale,per_channel", [(False, False), (True, False), (False, True)])
def test_scale_shapes(per_token_scale, per_channel):
    c = make_case(30, 5, 64, 32, "per_tensor_azp" if not per_token_scale else "sym",
                  per_token_scale=per_token_scale, per_channel=per_channel)
    got = pallas_triton.int8_scaled_mm_pallas(**c, out_dtype=jnp.float32, config=Config(16, 16, 32))
    want = kref.scaled_mm_f64(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], c["azp_adj"], c["azp"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-5)


def test_asymmetric_dequantizes_activations():
    """The azp epilogue really computes (x_q - z) * s_x @ (w_q * s_w).T: compare with the float product."""
    c = make_case(40, 7, 128, 32, "per_token_azp", with_bias=False)
    got = pallas_triton.int8_scaled_mm_pallas(**c, out_dtype=jnp.float32, config=Config(16, 32, 64, split_k=2))
    xd = (np.asarray(c["x_q"], np.float64) - np.asarray(c["azp"], np.float64)) * np.asarray(c["x_scale"], np.float64)
    wd = np.asarray(c["w_q"], np.float64) * np.asarray(c["w_scale"], np.float64)[:, None]
    y = xd @ wd.T
    assert np.abs(np.asarray(got) - y).max() <= 1e-5 * np.abs(y).max()


@pytest.mark.parametrize("mode", MODES)
def test_entry_point_pallas(mode):
    c = make_case(50, 19, 64, 48, mode)
    got = kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], impl="pallas")
    ref = kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], impl="xla")
    assert got.dtype == jnp.bfloat16
    g, r = np.asarray(got.astype(jnp.float32), np.float64), np.asarray(ref.astype(jnp.float32), np.float64)
    assert (np.abs(g - r) <= output_slack(c, r, jnp.bfloat16)).all()


def test_entry_point_rejects_unaligned_for_pallas():
    with pytest.raises(ValueError, match="w_q: N = 40 must be a multiple of 16"):
        kernels.int8_scaled_mm(jnp.ones((2, 64), jnp.int8), jnp.ones((40, 64), jnp.int8), 1.0, 1.0, impl="pallas")


def test_gemv_needs_single_row():
    with pytest.raises(ValueError, match="gemv kernel needs M == 1, got M = 2"):
        pallas_triton.int8_accumulate_pallas(jnp.ones((2, 64), jnp.int8), jnp.ones((16, 64), jnp.int8),
                                             config=Config(1, 16, 64, kind="gemv"))


def test_config_validation():
    with pytest.raises(ValueError, match="Config.block_n: expected a power of two, got 48"):
        Config(16, 48, 64)
    with pytest.raises(ValueError, match="int8 MMA tiles need"):
        Config(8, 16, 64)
    with pytest.raises(ValueError, match="Config.kind"):
        Config(16, 16, 64, kind="wgmma")


@pytest.mark.parametrize("m", [1, 16, 64, 256, 2048, 8192])
@pytest.mark.parametrize("k,n", [(4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)])
def test_configs_fit_benchmark_shapes(m, k, n):
    """Every shipped config (tuned or heuristic) and every sweep candidate is valid for the benchmark shapes."""
    cfg = block_config.fit(block_config.get_config(m, k, n), m, k, n)
    assert cfg.block_k <= k and cfg.split_k * cfg.block_k <= k
    assert cfg.kind != "gemv" or m == 1
    for c in block_config.candidates(m, k, n):
        assert c.kind != "gemv" or m == 1
        assert c.split_k * c.block_k <= k


def test_bf16_output_is_not_a_float_product_in_disguise():
    """Values where a bf16 (non-integer) GEMM would lose bits: large K with +-127 products; the int32 path is exact
    and the kernel's output must be the correctly rounded bf16 of the exact result."""
    rng = np.random.default_rng(60)
    k = 1024
    xq = jnp.asarray(rng.choice([-127, 127, 1], (4, k)), jnp.int8)
    wq = jnp.asarray(rng.choice([-127, 127, 3], (16, k)), jnp.int8)
    got = pallas_triton.int8_scaled_mm_pallas(xq, wq, jnp.float32(1.0), jnp.float32(1.0), out_dtype=jnp.bfloat16,
                                              config=Config(16, 16, 256))
    exact = np.asarray(xq, np.int64) @ np.asarray(wq, np.int64).T
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)),
                                  exact.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32))
