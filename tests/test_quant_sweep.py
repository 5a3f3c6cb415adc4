"""SPEC section 7 item 5: random sweeps of every quantizer against the independent numpy reference."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy as ref
from quark_jax import quant

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
SHAPES = [(3, 32), (7, 1024), (5, 4096)]


def make_input(shape, dtype, seed):
    """Random rows with per-block magnitudes from 1e-4 to 1e4, a zero row, a zero block and fp8-range outliers."""
    rng = np.random.default_rng(seed)
    t, k = shape
    x = rng.standard_normal((t, k))
    block_scale = 10.0 ** rng.uniform(-4, 4, size=(t, k // 32, 1))
    x = (x.reshape(t, k // 32, 32) * block_scale).reshape(t, k)
    x[0] = 0.0
    if t > 1:
        if k > 32:
            x[1, :32] = 0.0  # a zero block
        x[1, -1] = 3000.0  # past the fp8 range for a unit scale
    if jnp.dtype(dtype) == jnp.float16:
        x = np.clip(x, -60000, 60000)
    return np.asarray(jnp.asarray(x, dtype))  # round once to the input dtype


def seed_of(*parts):
    return zlib.crc32(repr(parts).encode())


def as_f32(a):
    return np.asarray(jnp.asarray(a).astype(jnp.float32))


def fp8_bits(a):
    return np.asarray(a).view(np.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_sweep(dtype, shape):
    x = make_input(shape, DTYPES[dtype], seed=seed_of(dtype, shape))
    xs = x.astype(np.float32)
    # static
    q, s = quant.scaled_fp8_quant(jnp.asarray(x), jnp.float32(0.37))
    rq, _ = ref.fp8_static(xs, 0.37)
    np.testing.assert_array_equal(fp8_bits(q), fp8_bits(rq))
    # dynamic per-token
    q, s = quant.scaled_fp8_quant(jnp.asarray(x), per_token=True)
    rq, rs = ref.fp8_dynamic_per_token(xs)
    np.testing.assert_array_equal(np.asarray(s), rs)
    np.testing.assert_array_equal(fp8_bits(q), fp8_bits(rq))
    assert not np.isnan(as_f32(q)).any()
    assert (as_f32(q)[0] == 0).all()  # the all-zero row
    # dynamic per-token with an upper bound
    q, s = quant.scaled_fp8_quant(jnp.asarray(x), per_token=True, scale_ub=100.0)
    rq, rs = ref.fp8_dynamic_per_token(xs, ub=100.0)
    np.testing.assert_array_equal(np.asarray(s), rs)
    np.testing.assert_array_equal(fp8_bits(q), fp8_bits(rq))
    # dynamic per-tensor
    q, s = quant.scaled_fp8_quant(jnp.asarray(x))
    rq, rs = ref.fp8_dynamic_per_tensor(xs)
    assert float(s) == float(rs)
    np.testing.assert_array_equal(fp8_bits(q), fp8_bits(rq))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_sweep(dtype, shape):
    x = make_input(shape, DTYPES[dtype], seed=seed_of(1, dtype, shape))
    xs = x.astype(np.float32)
    s0 = float(np.abs(xs).max()) / 300.0  # many values saturate
    q, _, _ = quant.scaled_int8_quant(jnp.asarray(x), jnp.float32(s0))
    np.testing.assert_array_equal(np.asarray(q), ref.int8_static_sym(xs, np.float32(s0)))
    q, _, z = quant.scaled_int8_quant(jnp.asarray(x), jnp.float32(s0), jnp.int32(-7))
    np.testing.assert_array_equal(np.asarray(q), ref.int8_static_asym(xs, np.float32(s0), -7))
    q, s, z = quant.scaled_int8_quant(jnp.asarray(x))
    rq, rs = ref.int8_dynamic_sym(xs)
    assert z is None
    np.testing.assert_array_equal(np.asarray(q), rq)
    np.testing.assert_array_equal(np.asarray(s), rs)
    # asymmetric dynamic: compare rows that are not constant (the constant zero row is our documented guard)
    q, s, z = quant.scaled_int8_quant(jnp.asarray(x), symmetric=False)
    rows = slice(1, None)
    rq, rs, rz = ref.int8_dynamic_asym(xs[rows])
    np.testing.assert_array_equal(np.asarray(q)[rows], rq)
    np.testing.assert_array_equal(np.asarray(s)[rows], rs)
    np.testing.assert_array_equal(np.asarray(z)[rows], rz)
    # dequantizes back within half a step
    err = np.abs((np.asarray(q, np.float32) - np.asarray(z)) * np.asarray(s) - xs)
    assert (err <= 0.5001 * np.asarray(s) + 1e-30).all()


def test_int8_dynamic_degenerate_rows_never_nan():
    x = jnp.array([[0.0, 0.0, 0.0], [2.5, 2.5, 2.5], [-1.0, -1.0, -1.0]], jnp.float32)
    for sym in (True, False):
        q, s, z = quant.scaled_int8_quant(x, symmetric=sym)
        zz = 0 if z is None else np.asarray(z)
        back = (np.asarray(q, np.float32) - zz) * np.asarray(s)
        assert np.isfinite(back).all()
        np.testing.assert_allclose(back, np.asarray(x), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_mxfp4_sweep(dtype, shape):
    x = make_input(shape, DTYPES[dtype], seed=seed_of(2, dtype, shape))
    out = quant.qdq_mxfp4(jnp.asarray(x))
    assert out.dtype == DTYPES[dtype]
    np.testing.assert_array_equal(as_f32(out), ref.mxfp4_qdq(x.astype(np.float32)).astype(np.float32))
    packed, scales = quant.quantize_mxfp4(jnp.asarray(x))
    rp, rsc = ref.mxfp4_quantize(x.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(scales), rsc)
    np.testing.assert_array_equal(np.asarray(packed), rp)
    deq = quant.dequantize_mxfp4(packed, scales, jnp.float32)
    np.testing.assert_array_equal(np.asarray(deq), ref.mxfp4_dequantize(rp, rsc).astype(np.float32))
    # quantize -> dequantize equals qdq (up to the sign of zero)
    np.testing.assert_array_equal(np.asarray(deq) + 0.0, as_f32(out) + 0.0)


def test_mxfp4_dequant_all_codes_and_scale_bytes():
    codes = np.arange(16, dtype=np.uint8)
    packed = (codes[None, :] | (codes[::-1][None, :] << 4)).repeat(255, axis=0)  # 255 rows x 16 bytes: K = 32
    scales = np.arange(255, dtype=np.uint8)[:, None]
    got = np.asarray(quant.dequantize_mxfp4(jnp.asarray(packed), jnp.asarray(scales), jnp.float32))
    want = ref.mxfp4_dequantize(packed, scales)  # float64, exact
    tiny = np.finfo(np.float32).tiny
    normal = (np.abs(want) >= tiny) & (np.abs(want) <= np.finfo(np.float32).max)
    np.testing.assert_array_equal(got[normal], want[normal].astype(np.float32))
    # float32 subnormal results: exact, or flushed to zero on backends that flush subnormals (XLA on CPU does)
    sub = (want != 0) & (np.abs(want) < tiny)
    assert ((got[sub] == 0) | (got[sub] == want[sub].astype(np.float32))).all()
    # past the float32 range (6 * 2**127): infinity of the right sign, never NaN
    big = np.abs(want) > np.finfo(np.float32).max
    assert big.any() and np.isinf(got[big]).all() and (np.sign(got[big]) == np.sign(want[big])).all()
    np.testing.assert_array_equal(got[want == 0], 0)
