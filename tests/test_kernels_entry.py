"""The GEMM entry points: XLA references against float64 numpy, validation errors, impl dispatch.

Backend-vs-reference tests of each Pallas kernel live in tests/test_kernel_<op>.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
from quark_jax import kernels, quant
from quark_jax.kernels import _dispatch

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
        kernels.fp8_scaled_mm(jnp.zeros((4, 32)), f8, 1.0, 1.0)
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


def test_auto_is_xla_without_gpu_and_tables_parse():
    if jax.default_backend() != "gpu":
        assert _dispatch.resolve_impl("fp8_scaled_mm", "auto", 1, 4096, 4096) == "xla"
    for path in _dispatch.TUNING_DIR.glob("*.json"):
        table = _dispatch.load_table(path.stem)
        for op, classes in table.items():
            assert op in ("fp8_scaled_mm", "int8_scaled_mm", "mxfp4_mm"), path
            for key in classes:
                cls, _, shape = key.partition("@")
                assert cls in {"decode", "small", "medium", "prefill"}, (path, key)
                assert not shape or all(p.isdigit() for p in shape.split("x")), (path, key)
            assert set(classes.values()) <= {"pallas", "xla"}, path


def test_auto_table_lookup_with_per_shape_exception(monkeypatch):
    table = {"int8_scaled_mm": {"prefill": "pallas", "prefill@14336x4096": "xla", "decode": "pallas"}}
    monkeypatch.setattr(_dispatch, "default_backend", lambda: "gpu")
    monkeypatch.setattr(_dispatch, "device_key", lambda: "fake_gpu")
    monkeypatch.setattr(_dispatch, "load_table", lambda device: table if device == "fake_gpu" else {})
    r = _dispatch.resolve_impl
    assert r("int8_scaled_mm", "auto", 4096, 4096, 14336) == "pallas"
    assert r("int8_scaled_mm", "auto", 4096, 14336, 4096) == "xla"
    assert r("int8_scaled_mm", "auto", 8, 14336, 4096) == "pallas"
    assert r("int8_scaled_mm", "auto", 40, 4096, 4096) == "xla"  # no entry for the class
    assert r("int8_scaled_mm", "auto", 8, 4096, 4096, pallas_supported=False) == "xla"
    assert r("int8_scaled_mm", "pallas", 8, 4096, 4096, pallas_supported=False) == "pallas"


def test_benchmark_auto_table_votes_and_exceptions():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from bench_gemm import auto_table

    def row(m, k, n, impl, t):
        return dict(op="int8", m=m, k=k, n=n, auto=impl, seconds=t)

    rows = []
    for m in (2048, 8192):
        rows += [row(m, 4096, 14336, "pallas", 1.0), row(m, 4096, 14336, "xla", 1.3)]
        rows += [row(m, 8192, 8192, "pallas", 1.0), row(m, 8192, 8192, "xla", 1.1)]
        rows += [row(m, 14336, 4096, "pallas", 1.1), row(m, 14336, 4096, "xla", 1.0)]
    rows += [row(1, 4096, 14336, "pallas", 1.0), row(1, 4096, 14336, "xla", 1.01)]
    table = auto_table(rows)
    assert table == {"int8_scaled_mm": {"prefill": "pallas", "prefill@14336x4096": "xla", "decode": "pallas"}}
