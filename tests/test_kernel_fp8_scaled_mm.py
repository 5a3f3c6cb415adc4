"""FP8 Pallas kernels against the XLA reference and a float64 numpy reference.

Parameterized over backends (``BACKENDS``: the Pallas-Triton kernel and the Mosaic GPU skinny kernel) and over
the kernel variants a backend offers (decode without tensor cores, skinny tensor-core tiles in both operand
orders, split-K, grouped prefill tiles; TMA-pipelined wgmma with and without K splits). On CPU the kernels run in
Pallas interpret mode (Mosaic GPU: JAX's GPU interpreter, which simulates TMA copies and barriers); on a CUDA GPU
the same tests run the compiled kernels.

Two kinds of data: "grid" data (fp8 values on a 1/4 grid in [-4, 4], so every f32 accumulation is exact in any
order) must match the XLA reference to one unit in the last place of the output dtype; realistic quantized data
(vLLM's dynamic quantizer on Gaussian activations, large weights) must match float64 numpy to the output
dtype's rounding.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
from quark_jax import kernels, quant
from quark_jax.kernels import _dispatch
from quark_jax.kernels.fp8_scaled_mm import configs
from quark_jax.kernels.fp8_scaled_mm import pallas_mosaic_gpu, pallas_triton
from quark_jax.kernels.fp8_scaled_mm.xla import fp8_scaled_mm_xla

F8 = jnp.float8_e4m3fn
OUT = [jnp.bfloat16, jnp.float16, jnp.float32]
ON_GPU = not _dispatch.pallas_interpret()
GPU_ACC_SLACK = 2.0**-10 if ON_GPU else 0.0
SCALES = [(False, False), (True, False), (False, True), (True, True)]  # (per_token, per_channel)


def _pallas_triton(x_q, w_q, x_scale, w_scale, bias, out_dtype, config):
    return pallas_triton.fp8_scaled_mm_pallas(x_q, w_q, x_scale, w_scale, bias, out_dtype=out_dtype, config=config)


def _pallas_mosaic(x_q, w_q, x_scale, w_scale, bias, out_dtype, config):
    return pallas_mosaic_gpu.fp8_scaled_mm_mosaic(x_q, w_q, x_scale, w_scale, bias, out_dtype=out_dtype,
                                                  config=config)


# backend -> (callable, {variant name: (config, (M, K, N))}); shapes are ragged in M and small enough for
# interpret mode, and every variant's shape exercises its structure (several row/column blocks, K steps).
BACKENDS = {
    "pallas_triton": (_pallas_triton, {
        "decode_fma": (configs.GemmConfig(1, 16, 32, inner="fma", num_warps=2), (1, 96, 48)),
        "decode_wx": (configs.GemmConfig(16, 16, 32, inner="wx"), (5, 128, 48)),
        "decode_xw": (configs.GemmConfig(16, 32, 64, inner="xw"), (13, 192, 64)),
        "split_k": (configs.GemmConfig(16, 16, 32, k_splits=3, inner="wx"), (7, 192, 32)),
        "prefill_grouped": (configs.GemmConfig(16, 16, 32, group_m=2, num_warps=4), (37, 64, 48)),
    }),
    "pallas_mosaic_gpu": (_pallas_mosaic, {
        # (the K-split path is shared with INT8 and tested there: interpret mode is slow enough to ration)
        "skinny": (pallas_mosaic_gpu.SkinnyConfig(64, 32, 2, 1), (13, 96, 128)),
    }),
}
CASES = [(b, v) for b, (_, variants) in BACKENDS.items() for v in variants]
CASE_IDS = [f"{b}-{v}" for b, v in CASES]


def _grid_data(rng, m, k, n, per_token, per_channel, with_bias):
    """fp8 operands on a 1/4 grid in [-4, 4] (exact f32 sums), positive scales, optional bias."""
    x = jnp.asarray(rng.integers(-16, 17, (m, k)) / 4, jnp.float32).astype(F8)
    w = jnp.asarray(rng.integers(-16, 17, (n, k)) / 4, jnp.float32).astype(F8)
    xs = jnp.asarray(rng.uniform(0.01, 0.1, (m, 1)) if per_token else 0.037, jnp.float32)
    ws = jnp.asarray(rng.uniform(0.001, 0.01, n) if per_channel else 0.0061, jnp.float32)
    b = jnp.asarray(rng.standard_normal(n), jnp.float32) if with_bias else None
    return x, w, xs, ws, b


def _ulp_diff(got, want, dtype, terms=None):
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


def _terms(x, w, xs, ws, b):
    """|x_scale| |w_scale| (|x| @ |w|^T) + |bias| in float64: a bound on what the epilogue adds. On a GPU the
    FP8 tensor cores accumulate with fewer than f32's bits (both cuBLASLt's and Triton's dots), so there a
    further ``GPU_ACC_SLACK`` of it is forgiven; in interpret mode the accumulation is exact f32."""
    ax = np.abs(np.asarray(x.astype(jnp.float32), np.float64))
    aw = np.abs(np.asarray(w.astype(jnp.float32), np.float64))
    y = kref.scaled_mm_f64(ax, aw, np.abs(np.asarray(xs)), np.abs(np.asarray(ws)))
    y = y * (1.0 + GPU_ACC_SLACK / (2.0 * float(jnp.finfo(jnp.float32).eps)))
    return y if b is None else y + np.abs(np.asarray(jnp.asarray(b).astype(jnp.float32), np.float64))[None, :]


def _run(case, x, w, xs, ws, b, out_dtype):
    backend, variant = case
    fn, variants = BACKENDS[backend]
    return fn(x, w, xs, ws, b, out_dtype, variants[variant][0])


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("per_token,per_channel", SCALES, ids=["tensor_tensor", "token_tensor", "tensor_channel",
                                                                "token_channel"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_xla_reference_every_scale_and_bias(case, per_token, per_channel, with_bias):
    """All scale combinations x bias, one output dtype each (rotating), against XLA to <= 1 ulp, f64 too."""
    m, k, n = BACKENDS[case[0]][1][case[1]][1]
    seed = SCALES.index((per_token, per_channel)) * 2 + with_bias
    out_dtype = OUT[seed % 3]
    x, w, xs, ws, b = _grid_data(np.random.default_rng(seed), m, k, n, per_token, per_channel, with_bias)
    y = _run(case, x, w, xs, ws, b, out_dtype)
    assert y.shape == (m, n) and y.dtype == out_dtype
    want_xla = fp8_scaled_mm_xla(x, w, xs, ws, b, out_dtype=out_dtype)
    terms = _terms(x, w, xs, ws, b)
    assert _ulp_diff(y, want_xla, out_dtype, terms).max() <= 1.0
    want64 = kref.scaled_mm_f64(np.asarray(x.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)), xs, ws, b)
    assert _ulp_diff(y, want64, out_dtype, terms).max() <= 1.0


@pytest.mark.parametrize("out_dtype", OUT, ids=["bf16", "f16", "f32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_output_dtype_per_token_per_channel_bias(case, out_dtype):
    """The serving case (per-token x per-channel + bias) in every output dtype, against XLA and float64."""
    m, k, n = BACKENDS[case[0]][1][case[1]][1]
    x, w, xs, ws, b = _grid_data(np.random.default_rng(7), m, k, n, True, True, True)
    b = b.astype(jnp.bfloat16)  # a model-dtype bias is added in f32 too
    y = _run(case, x, w, xs, ws, b, out_dtype)
    assert y.dtype == out_dtype
    terms = _terms(x, w, xs, ws, b)
    assert _ulp_diff(y, fp8_scaled_mm_xla(x, w, xs, ws, b, out_dtype=out_dtype), out_dtype, terms).max() <= 1.0
    want64 = kref.scaled_mm_f64(np.asarray(x.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)), xs, ws,
                                np.asarray(b.astype(jnp.float32)))
    assert _ulp_diff(y, want64, out_dtype, terms).max() <= 1.0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_realistic_quantized_data_against_float64(case):
    """vLLM's dynamic per-token quantizer on Gaussian activations, per-channel weights spanning the fp8 range."""
    m, k, n = BACKENDS[case[0]][1][case[1]][1]
    rng = np.random.default_rng(11)
    xq, xs = quant.scaled_fp8_quant(jnp.asarray(rng.standard_normal((m, k)) * 3, jnp.float32), per_token=True)
    w = rng.standard_normal((n, k)) * rng.uniform(0.1, 2.0, (n, 1))
    ws = jnp.asarray(np.abs(w).max(axis=1) / 448.0, jnp.float32)
    wq = jnp.asarray(np.clip(w / np.asarray(ws)[:, None], -448, 448), jnp.float32).astype(F8)
    b = jnp.asarray(rng.standard_normal(n), jnp.float32)
    y = _run(case, xq, wq, xs, ws, b, jnp.float32)
    want = kref.scaled_mm_f64(np.asarray(xq.astype(jnp.float32)), np.asarray(wq.astype(jnp.float32)), xs, ws, b)
    err = np.abs(np.asarray(y, np.float64) - want).max() / np.abs(want).max()
    assert err <= (2e-3 if ON_GPU else 1e-6), err
    y16 = _run(case, xq, wq, xs, ws, b, jnp.bfloat16)
    assert _ulp_diff(y16, y.astype(jnp.bfloat16), jnp.bfloat16).max() <= 1.0


def test_entry_impl_pallas_equals_xla_and_auto_is_valid():
    rng = np.random.default_rng(3)
    x, w, xs, ws, b = _grid_data(rng, 9, 64, 32, True, True, True)
    y_p = kernels.fp8_scaled_mm(x, w, xs, ws, b, impl="pallas")
    y_x = kernels.fp8_scaled_mm(x, w, xs, ws, b, impl="xla")
    terms = _terms(x, w, xs, ws, b)
    assert y_p.dtype == jnp.bfloat16 and _ulp_diff(y_p, y_x, jnp.bfloat16, terms).max() <= 1.0
    y_a = kernels.fp8_scaled_mm(x, w, xs, ws, b, impl="auto")
    assert _ulp_diff(y_a, y_x, jnp.bfloat16, terms).max() <= 1.0
    # scales in the other accepted forms ((1,) and [M] / [N, 1]) reach the kernel too
    y_p2 = kernels.fp8_scaled_mm(x, w, xs.reshape(9), ws.reshape(32, 1), b, impl="pallas")
    assert _ulp_diff(y_p2, y_x, jnp.bfloat16, terms).max() <= 1.0


def test_entry_pallas_rejects_unaligned_and_fnuz():
    x = jnp.ones((4, 40), F8)
    with pytest.raises(ValueError, match="w_q: K = 40 must be a multiple of 16"):
        kernels.fp8_scaled_mm(x, jnp.ones((32, 40), F8), 1.0, 1.0, impl="pallas")
    with pytest.raises(ValueError, match="w_q: N = 24 must be a multiple of 16"):
        kernels.fp8_scaled_mm(jnp.ones((4, 32), F8), jnp.ones((24, 32), F8), 1.0, 1.0, impl="pallas")
    fnuz = jnp.ones((4, 32), jnp.float8_e4m3fnuz)
    with pytest.raises(TypeError, match="x_q: the Pallas FP8 kernel takes float8_e4m3fn"):
        kernels.fp8_scaled_mm(fnuz, jnp.ones((16, 32), jnp.float8_e4m3fnuz), 1.0, 1.0, impl="pallas")
    # auto never sends fnuz to the kernel
    y = kernels.fp8_scaled_mm(fnuz, jnp.ones((16, 32), jnp.float8_e4m3fnuz), 1.0, 1.0, impl="auto")
    assert y.shape == (4, 16) and float(y[0, 0]) == 32.0
    with pytest.raises(TypeError, match="out_dtype: expected bfloat16, float16 or float32"):
        pallas_triton.fp8_scaled_mm_pallas(jnp.ones((4, 32), F8), jnp.ones((16, 32), F8), 1.0, 1.0,
                                           out_dtype=jnp.int32)


def test_entry_impl_mosaic_and_its_shape_errors():
    rng = np.random.default_rng(4)
    x, w, xs, ws, b = _grid_data(rng, 3, 64, 64, True, True, True)
    y_m = kernels.fp8_scaled_mm(x, w, xs, ws, b, impl="mosaic")
    y_x = kernels.fp8_scaled_mm(x, w, xs, ws, b, impl="xla")
    assert _ulp_diff(y_m, y_x, jnp.bfloat16, _terms(x, w, xs, ws, b)).max() <= 1.0
    with pytest.raises(ValueError, match="w_q: N = 48 must be a multiple of 64"):
        kernels.fp8_scaled_mm(jnp.ones((2, 64), F8), jnp.ones((48, 64), F8), 1.0, 1.0, impl="mosaic")
    with pytest.raises(ValueError, match="Mosaic GPU kernel is for M <= 128"):
        kernels.fp8_scaled_mm(jnp.ones((129, 64), F8), jnp.ones((64, 64), F8), 1.0, 1.0, impl="mosaic")
    with pytest.raises(ValueError, match="impl: expected one of"):
        kernels.fp8_scaled_mm(jnp.ones((2, 64), F8), jnp.ones((64, 64), F8), 1.0, 1.0, impl="triton")
    with pytest.raises(ValueError, match="SkinnyConfig.block_n: expected a power of two >= 64"):
        pallas_mosaic_gpu.SkinnyConfig(block_n=32)


def test_fit_shrinks_blocks_to_the_shape():
    fit = configs.fit
    c = fit(configs.GemmConfig(16, 256, 512, k_splits=4, inner="wx"), m=3, k=4096, n=14336)
    assert (c.block_m, c.block_n, c.block_k, c.k_splits) == (16, 256, 512, 4)
    c = fit(configs.GemmConfig(128, 256, 128, group_m=8), m=100, k=4096, n=4096 + 16)
    assert (c.block_m, c.block_n, c.block_k) == (128, 16, 128)
    c = fit(configs.GemmConfig(1, 64, 512, inner="fma"), m=2, k=4096, n=4096)
    assert (c.inner, c.block_m) == ("wx", 16)  # fma is for one row only
    c = fit(configs.GemmConfig(16, 64, 256, k_splits=4, inner="wx"), m=1, k=96, n=64)
    assert c.k_splits * c.block_k * ((96 // c.k_splits) // c.block_k) == 96 and (96 // c.k_splits) % c.block_k == 0
    c = fit(configs.GemmConfig(16, 64, 256, inner="xw"), m=4, k=48, n=64)  # K = 16 * 3: one-row fma tiles
    assert (c.inner, c.block_m, c.block_k) == ("fma", 1, 16)
    with pytest.raises(ValueError, match="must be multiples of 16"):
        fit(configs.GemmConfig(16, 64, 256), m=4, k=40, n=64)


def test_odd_k_falls_back_and_stays_exact():
    rng = np.random.default_rng(5)
    x, w, xs, ws, b = _grid_data(rng, 3, 48, 32, True, True, True)
    y = pallas_triton.fp8_scaled_mm_pallas(x, w, xs, ws, b, out_dtype=jnp.float32,
                                           config=configs.GemmConfig(16, 64, 256))
    want = fp8_scaled_mm_xla(x, w, xs, ws, b, out_dtype=jnp.float32)
    assert _ulp_diff(y, want, jnp.float32, _terms(x, w, xs, ws, b)).max() <= 1.0


def test_config_validation_errors():
    with pytest.raises(ValueError, match="inner: expected one of"):
        configs.GemmConfig(16, 16, 32, inner="mma")
    with pytest.raises(ValueError, match="block_n: expected a power of two, got 48"):
        configs.GemmConfig(16, 48, 32)
    with pytest.raises(ValueError, match="inner='fma' needs block_m == 1"):
        configs.GemmConfig(16, 16, 32, inner="fma")
    with pytest.raises(ValueError, match="tensor-core tiles need"):
        configs.GemmConfig(8, 16, 32)
    with pytest.raises(ValueError, match="k_splits: expected a positive int"):
        configs.GemmConfig(16, 16, 32, k_splits=0)


def test_select_uses_device_table_then_defaults(monkeypatch):
    cfg = configs.GemmConfig(16, 128, 256, k_splits=2, inner="wx", num_warps=8)
    monkeypatch.setitem(configs.TABLES, "testdev", {(16, 4096, 14336): cfg})
    assert configs.select(16, 4096, 14336, "testdev") == cfg
    assert configs.select(9, 4096, 14336, "testdev") == cfg  # same bucket (2..16)
    assert configs.select(17, 4096, 14336, "testdev") == configs.fit(configs._DEFAULTS[64], 17, 4096, 14336)
    # defaults split K when N alone gives too few programs (N = 2048 -> 64 blocks of 32 -> 4 splits)
    assert configs.select(16, 4096, 14336, "otherdev") == configs.fit(configs._DEFAULTS[16], 16, 4096, 14336)
    assert configs.select(16, 4096, 2048, "otherdev").k_splits == 4
    assert configs.select(4096, 4096, 2048, "otherdev").k_splits == 1  # never for prefill tiles


def test_every_table_config_is_valid_for_its_shape():
    for device, table in configs.TABLES.items():
        for (bucket, k, n), cfg in table.items():
            assert bucket in configs.M_BUCKETS, (device, bucket)
            if k is not None:
                assert configs.fit(cfg, bucket if bucket < 1 << 20 else 8192, k, n) == cfg, (device, bucket, k, n)
