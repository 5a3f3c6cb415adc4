"""The GEMM entry points: XLA references against float64 numpy, and validation errors.

Backend-vs-reference tests of every kernel run in the shared base (tests/kernels/base.py); what ``impl="auto"``
picks is tested in test_choose_impl.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
from quark_jax import kernels, quant

OUT = [jnp.bfloat16, jnp.float16, jnp.float32]


def rel_err(got, want):
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def out_tol(dtype):
    return {jnp.bfloat16: 2**-8, jnp.float16: 2**-11, jnp.float32: 1e-6}[dtype]


@pytest.mark.parametrize("out_dtype", OUT)
@pytest.mark.parametrize("per_token,per_channel,with_bias", [(False, False, False), (True, True, True),
                                                               (True, False, True), (False, True, False)])
def test_fp8_xla_reference(out_dtype, per_token, per_channel, with_bias):
    rng = np.random.default_rng(0)
    m, k, n = 19, 96, 48
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    xq, xs = quant.scaled_fp8_quant(jnp.asarray(x), per_token=per_token)
    wq = jnp.asarray(w / 0.01).clip(-448, 448).astype(jnp.float8_e4m3fn)
    ws = jnp.asarray(rng.uniform(0.005, 0.02, n) if per_channel else 0.01, jnp.float32)
    b = jnp.asarray(rng.standard_normal(n), jnp.float32) if with_bias else None
    y = kernels.fp8_scaled_mm(xq, wq, xs, ws, b, out_dtype=out_dtype, impl="xla")
    assert y.shape == (m, n) and y.dtype == out_dtype
    want = kref.scaled_mm_f64(np.asarray(xq).astype(np.float32), np.asarray(wq).astype(np.float32), xs, ws, b)
    assert rel_err(y, want) <= out_tol(out_dtype)


@pytest.mark.parametrize("mode", ["sym", "per_tensor_azp", "per_token_azp"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_xla_reference(mode, with_bias):
    rng = np.random.default_rng(1)
    m, k, n = 13, 64, 32
    x = rng.standard_normal((m, k)).astype(np.float32) + 0.7
    wq = jnp.asarray(rng.integers(-128, 128, (n, k)), jnp.int8)
    ws = jnp.asarray(rng.uniform(0.001, 0.01, n), jnp.float32)
    b = jnp.asarray(rng.standard_normal(n), jnp.float32) if with_bias else None
    if mode == "sym":
        xq, xs, _ = quant.scaled_int8_quant(jnp.asarray(x))
        adj, azp = None, None
    elif mode == "per_tensor_azp":
        xq, xs, z = quant.scaled_int8_quant(jnp.asarray(x), jnp.float32(0.02), jnp.int32(-30))
        adj, azp = quant.compute_azp_adj(wq, z), None
    else:
        xq, xs, azp = quant.scaled_int8_quant(jnp.asarray(x), symmetric=False)
        adj = quant.compute_azp_adj(wq, 1)
    y = kernels.int8_scaled_mm(xq, wq, xs, ws, b, azp_adj=adj, azp=azp, out_dtype=jnp.float32, impl="xla")
    want = kref.scaled_mm_f64(xq, wq, xs, ws, b, adj, azp)
    assert rel_err(y, want) <= 1e-6
    # and the azp path really dequantizes the activations: compare with the float product
    xd = (np.asarray(xq, np.float64) - (0 if azp is None and adj is None else
                                         (np.asarray(azp) if azp is not None else -30))) * np.asarray(xs, np.float64)
    yf = xd @ (np.asarray(wq, np.float64) * np.asarray(ws, np.float64)[:, None]).T + (0 if b is None else np.asarray(b))
    assert rel_err(y, yf) <= 1e-6


@pytest.mark.parametrize("quantize_input", [True, False])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_mxfp4_xla_reference(quantize_input, dtype):
    rng = np.random.default_rng(2)
    m, k, n = 5, 128, 32
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    wp, wsc = quant.quantize_mxfp4(jnp.asarray(rng.standard_normal((n, k)), jnp.float32))
    b = jnp.asarray(rng.standard_normal(n), jnp.float32)
    y = kernels.mxfp4_mm(x, wp, wsc, b, quantize_input=quantize_input, impl="xla")
    assert y.dtype == dtype
    want = kref.mxfp4_mm_f64(np.asarray(x.astype(jnp.float32)), np.asarray(wp), np.asarray(wsc), b, quantize_input)
    assert rel_err(y, want) <= (2**-8 if dtype == jnp.bfloat16 else 1e-6)


def test_entry_validation_errors():
    f8 = jnp.zeros((4, 32), jnp.float8_e4m3fn)
    with pytest.raises(TypeError, match="x_q: expected dtype float8_e4m3fn"):
        kernels.fp8_scaled_mm(jnp.zeros((4, 32), jnp.int32), f8, 1.0, 1.0)
    with pytest.raises(TypeError, match="w_q: expected dtype float8_e4m3fn"):  # float x takes a quantized weight
        kernels.fp8_scaled_mm(jnp.zeros((4, 32)), jnp.zeros((4, 32)), 1.0, 1.0)
    with pytest.raises(ValueError, match="w_q: contraction size 16 does not match x_q's K = 32"):
        kernels.fp8_scaled_mm(f8, jnp.zeros((16, 16), jnp.float8_e4m3fn), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"x_scale: expected a scalar or shape \(4, 1\)"):
        kernels.fp8_scaled_mm(f8, f8, jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match=r"w_scale: expected a scalar or shape \(4,\)"):
        kernels.fp8_scaled_mm(f8, f8, 1.0, jnp.ones(5))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\)"):
        kernels.fp8_scaled_mm(f8, f8, 1.0, 1.0, jnp.ones(3))
    with pytest.raises(ValueError, match="impl: expected one of"):
        kernels.fp8_scaled_mm(f8, f8, 1.0, 1.0, impl="cuda")
    i8 = jnp.zeros((4, 32), jnp.int8)
    with pytest.raises(ValueError, match="azp: a per-token zero point needs azp_adj"):
        kernels.int8_scaled_mm(i8, i8, 1.0, 1.0, azp=jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match="x: K = 48 must be a multiple of 32"):
        kernels.mxfp4_mm(jnp.zeros((2, 48)), jnp.zeros((4, 24), jnp.uint8), jnp.zeros((4, 1), jnp.uint8))
    with pytest.raises(ValueError, match=r"w_scales: expected shape \(4, 2\)"):
        kernels.mxfp4_mm(jnp.zeros((2, 64)), jnp.zeros((4, 32), jnp.uint8), jnp.zeros((4, 1), jnp.uint8))
