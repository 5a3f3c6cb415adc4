"""Bad input gets a clear error naming the argument; nothing silently wrong, never NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax import quant


@pytest.mark.parametrize("fn", [
    lambda x: quant.scaled_fp8_quant(x),
    lambda x: quant.scaled_fp8_quant(x, jnp.float32(1.0)),
    lambda x: quant.scaled_int8_quant(x),
    lambda x: quant.qdq_mxfp4(x),
    lambda x: quant.quantize_mxfp4(x),
])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, jnp.bool_, jnp.float8_e4m3fn])
def test_non_float_input_is_a_type_error(fn, dtype):
    with pytest.raises(TypeError, match=r"^x: expected a floating-point array"):
        fn(jnp.zeros((2, 32), dtype))


@pytest.mark.parametrize("k", [1, 16, 33, 48])
def test_mxfp4_k_not_multiple_of_32(k):
    x = jnp.ones((2, k), jnp.float32)
    for fn in (quant.qdq_mxfp4, quant.quantize_mxfp4):
        with pytest.raises(ValueError, match=rf"x: the last \(K\) axis .* must be a multiple of 32, got {k}"):
            fn(x)


def test_dequantize_mxfp4_bad_shapes_and_dtypes():
    with pytest.raises(TypeError, match="packed: expected uint8"):
        quant.dequantize_mxfp4(jnp.zeros((2, 16), jnp.int8), jnp.zeros((2, 1), jnp.uint8))
    with pytest.raises(TypeError, match="scales: expected uint8"):
        quant.dequantize_mxfp4(jnp.zeros((2, 16), jnp.uint8), jnp.zeros((2, 1), jnp.float32))
    with pytest.raises(ValueError, match=r"scales: expected shape \(2, 1\)"):
        quant.dequantize_mxfp4(jnp.zeros((2, 16), jnp.uint8), jnp.zeros((2, 2), jnp.uint8))
    with pytest.raises(ValueError, match="packed: K"):
        quant.dequantize_mxfp4(jnp.zeros((2, 8), jnp.uint8), jnp.zeros((2, 1), jnp.uint8))


def test_static_scale_must_be_scalar():
    x = jnp.ones((3, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"scale: expected a scalar .* got shape \(3,\)"):
        quant.scaled_fp8_quant(x, jnp.ones(3))
    with pytest.raises(ValueError, match=r"scale: expected a scalar"):
        quant.scaled_int8_quant(x, jnp.ones((3, 1)))
    with pytest.raises(ValueError, match=r"azp: expected a scalar"):
        quant.scaled_int8_quant(x, jnp.float32(1.0), jnp.ones(2, jnp.int32))


def test_inconsistent_options():
    x = jnp.ones((3, 4), jnp.float32)
    with pytest.raises(ValueError, match="per_token"):
        quant.scaled_fp8_quant(x, jnp.float32(1.0), per_token=True)
    with pytest.raises(ValueError, match="scale_ub"):
        quant.scaled_fp8_quant(x, scale_ub=1.0)
    with pytest.raises(ValueError, match="azp"):
        quant.scaled_int8_quant(x, azp=jnp.int32(1))
    with pytest.raises(ValueError, match="azp"):
        quant.scaled_int8_quant(x, jnp.float32(1.0), symmetric=False)
    with pytest.raises(TypeError, match="dtype"):
        quant.scaled_fp8_quant(x, dtype=jnp.float8_e5m2)
    with pytest.raises(ValueError, match="x: expected at least 1"):
        quant.scaled_fp8_quant(jnp.float32(1.0))


def test_saturation_and_zeros_never_nan():
    big = jnp.array([[1e30, -1e30, 500.0, 0.0]], jnp.float32)
    for q, _ in (quant.scaled_fp8_quant(big, jnp.float32(1.0)), quant.scaled_fp8_quant(big, per_token=True),
                 quant.scaled_fp8_quant(big)):
        v = np.asarray(q.astype(jnp.float32))
        assert not np.isnan(v).any() and np.abs(v).max() == 448.0
    zeros = jnp.zeros((2, 64), jnp.bfloat16)
    for q, s in (quant.scaled_fp8_quant(zeros, per_token=True), quant.scaled_fp8_quant(zeros)):
        assert (np.asarray(q.astype(jnp.float32)) == 0).all() and np.isfinite(np.asarray(s)).all()
    q, s, _ = quant.scaled_int8_quant(zeros)
    assert (np.asarray(q) == 0).all()
    assert (np.asarray(quant.qdq_mxfp4(zeros).astype(jnp.float32)) == 0).all()
    p, sc = quant.quantize_mxfp4(zeros)
    assert (np.asarray(p) == 0).all() and (np.asarray(sc) == 0).all()
    # fnuz saturates at vLLM's 224
    q, _ = quant.scaled_fp8_quant(big, jnp.float32(1.0), dtype=jnp.float8_e4m3fnuz)
    assert np.abs(np.asarray(q.astype(jnp.float32))).max() == 224.0


# ---------------------------------------------------------------- non-finite input and static scales (issue 15)

def _vllm_fp8(v, m=448.0):
    """vLLM's conversion in float64 numpy: r = fmaxf(-M, fminf(v, M)) (fminf/fmaxf return the non-NaN operand)."""
    v = np.asarray(v, np.float64)
    r = np.fmax(-m, np.fmin(v, m))
    return r.astype(np.float32).astype(jnp.float8_e4m3fn).astype(np.float32)


def _vllm_amax(x):
    return np.fmax.reduce(np.abs(np.asarray(x, np.float64)), axis=-1, initial=0.0)  # fmaxf drops NaN


@pytest.mark.parametrize("clamp_first", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fp8_non_finite_equals_vllm(bad, clamp_first, monkeypatch):
    from quark_jax.quant import fp8

    monkeypatch.setattr(fp8, "CLAMP_FIRST", clamp_first)  # both forms of the clamp give vLLM's codes
    x = np.array([[1.0, -2.0, 0.5, bad, 3.0, -0.25, 7.0, 1.5]], np.float32)
    # static: q = conv(x * (1/s))
    q, _ = quant.scaled_fp8_quant(jnp.asarray(x), jnp.float32(0.5))
    np.testing.assert_array_equal(np.asarray(q, np.float32), _vllm_fp8(x.astype(np.float64) * 2.0))
    # dynamic per-token: s = max(amax/448, 1/(448*512)); q = conv(x / s)
    q, s = quant.scaled_fp8_quant(jnp.asarray(x), per_token=True)
    amax = _vllm_amax(x)
    s_ref = np.maximum(np.float32(amax / 448.0), np.float32(1 / (448 * 512)))
    np.testing.assert_array_equal(np.asarray(s)[:, 0], s_ref)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.asarray(q, np.float32), _vllm_fp8(x.astype(np.float64) / s_ref[:, None]))
    # dynamic per-tensor: q = conv(x * (1/s))
    q, s = quant.scaled_fp8_quant(jnp.asarray(x))
    assert float(s) == s_ref[0]
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.asarray(q, np.float32),
                                      _vllm_fp8(x.astype(np.float64) * np.float32(1 / s_ref[0])))
    if np.isnan(bad):  # NaN: +M, and left out of the amax
        assert float(np.asarray(q, np.float32)[0, 3]) == 448.0 and float(s) == np.float32(7.0 / 448)


def _vllm_int8(v):
    """PTX cvt.rni.sat.s8.f32: round half to even, saturate, NaN -> 0."""
    v = np.asarray(v, np.float64)
    return np.where(np.isnan(v), 0, np.clip(np.round(v), -128, 127)).astype(np.int8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_int8_non_finite_equals_vllm(bad):
    x = np.array([[1.0, -2.0, 0.5, bad, 3.0, -0.25, 7.0, 1.5]], np.float32)
    q, _, _ = quant.scaled_int8_quant(jnp.asarray(x), jnp.float32(0.05))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.asarray(q), _vllm_int8(x / np.float32(0.05)))
    q, s, _ = quant.scaled_int8_quant(jnp.asarray(x))  # dynamic symmetric: q = cvt(x * (127 / amax))
    amax = _vllm_amax(x).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(s)[:, 0], amax / np.float32(127))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.asarray(q), _vllm_int8(x * (np.float32(127) / amax[:, None])))


@pytest.mark.parametrize("scale", [0.0, -0.5, np.nan, np.inf])
def test_concrete_static_scale_must_be_finite_and_positive(scale):
    from quark_jax.errors import InvalidArgumentError

    x = jnp.ones((2, 32), jnp.float32)
    for fn in (lambda s: quant.scaled_fp8_quant(x, s), lambda s: quant.scaled_int8_quant(x, s),
               lambda s: quant.scaled_int8_quant(x, s, jnp.int32(3)),
               lambda s: quant.scaled_fp8_quant(x, per_token=True, scale_ub=s)):
        with pytest.raises(InvalidArgumentError, match=r"expected a finite static scale > 0, got"):
            fn(jnp.float32(scale))
    # traced scales are not checked (the loaders check checkpoint scales): no error, saturated codes for 0
    q, _ = jax.jit(lambda s: quant.scaled_fp8_quant(x, s))(jnp.float32(scale))
    assert q.shape == x.shape
