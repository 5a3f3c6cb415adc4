"""FP8 W8A8 GEMM backends (``KernelContract``) and the FP8 kernel's own config and entry rules.

Two kinds of data: "grid" data (fp8 values on a 1/4 grid in [-4, 4], so every f32 accumulation is exact in any
order) must match the XLA reference and float64 to one unit in the last place of the output dtype (one f32
rounding of the epilogue's summands forgiven, plus the FP8 tensor cores' shorter accumulator on a GPU);
realistic quantized data (vLLM's dynamic quantizer on Gaussian activations, large weights) must match float64 to
the output dtype's rounding.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
from kernels.base import ON_GPU, KernelContract, Variant
from quark_jax import kernels, quant
from quark_jax.kernels import tuning
from quark_jax.kernels.fp8_scaled_mm import pallas_mosaic_gpu, pallas_triton
from quark_jax.kernels.fp8_scaled_mm.xla import fp8_scaled_mm_xla

F8 = jnp.float8_e4m3fn
OUT = [jnp.bfloat16, jnp.float16, jnp.float32]
GPU_ACC_SLACK = 2.0**-10 if ON_GPU else 0.0
SCALES = {"tensor_tensor": (False, False), "token_tensor": (True, False), "tensor_channel": (False, True),
          "token_channel": (True, True)}
C = pallas_triton.Config
# every (scale, bias) pair with the output dtype rotating, the serving case (per-token x per-channel + bf16 bias)
# in every output dtype, and realistic quantized data
FLAVORS = ([f"{s}-{b}" for s in SCALES for b in ("nobias", "bias")] + ["serving-bf16", "serving-f16", "serving-f32"]
           + ["realistic"])


def grid_data(rng, m, k, n, per_token, per_channel, with_bias):
    """fp8 operands on a 1/4 grid in [-4, 4] (exact f32 sums), positive scales, optional bias."""
    x = jnp.asarray(rng.integers(-16, 17, (m, k)) / 4, jnp.float32).astype(F8)
    w = jnp.asarray(rng.integers(-16, 17, (n, k)) / 4, jnp.float32).astype(F8)
    xs = jnp.asarray(rng.uniform(0.01, 0.1, (m, 1)) if per_token else 0.037, jnp.float32)
    ws = jnp.asarray(rng.uniform(0.001, 0.01, n) if per_channel else 0.0061, jnp.float32)
    b = jnp.asarray(rng.standard_normal(n), jnp.float32) if with_bias else None
    return dict(x=x, w=w, xs=xs, ws=ws, b=b)


def ulp_diff(got, want, dtype, terms=None):
    """Elementwise distance in units of the last place of ``dtype`` (of the larger magnitude). ``terms``: the
    magnitude of the f32 epilogue's summands (|scaled acc| + |bias|); one f32 rounding of them is forgiven, since
    the epilogue may round ``s * acc + b`` once (fused multiply-add) or twice, and near cancellation that moves
    the result by many of its own ulps."""
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    want = np.asarray(jnp.asarray(want).astype(jnp.float32), np.float64)
    eps = float(jnp.finfo(dtype).eps)
    tiny = float(jnp.finfo(dtype).tiny)
    mag = np.maximum(np.maximum(np.abs(got), np.abs(want)), tiny)
    ulp = 2.0 ** np.floor(np.log2(mag)) * eps
    slack = 0.0 if terms is None else 2.0 * float(jnp.finfo(jnp.float32).eps) * np.asarray(terms, np.float64)
    return np.maximum(np.abs(got - want) - slack, 0.0) / ulp


def terms(d):
    """|x_scale| |w_scale| (|x| @ |w|^T) + |bias| in float64: a bound on what the epilogue adds. On a GPU the
    FP8 tensor cores accumulate with fewer than f32's bits, so there a further ``GPU_ACC_SLACK`` of it is
    forgiven; in interpret mode the accumulation is exact f32."""
    ax = np.abs(np.asarray(d["x"].astype(jnp.float32), np.float64))
    aw = np.abs(np.asarray(d["w"].astype(jnp.float32), np.float64))
    y = kref.scaled_mm_f64(ax, aw, np.abs(np.asarray(d["xs"])), np.abs(np.asarray(d["ws"])))
    y = y * (1.0 + GPU_ACC_SLACK / (2.0 * float(jnp.finfo(jnp.float32).eps)))
    b = d["b"]
    return y if b is None else y + np.abs(np.asarray(jnp.asarray(b).astype(jnp.float32), np.float64))[None, :]


def f64(d):
    b = None if d["b"] is None else np.asarray(jnp.asarray(d["b"]).astype(jnp.float32))
    return kref.scaled_mm_f64(np.asarray(d["x"].astype(jnp.float32)), np.asarray(d["w"].astype(jnp.float32)),
                              d["xs"], d["ws"], b)


class TestFp8ScaledMm(KernelContract):
    OP = "fp8_scaled_mm"
    # shapes are ragged in M and small enough for interpret mode; each exercises its variant's structure
    VARIANTS = [
        Variant(backend="pallas_triton", name="decode_fma", shape=(1, 96, 48),
                config=C(block_m=1, block_n=16, block_k=32, inner="fma", num_warps=2)),
        Variant(backend="pallas_triton", name="decode_wx", shape=(5, 128, 48),
                config=C(block_m=16, block_n=16, block_k=32, inner="wx")),
        Variant(backend="pallas_triton", name="decode_xw", shape=(13, 192, 64),
                config=C(block_m=16, block_n=32, block_k=64, inner="xw")),
        Variant(backend="pallas_triton", name="split_k", shape=(7, 192, 32),
                config=C(block_m=16, block_n=16, block_k=32, split_k=3, inner="wx")),
        Variant(backend="pallas_triton", name="prefill_grouped", shape=(37, 64, 48),
                config=C(block_m=16, block_n=16, block_k=32, group_m=2, num_warps=4)),
        # (the K-split path of the shared Mosaic core is tested with INT8: interpret mode is slow enough to ration)
        Variant(backend="pallas_mosaic_gpu", name="skinny", shape=(13, 96, 128),
                config=pallas_mosaic_gpu.Config(block_n=64, block_k=32, stages=2)),
    ]
    FLAVORS = FLAVORS
    ENTRY_SHAPE = (9, 64, 32)
    PALLAS = (pallas_triton, "fp8_scaled_mm_pallas")

    def data(self, rng, m, k, n, flavor):
        if flavor == "realistic":
            xq, xs = quant.scaled_fp8_quant(jnp.asarray(rng.standard_normal((m, k)) * 3, jnp.float32), per_token=True)
            w = rng.standard_normal((n, k)) * rng.uniform(0.1, 2.0, (n, 1))
            ws = jnp.asarray(np.abs(w).max(axis=1) / 448.0, jnp.float32)
            wq = jnp.asarray(np.clip(w / np.asarray(ws)[:, None], -448, 448), jnp.float32).astype(F8)
            return dict(x=xq, w=wq, xs=xs, ws=ws, b=jnp.asarray(rng.standard_normal(n), jnp.float32))
        if flavor.startswith("serving"):
            d = grid_data(rng, m, k, n, True, True, True)
            return dict(d, b=d["b"].astype(jnp.bfloat16))  # a model-dtype bias is added in f32 too
        scale, bias = flavor.split("-")
        return grid_data(rng, m, k, n, *SCALES[scale], bias == "bias")

    def out_dtype(self, flavor):
        if flavor.startswith("serving"):
            return {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}[flavor.split("-")[1]]
        if flavor == "realistic":
            return jnp.float32
        return OUT[FLAVORS.index(flavor) % 3]

    def run(self, variant, d, flavor, out_dtype=None):
        fn = (pallas_triton.fp8_scaled_mm_pallas if variant.backend == "pallas_triton"
              else pallas_mosaic_gpu.fp8_scaled_mm_mosaic)
        return fn(d["x"], d["w"], d["xs"], d["ws"], d["b"], out_dtype=out_dtype or self.out_dtype(flavor),
                  config=variant.config)

    def check(self, y, d, flavor):
        out_dtype = self.out_dtype(flavor)
        assert y.shape == (d["x"].shape[0], d["w"].shape[0]) and y.dtype == out_dtype
        if flavor == "realistic":
            want = f64(d)
            err = np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max()
            assert err <= (2e-3 if ON_GPU else 1e-6), err
            return
        t = terms(d)
        assert ulp_diff(y, fp8_scaled_mm_xla(**self._xla_args(d), out_dtype=out_dtype), out_dtype, t).max() <= 1.0
        assert ulp_diff(y, f64(d), out_dtype, t).max() <= 1.0

    def test_realistic_bf16_is_the_f32_result_rounded(self):
        """bf16 output of realistic data within one bf16 ulp of the same kernel's f32 output."""
        v = self.VARIANTS[1]
        m, k, n = v.shape
        d = self.data(np.random.default_rng(11), m, k, n, "realistic")
        y32 = self.run(v, d, "realistic", jnp.float32)
        y16 = self.run(v, d, "realistic", jnp.bfloat16)
        assert ulp_diff(y16, y32.astype(jnp.bfloat16), jnp.bfloat16).max() <= 1.0

    @staticmethod
    def _xla_args(d):
        return dict(x_q=d["x"], w_q=d["w"], x_scale=d["xs"], w_scale=d["ws"], bias=d["b"])

    def entry(self, d, impl):
        return kernels.fp8_scaled_mm(d["x"], d["w"], d["xs"], d["ws"], d["b"], impl=impl)

    def entry_check(self, got, want, d):
        assert got.dtype == jnp.bfloat16 and ulp_diff(got, want, jnp.bfloat16, terms(d)).max() <= 1.0


def test_entry_scale_forms_and_mosaic():
    """Scales in the other accepted forms ((1,) and [M] / [N, 1]) reach the kernels too."""
    d = grid_data(np.random.default_rng(3), 9, 64, 64, True, True, True)
    want = kernels.fp8_scaled_mm(d["x"], d["w"], d["xs"], d["ws"], d["b"], impl="xla")
    for impl in ("pallas", "mosaic"):
        got = kernels.fp8_scaled_mm(d["x"], d["w"], d["xs"].reshape(9), d["ws"].reshape(64, 1), d["b"], impl=impl)
        assert ulp_diff(got, want, jnp.bfloat16, terms(d)).max() <= 1.0, impl


def test_entry_pallas_rejects_unaligned_and_fnuz():
    x = jnp.ones((4, 40), F8)
    with pytest.raises(ValueError, match="w_q: K = 40 must be a multiple of 16"):
        kernels.fp8_scaled_mm(x, jnp.ones((32, 40), F8), 1.0, 1.0, impl="pallas")
    with pytest.raises(ValueError, match="w_q: N = 24 must be a multiple of 16"):
        kernels.fp8_scaled_mm(jnp.ones((4, 32), F8), jnp.ones((24, 32), F8), 1.0, 1.0, impl="pallas")
    fnuz = jnp.ones((4, 32), jnp.float8_e4m3fnuz)
    with pytest.raises(TypeError, match="x_q: the Pallas FP8 kernel takes float8_e4m3fn"):
        kernels.fp8_scaled_mm(fnuz, jnp.ones((16, 32), jnp.float8_e4m3fnuz), 1.0, 1.0, impl="pallas")
    with pytest.raises(TypeError, match="out_dtype: expected bfloat16, float16 or float32"):
        pallas_triton.fp8_scaled_mm_pallas(jnp.ones((4, 32), F8), jnp.ones((16, 32), F8), 1.0, 1.0,
                                           out_dtype=jnp.int32)


def test_auto_falls_back_to_xla_for_fnuz_on_a_gpu(monkeypatch):
    """Where choose_impl says "pallas" but the kernel cannot take the dtype, auto runs XLA (and works)."""
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setattr(pallas_triton, "fp8_scaled_mm_pallas", lambda *a, **k: pytest.fail("Pallas was called"))
    fnuz = jnp.ones((4, 32), jnp.float8_e4m3fnuz)
    y = kernels.fp8_scaled_mm(fnuz, jnp.ones((16, 32), jnp.float8_e4m3fnuz), 1.0, 1.0, impl="auto")
    assert y.shape == (4, 16) and float(y[0, 0]) == 32.0


def test_entry_mosaic_shape_errors():
    with pytest.raises(ValueError, match="w_q: N = 48 must be a multiple of 64"):
        kernels.fp8_scaled_mm(jnp.ones((2, 64), F8), jnp.ones((48, 64), F8), 1.0, 1.0, impl="mosaic")
    with pytest.raises(ValueError, match="Mosaic GPU kernel is for M <= 128"):
        kernels.fp8_scaled_mm(jnp.ones((129, 64), F8), jnp.ones((64, 64), F8), 1.0, 1.0, impl="mosaic")
    with pytest.raises(ValueError, match="impl: expected one of"):
        kernels.fp8_scaled_mm(jnp.ones((2, 64), F8), jnp.ones((64, 64), F8), 1.0, 1.0, impl="triton")
    with pytest.raises(ValueError, match="Config.block_n: expected a power of two >= 64"):
        pallas_mosaic_gpu.Config(block_n=32)


def test_fit_shrinks_blocks_to_the_shape():
    fit = pallas_triton.fit
    c = fit(C(block_m=16, block_n=256, block_k=512, split_k=4, inner="wx"), m=3, k=4096, n=14336)
    assert (c.block_m, c.block_n, c.block_k, c.split_k) == (16, 256, 512, 4)
    c = fit(C(block_m=128, block_n=256, block_k=128, group_m=8), m=100, k=4096, n=4096 + 16)
    assert (c.block_m, c.block_n, c.block_k) == (128, 16, 128)
    c = fit(C(block_m=1, block_n=64, block_k=512, inner="fma"), m=2, k=4096, n=4096)
    assert (c.inner, c.block_m) == ("wx", 16)  # fma is for one row only
    c = fit(C(block_m=16, block_n=64, block_k=256, split_k=4, inner="wx"), m=1, k=96, n=64)
    assert (c.split_k, c.block_k) == (3, 32)  # 96 = 3 splits of one 32-deep step
    c = fit(C(block_m=16, block_n=64, block_k=256, inner="xw"), m=4, k=48, n=64)  # K = 16 * 3: one-row fma tiles
    assert (c.inner, c.block_m, c.block_k) == ("fma", 1, 16)
    with pytest.raises(ValueError, match="must be multiples of 16"):
        fit(C(block_m=16, block_n=64, block_k=256), m=4, k=40, n=64)


def test_odd_k_falls_back_and_stays_exact():
    d = grid_data(np.random.default_rng(5), 3, 48, 32, True, True, True)
    y = pallas_triton.fp8_scaled_mm_pallas(d["x"], d["w"], d["xs"], d["ws"], d["b"], out_dtype=jnp.float32,
                                           config=C(block_m=16, block_n=64, block_k=256))
    want = fp8_scaled_mm_xla(d["x"], d["w"], d["xs"], d["ws"], d["b"], out_dtype=jnp.float32)
    assert ulp_diff(y, want, jnp.float32, terms(d)).max() <= 1.0


def test_config_validation_errors():
    with pytest.raises(ValueError, match="inner: expected one of"):
        C(block_m=16, block_n=16, block_k=32, inner="mma")
    with pytest.raises(ValueError, match="block_n: expected a power of two, got 48"):
        C(block_m=16, block_n=48, block_k=32)
    with pytest.raises(ValueError, match="inner='fma' needs block_m == 1"):
        C(block_m=16, block_n=16, block_k=32, inner="fma")
    with pytest.raises(ValueError, match="tensor-core tiles need"):
        C(block_m=8, block_n=16, block_k=32)
    with pytest.raises(ValueError, match="split_k: expected a positive int"):
        C(block_m=16, block_n=16, block_k=32, split_k=0)
    with pytest.raises(TypeError):
        C(16, 16, 32)  # keyword-only


def test_select_uses_the_table_then_defaults():
    cfg = C(block_m=16, block_n=128, block_k=256, split_k=2, inner="wx", num_warps=8)
    table = {"16@4096x14336": cfg}
    assert pallas_triton.select(16, 4096, 14336, table) == cfg
    assert pallas_triton.select(9, 4096, 14336, table) == cfg  # same bucket (2..16)
    default_64 = pallas_triton.fit(pallas_triton.DEFAULTS["64"], 17, 4096, 14336)
    assert pallas_triton.select(17, 4096, 14336, table) == default_64
    assert pallas_triton.select(16, 4096, 14336, {}) == pallas_triton.fit(pallas_triton.DEFAULTS["16"], 16, 4096, 14336)
    # defaults split K when N alone gives too few programs (N = 2048 -> 64 blocks of 32 -> 4 splits)
    assert pallas_triton.select(16, 4096, 2048, {}).split_k == 4
    assert pallas_triton.select(4096, 4096, 2048, {}).split_k == 1  # never for prefill tiles


def test_every_table_config_is_valid_for_its_shape():
    for family, table in pallas_triton.TUNED.items():
        for key, cfg in table.items():
            bucket, _, shape = key.partition("@")
            k, n = (int(v) for v in shape.split("x"))
            m = 8192 if bucket == "max" else int(bucket)
            assert pallas_triton.fit(cfg, m, k, n) == cfg, (family, key)


# ---------------------------------------------------------------- the cuBLASLt epilogue form (EPILOGUE, session 7)

def test_cublaslt_epilogue_keeps_cpu_results_and_lowers_the_rewriter_pattern_for_cuda(monkeypatch):
    """``EPILOGUE = "cublaslt"``: off CUDA the same bits as "separate"; lowered for CUDA, one dot of the
    dequantized f32 operands straight to bf16 (XLA's FP8 GEMM pattern), no multiply or convert after it."""
    import jax

    from quark_jax.kernels.fp8_scaled_mm import xla

    d = grid_data(np.random.default_rng(21), 33, 64, 48, False, False, False)
    d["x"] = jnp.asarray(np.random.default_rng(2).normal(0, 40, (33, 64)).clip(-448, 448), jnp.float32).astype(F8)
    want = fp8_scaled_mm_xla(d["x"], d["w"], d["xs"], d["ws"])
    monkeypatch.setattr(xla, "EPILOGUE", "cublaslt")

    def f(x, w, xs, ws):  # a fresh function: the switch is read when traced
        return kernels.fp8_scaled_mm(x, w, xs, ws, impl="xla")

    got = jax.jit(f)(d["x"], d["w"], d["xs"], d["ws"])
    if ON_GPU:  # cuBLASLt's epilogue order and accumulator: within one bf16 ulp (+ the accumulator's slack)
        assert ulp_diff(got, want, jnp.bfloat16, terms(d)).max() <= 1.0
    else:
        np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))
    cuda = jax.jit(f).trace(d["x"], d["w"], d["xs"], d["ws"]).lower(lowering_platforms=("cuda",)).as_text()
    dot = [ln for ln in cuda.splitlines() if "dot_general" in ln]
    assert len(dot) == 1 and "tensor<33x64xf32>, tensor<48x64xf32>) -> tensor<33x48xbf16>" in dot[0], dot
    assert "stablehlo.convert %" + dot[0].split("=")[0].strip()[1:] not in cuda
    # bias, f32 output and per-channel scales keep the separate form everywhere
    dch = grid_data(np.random.default_rng(22), 5, 32, 16, False, True, True)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda *a: kernels.fp8_scaled_mm(*a, impl="xla"))(
            dch["x"], dch["w"], dch["xs"], dch["ws"], dch["b"])).view(np.uint16),
        np.asarray(fp8_scaled_mm_xla(dch["x"], dch["w"], dch["xs"], dch["ws"], dch["b"])).view(np.uint16))
    monkeypatch.setattr(xla, "EPILOGUE", "fused")
    with pytest.raises(ValueError, match="EPILOGUE"):
        fp8_scaled_mm_xla(d["x"], d["w"], d["xs"], d["ws"])


def test_fp8_dequant_dot_is_the_product_rounded_once():
    """The rewriter form as written (CPU: f32 products of the scaled values, f32 sums, one bf16 rounding; a GPU:
    one cuBLASLt FP8 call) is within one bf16 ulp of float64 ``x_s w_s sum q_x q_w`` on realistic data (K = 512, |acc| ~ 60^2 sqrt(K))."""
    from quark_jax.kernels.fp8_scaled_mm.xla import fp8_dequant_dot

    rng = np.random.default_rng(23)
    x = jnp.asarray(rng.normal(0, 60, (24, 512)).clip(-448, 448), jnp.float32).astype(F8)
    w = jnp.asarray(rng.normal(0, 60, (40, 512)).clip(-448, 448), jnp.float32).astype(F8)
    xs, ws = jnp.float32(0.0123 / 60), jnp.float32(0.0071 / 60)
    want = (np.float64(xs) * np.float64(ws)) * (np.asarray(x, np.float64) @ np.asarray(w, np.float64).T)
    got = fp8_dequant_dot(x, w, xs, ws)
    assert got.dtype == jnp.bfloat16
    # f32 sums of K rounded products: relative error <= ~K * 2^-24 of sum |terms| before the bf16 rounding
    t = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(w, np.float64)).T * float(xs) * float(ws)
    gpu = GPU_ACC_SLACK / (2.0 * float(jnp.finfo(jnp.float32).eps))  # cuBLASLt's FP8 accumulator on a GPU
    assert ulp_diff(got, want, jnp.bfloat16, t * (512 / 2 + gpu)).max() <= 1.0


def test_single_alpha_differs_from_the_nested_scales_by_one_rounding():
    """cuBLASLt's ``(s_a s_b) * acc`` against ``s_a * (s_b * acc)`` (docs/SPEC.md section 3): the f32 values differ
    in ~37% of elements, the bf16 results in ~6e-6 of them, by one bf16 ulp at most (2^20 elements)."""
    import ml_dtypes

    rng = np.random.default_rng(24)
    acc = (rng.normal(0, 1, 1 << 20) * 60 * 60 * 64).astype(np.float32)
    sx, sw = np.float32(0.0123 / 60), np.float32(0.0071 / 60)
    nested = (sx * (sw * acc).astype(np.float32)).astype(np.float32)
    alpha = (np.float32(sx * sw) * acc).astype(np.float32)
    b_n = nested.astype(ml_dtypes.bfloat16).view(np.int16).astype(np.int32)
    b_a = alpha.astype(ml_dtypes.bfloat16).view(np.int16).astype(np.int32)
    assert 0.2 < (nested != alpha).mean() < 0.6
    assert np.abs(b_n - b_a).max() <= 1 and (b_n != b_a).mean() < 1e-4
