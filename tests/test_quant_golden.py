"""SPEC section 7, items 1-4: golden vectors for every quantizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax import quant

BF16 = jnp.bfloat16


def f32(a):
    return np.asarray(jnp.asarray(a).astype(jnp.float32))


ROW = [1.0, -2.5, 224.0, 1000.0, 2.0**-10, 3.296875]


def test_fp8_static_golden():
    q, s = quant.scaled_fp8_quant(jnp.array(ROW, BF16), jnp.float32(0.5))
    assert q.dtype == jnp.float8_e4m3fn
    np.testing.assert_array_equal(f32(q), [2, -5, 448, 448, 0.001953125, 6.5])
    assert s.shape == () and float(s) == 0.5


def test_fp8_static_accepts_shape_1_scale():
    q, s = quant.scaled_fp8_quant(jnp.array(ROW, BF16), jnp.array([0.5], jnp.float32))
    np.testing.assert_array_equal(f32(q), [2, -5, 448, 448, 0.001953125, 6.5])
    assert s.shape == ()


def test_fp8_dynamic_per_tensor_golden():
    q, s = quant.scaled_fp8_quant(jnp.array(ROW, BF16))
    assert float(s) == np.float32(1000.0) / np.float32(448.0)
    np.testing.assert_array_equal(f32(q), [0.4375, -1.125, 104, 448, 0, 1.5])


def test_fp8_dynamic_per_token_golden():
    x = jnp.array([[0.1, -0.7, 3.0], [1e-6, 2e-6, -3e-6]], BF16)
    q, s = quant.scaled_fp8_quant(x, per_token=True)
    assert s.shape == (2, 1)
    np.testing.assert_array_equal(f32(s).ravel(), [np.float32(f32(x)[0, 2]) / np.float32(448), np.float32(1 / 229376)])
    np.testing.assert_array_equal(f32(q), [[15, -104, 448], [0.234375, 0.46875, -0.6875]])


def test_fp8_per_token_scale_ub_clamps_amax():
    x = jnp.array([[1.0, 2000.0]], jnp.float32)
    q, s = quant.scaled_fp8_quant(x, per_token=True, scale_ub=448.0)
    assert float(s[0, 0]) == 1.0
    np.testing.assert_array_equal(f32(q), [[1.0, 448.0]])


def test_int8_static_symmetric_golden():
    q, s, z = quant.scaled_int8_quant(jnp.array([0.25, 0.35, -12.8, 12.75, 100, -0.05, 0.15]), jnp.float32(0.1))
    assert q.dtype == jnp.int8 and z is None
    np.testing.assert_array_equal(np.asarray(q), [2, 4, -128, 127, 127, 0, 2])


def test_int8_static_asymmetric_golden():
    q, s, z = quant.scaled_int8_quant(jnp.array([-5, 0, 0.024, 0.026, 7.35, 100]), jnp.float32(0.05), jnp.int32(-20))
    np.testing.assert_array_equal(np.asarray(q), [-120, -20, -20, -19, 127, 127])
    assert int(z) == -20


MX_ROW = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.30078125, 0.10009765625, -6.0, 4.40625]


def _block(values, dtype=BF16):
    return jnp.zeros(32, dtype).at[: len(values)].set(jnp.array(values, dtype))


def test_mxfp4_qdq_golden():
    out = quant.qdq_mxfp4(_block(MX_ROW))
    assert out.dtype == BF16 and out.shape == (32,)
    np.testing.assert_array_equal(f32(out)[:12], [0, 1, 1, 2, 2, 4, 4, 6, -0.5, 0, -6, 4])
    np.testing.assert_array_equal(f32(out)[12:], 0)


def test_mxfp4_qdq_golden_scaled():
    out = f32(quant.qdq_mxfp4(_block(MX_ROW) * BF16(0.01)))
    expect = [0, 0.0078125, 0.015625, 0.015625, 0.0234375, 0.03125, 0.046875, 0.0625, -0.0, 0, -0.0625, 0.046875]
    np.testing.assert_array_equal(out[:12], expect)
    assert np.signbit(out[8])  # the activation path keeps -0.0


@pytest.mark.parametrize("amax,exp", [(1.74, -2), (1.75, -1), (3.49, -1), (3.5, 0), (448.0, 7)])
def test_mxfp4_amax_rounding(amax, exp):
    x = jnp.zeros((1, 32), jnp.float32).at[0, 3].set(amax)
    _, scales = quant.quantize_mxfp4(x)
    assert int(scales[0, 0]) == exp + 127


def test_mxfp4_dequant_golden():
    packed = jnp.zeros(16, jnp.uint8).at[:4].set(jnp.array([0x21, 0xF7, 0x98, 0x5C], jnp.uint8))
    base = [0.5, 1, 6, -6, -0.0, -0.5, -2, 3]
    for byte, factor in ((127, 1.0), (128, 2.0), (120, 2.0**-7)):
        out = f32(quant.dequantize_mxfp4(packed, jnp.array([byte], jnp.uint8)))
        np.testing.assert_array_equal(out[:8], np.array(base) * factor)
        assert np.signbit(out[4])
        np.testing.assert_array_equal(out[8:], 0)


def test_quantizers_jit():
    x = jnp.array([ROW, ROW[::-1]], BF16)
    q1, s1 = jax.jit(lambda v: quant.scaled_fp8_quant(v, per_token=True))(x)
    q2, s2 = quant.scaled_fp8_quant(x, per_token=True)
    np.testing.assert_array_equal(f32(q1), f32(q2))
    xm = jnp.tile(jnp.array(MX_ROW + [0.0] * 20, BF16), (2, 1))
    np.testing.assert_array_equal(f32(jax.jit(quant.qdq_mxfp4)(xm)), f32(quant.qdq_mxfp4(xm)))
    p, s = jax.jit(quant.quantize_mxfp4)(xm)
    np.testing.assert_array_equal(f32(jax.jit(quant.dequantize_mxfp4, static_argnums=2)(p, s, jnp.float32)),
                                  f32(quant.qdq_mxfp4(xm)))
