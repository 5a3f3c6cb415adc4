"""INT8 W8A8 GEMM backends (``KernelContract``) and the INT8 kernel's own config and entry rules.

* the int32 accumulator (with the azp term) equals ``lax.dot_general(..., preferred_element_type=int32)`` bit for
  bit, for every kernel variant (tensor-core tiles, swapped MMA operands, split-K, CUDA-core GEMV, Mosaic wgmma);
* after the epilogue the output is within one rounding of the output dtype of the XLA reference (plus one f32 ulp
  of the scaled product, which an FMA-fused bias add may round differently), and close to float64 numpy;
* ragged M, N, K, symmetric and asymmetric (per-tensor azp folded into azp_adj, per-token azp with column sums),
  per-tensor and per-token / per-channel scales, with and without bias.
"""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import kernel_reference as kref
from kernels.base import KernelContract, Variant
from quark_jax import kernels, quant
from quark_jax.kernels import _validate, mosaic_skinny
from quark_jax.kernels.int8_scaled_mm import pallas_mosaic_gpu, pallas_triton, xla

C = pallas_triton.Config
MC = pallas_mosaic_gpu.Config
MODES = ["sym", "per_tensor_azp", "per_token_azp"]
MANTISSA = {jnp.bfloat16: 7, jnp.float16: 10, jnp.float32: 23}
DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}
REL = {jnp.bfloat16: 2**-8, jnp.float16: 2**-11, jnp.float32: 1e-6}
# "acc-<mode>": the int32 accumulator; "<mode>-<bias>-<dtype>": the full epilogue
ACC = [f"acc-{m}" for m in MODES]
OUTPUT = ["sym-nobias-bf16", "sym-bias-f32", "per_tensor_azp-bias-bf16", "per_tensor_azp-nobias-f16",
          "per_token_azp-bias-f32", "per_token_azp-nobias-bf16"]
MOSAIC_OUTPUT = ["sym-bias-f32", "per_tensor_azp-nobias-bf16", "per_token_azp-bias-f16"]


def make_case(seed_or_rng, m, k, n, mode, *, per_token_scale=True, per_channel=True, with_bias=True):
    """Quantized operands through the library's own (vLLM-exact) quantizers, as QuarkW8A8Int8 produces them."""
    rng = np.random.default_rng(seed_or_rng) if isinstance(seed_or_rng, int) else seed_or_rng
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


def output_slack(c, want, out_dtype):
    """Allowed |kernel - reference| per element: one rounding of the output dtype at the reference's magnitude,
    plus one f32 ulp of the scaled product (the bias add may be fused into an FMA)."""
    acc = np.asarray(xla.apply_azp(xla.int8_accumulate(c["x_q"], c["w_q"]), c["azp_adj"], c["azp"]), np.float64)
    xs = np.asarray(c["x_scale"], np.float64)
    prod = np.abs(xs.reshape(-1, 1) if xs.ndim else xs) * np.abs(np.asarray(c["w_scale"], np.float64)) * np.abs(acc)
    mag = np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    one_out = 2.0 ** (np.floor(np.log2(mag)) - MANTISSA[out_dtype])
    one_f32 = 2.0 ** (np.floor(np.log2(np.maximum(prod, np.finfo(np.float32).tiny))) - 23)
    return one_out + one_f32


def assert_within_one_rounding(got, c, out_dtype):
    ref = xla.int8_scaled_mm_xla(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                 azp=c["azp"], out_dtype=out_dtype)
    got64 = np.asarray(got.astype(jnp.float32), np.float64)
    ref64 = np.asarray(ref.astype(jnp.float32), np.float64)
    bad = np.abs(got64 - ref64) > output_slack(c, ref64, out_dtype)
    assert not bad.any(), f"{bad.sum()} elements beyond one rounding, e.g. {got64[bad][:3]} vs {ref64[bad][:3]}"
    return got64


class TestInt8ScaledMm(KernelContract):
    OP = "int8_scaled_mm"
    # ragged for every variant: N = 48 and K = 96 are not multiples of the 32/64 blocks (Mosaic: M = 33 pads to 48)
    VARIANTS = [
        Variant(backend="pallas_triton", name="mma", shape=(21, 96, 48), config=C(block_m=16, block_n=32, block_k=64)),
        Variant(backend="pallas_triton", name="mma_swap", shape=(21, 96, 48),
                config=C(block_m=16, block_n=32, block_k=64, swap_ab=True)),
        Variant(backend="pallas_triton", name="mma_split", shape=(21, 96, 48),
                config=C(block_m=16, block_n=16, block_k=32, split_k=4)),
        Variant(backend="pallas_triton", name="mma_tile_grouped", shape=(21, 96, 48),
                config=C(block_m=32, block_n=16, block_k=64, group_m=2)),
        Variant(backend="pallas_triton", name="gemv", shape=(1, 96, 48),
                config=C(block_m=1, block_n=16, block_k=64, kind="gemv")),
        Variant(backend="pallas_triton", name="gemv_split", shape=(1, 96, 48),
                config=C(block_m=1, block_n=32, block_k=32, split_k=2, kind="gemv")),
        Variant(backend="pallas_mosaic_gpu", name="skinny", shape=(13, 128, 128),
                config=MC(block_n=64, block_k=32, stages=2)),
        Variant(backend="pallas_mosaic_gpu", name="skinny_split_k", shape=(33, 128, 128),
                config=MC(block_n=64, block_k=32, stages=2, split_k=2)),
    ]
    FLAVORS = ACC + OUTPUT
    ENTRY_SHAPE = (19, 64, 48)
    PALLAS = (pallas_triton, "int8_scaled_mm_pallas")

    def flavors_for(self, variant):
        return ACC + (MOSAIC_OUTPUT if variant.backend == "pallas_mosaic_gpu" else OUTPUT)

    def data(self, rng, m, k, n, flavor):
        if flavor.startswith("acc-"):
            return make_case(rng, m, k, n, flavor[4:])
        mode, bias, _ = flavor.split("-")
        return make_case(rng, m, k, n, mode, with_bias=bias == "bias")

    def run(self, variant, c, flavor):
        if variant.backend == "pallas_mosaic_gpu":
            if flavor.startswith("acc-"):  # unit scales, f32 output: the int32 accumulator, exactly
                c = dict(c, x_scale=jnp.float32(1), w_scale=jnp.float32(1), bias=None)
                return pallas_mosaic_gpu.int8_scaled_mm_mosaic(**c, out_dtype=jnp.float32, config=variant.config)
            return pallas_mosaic_gpu.int8_scaled_mm_mosaic(**c, out_dtype=DTYPES[flavor.split("-")[2]],
                                                           config=variant.config)
        if flavor.startswith("acc-"):
            return pallas_triton.int8_accumulate_pallas(c["x_q"], c["w_q"], azp_adj=c["azp_adj"], azp=c["azp"],
                                                        config=variant.config)
        return pallas_triton.int8_scaled_mm_pallas(**c, out_dtype=DTYPES[flavor.split("-")[2]], config=variant.config)

    def check(self, got, c, flavor):
        m, n = c["x_q"].shape[0], c["w_q"].shape[0]
        assert got.shape == (m, n)
        if flavor.startswith("acc-"):
            want = xla.apply_azp(xla.int8_accumulate(c["x_q"], c["w_q"]), c["azp_adj"], c["azp"])
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want).astype(got.dtype))
            return
        out_dtype = DTYPES[flavor.split("-")[2]]
        assert got.dtype == out_dtype
        got64 = assert_within_one_rounding(got, c, out_dtype)
        want = kref.scaled_mm_f64(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], c["azp_adj"], c["azp"])
        assert np.abs(got64 - want).max() / np.abs(want).max() <= REL[out_dtype]

    def entry(self, c, impl):
        return kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                      azp=c["azp"], impl=impl)

    def entry_check(self, got, want, c):
        assert got.dtype == jnp.bfloat16
        g, r = np.asarray(got.astype(jnp.float32), np.float64), np.asarray(want.astype(jnp.float32), np.float64)
        assert (np.abs(g - r) <= output_slack(c, r, jnp.bfloat16)).all()


def test_accumulator_extreme_values_exact():
    """All -128 against all -128 / 127 over a long K: the int32 sum must not saturate or round."""
    k = 4096
    x = jnp.full((3, k), -128, jnp.int8)
    w = jnp.concatenate([jnp.full((16, k), -128, jnp.int8), jnp.full((16, k), 127, jnp.int8)])
    for cfg in (C(block_m=16, block_n=16, block_k=512, split_k=2), C(block_m=1, block_n=16, block_k=256, kind="gemv")):
        xx = x[:1] if cfg.kind == "gemv" else x
        got = np.asarray(pallas_triton.int8_accumulate_pallas(xx, w, config=cfg))
        assert (got[:, :16] == 128 * 128 * k).all() and (got[:, 16:] == -128 * 127 * k).all()


@pytest.mark.parametrize("mode", MODES)
def test_entry_pallas_and_mosaic_every_azp_mode(mode):
    c = make_case(50, 19, 64, 64, mode)
    want = kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], azp_adj=c["azp_adj"],
                                  azp=c["azp"], impl="xla")
    r = np.asarray(want.astype(jnp.float32), np.float64)
    for impl in ("pallas", "mosaic"):
        got = kernels.int8_scaled_mm(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"],
                                     azp_adj=c["azp_adj"], azp=c["azp"], impl=impl)
        g = np.asarray(got.astype(jnp.float32), np.float64)
        assert got.dtype == jnp.bfloat16 and (np.abs(g - r) <= output_slack(c, r, jnp.bfloat16)).all(), impl


def test_mosaic_padding_rule():
    # 8-bit integer wgmma takes N in {8, 16, 24, 32, 48, 64, ...}: rows pad to 8 up to 32, to 16 above
    rows = mosaic_skinny.padded_rows
    assert [rows(m, jnp.int8) for m in (1, 9, 32, 33, 100)] == [8, 16, 32, 48, 112]
    assert [rows(m, jnp.float8_e4m3fn) for m in (1, 33, 100)] == [8, 40, 104]
    with pytest.raises(TypeError, match="takes float8_e4m3fn or int8"):
        _validate.mosaic_skinny_shape(jnp.float16, 1, 64, 64)


@pytest.mark.parametrize("per_token_scale,per_channel", [(False, False), (True, False), (False, True)])
def test_scale_shapes(per_token_scale, per_channel):
    c = make_case(30, 5, 64, 32, "per_tensor_azp" if not per_token_scale else "sym",
                  per_token_scale=per_token_scale, per_channel=per_channel)
    got = pallas_triton.int8_scaled_mm_pallas(**c, out_dtype=jnp.float32, config=C(block_m=16, block_n=16, block_k=32))
    want = kref.scaled_mm_f64(c["x_q"], c["w_q"], c["x_scale"], c["w_scale"], c["bias"], c["azp_adj"], c["azp"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-5)


def test_asymmetric_dequantizes_activations():
    """The azp epilogue really computes (x_q - z) * s_x @ (w_q * s_w).T: compare with the float product."""
    c = make_case(40, 7, 128, 32, "per_token_azp", with_bias=False)
    got = pallas_triton.int8_scaled_mm_pallas(**c, out_dtype=jnp.float32,
                                              config=C(block_m=16, block_n=32, block_k=64, split_k=2))
    xd = (np.asarray(c["x_q"], np.float64) - np.asarray(c["azp"], np.float64)) * np.asarray(c["x_scale"], np.float64)
    wd = np.asarray(c["w_q"], np.float64) * np.asarray(c["w_scale"], np.float64)[:, None]
    y = xd @ wd.T
    assert np.abs(np.asarray(got) - y).max() <= 1e-5 * np.abs(y).max()


def test_entry_point_rejects_unaligned_for_pallas():
    with pytest.raises(ValueError, match="w_q: N = 40 must be a multiple of 16"):
        kernels.int8_scaled_mm(jnp.ones((2, 64), jnp.int8), jnp.ones((40, 64), jnp.int8), 1.0, 1.0, impl="pallas")


def test_gemv_needs_single_row():
    with pytest.raises(ValueError, match="gemv kernel needs M == 1, got M = 2"):
        pallas_triton.int8_accumulate_pallas(jnp.ones((2, 64), jnp.int8), jnp.ones((16, 64), jnp.int8),
                                             config=C(block_m=1, block_n=16, block_k=64, kind="gemv"))


def test_config_validation():
    with pytest.raises(ValueError, match="Config.block_n: expected a power of two, got 48"):
        C(block_m=16, block_n=48, block_k=64)
    with pytest.raises(ValueError, match="int8 MMA tiles need"):
        C(block_m=8, block_n=16, block_k=64)
    with pytest.raises(ValueError, match="Config.kind"):
        C(block_m=16, block_n=16, block_k=64, kind="wgmma")


@pytest.mark.parametrize("k,n", [(4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192), (4096, 2048)])
def test_selected_configs_fit_benchmark_shapes(k, n):
    """Every shipped config (tuned or heuristic) is valid for the benchmark shapes: K covered by whole blocks
    per split, no gemv above M = 1, and the sm90 table is used where it has the shape."""
    for m in (1, 16, 64, 256, 2048, 8192):
        for table in (pallas_triton.TUNED["sm90"], {}):
            cfg = pallas_triton.select(m, k, n, table)
            assert cfg.block_k <= k and k % (cfg.split_k * cfg.block_k) == 0, (m, cfg)
            assert cfg.kind != "gemv" or m == 1
        if f"16@{k}x{n}" in pallas_triton.TUNED["sm90"]:
            assert pallas_triton.select(16, k, n, pallas_triton.TUNED["sm90"]) == pallas_triton.TUNED["sm90"][
                f"16@{k}x{n}"]


def test_bf16_output_is_not_a_float_product_in_disguise():
    """Values where a bf16 (non-integer) GEMM would lose bits: large K with +-127 products; the int32 path is exact
    and the kernel's output must be the correctly rounded bf16 of the exact result."""
    rng = np.random.default_rng(60)
    k = 1024
    xq = jnp.asarray(rng.choice([-127, 127, 1], (4, k)), jnp.int8)
    wq = jnp.asarray(rng.choice([-127, 127, 3], (16, k)), jnp.int8)
    got = pallas_triton.int8_scaled_mm_pallas(xq, wq, jnp.float32(1.0), jnp.float32(1.0), out_dtype=jnp.bfloat16,
                                              config=C(block_m=16, block_n=16, block_k=256))
    exact = np.asarray(xq, np.int64) @ np.asarray(wq, np.int64).T
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)),
                                  exact.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32))
