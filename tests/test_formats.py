import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from quark_jax import formats


def test_fp8_limits_match_ml_dtypes():
    assert formats.FP8_E4M3FN_MAX == float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
    assert formats.FP8_E4M3FNUZ_MAX == float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fnuz).max)
    assert formats.fp8_max(jnp.float8_e4m3fn) == 448.0
    assert formats.fp8_max(jnp.float8_e4m3fnuz) == 224.0
    with pytest.raises(TypeError, match="dtype"):
        formats.fp8_max(jnp.float32)


def test_e2m1_table_matches_ml_dtypes_float4():
    codes = np.arange(16, dtype=np.uint8)
    # ml_dtypes float4_e2m1fn stores a code in the low 4 bits of a byte
    from_ml = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(formats.e2m1_values_np(), from_ml)
    assert np.signbit(formats.e2m1_values_np()[8])


@pytest.mark.parametrize("byte", [0, 1, 2, 100, 126, 127, 128, 200, 253, 254])
def test_e8m0_to_float32_exact(byte):
    got = np.asarray(formats.e8m0_to_float32(jnp.array([byte], jnp.uint8)))[0]
    assert got == np.float32(np.ldexp(1.0, byte - 127))
    # agrees with ml_dtypes' own E8M0 type
    assert got == np.array([byte], np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)[0]


def test_pack_unpack_roundtrip_all_codes():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(5, 64), dtype=np.uint8)
    packed = formats.pack_nibbles(jnp.asarray(codes))
    assert packed.shape == (5, 32) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(packed), codes[:, 0::2] | (codes[:, 1::2] << 4))
    np.testing.assert_array_equal(np.asarray(formats.unpack_nibbles(packed)), codes)


def test_low_nibble_is_even_element_like_bitcast_to_float4():
    # SPEC: lax.bitcast_convert_type(u8, float4_e2m1fn) gives the low nibble first
    byte = jnp.array([0x61], jnp.uint8)
    from jax import lax
    pair = lax.bitcast_convert_type(byte, jnp.float4_e2m1fn).astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(pair).ravel(), [0.5, 4.0])
    np.testing.assert_array_equal(np.asarray(formats.unpack_nibbles(byte)), [1, 6])


def test_pack_rejects_odd_length_and_unpack_rejects_non_uint8():
    with pytest.raises(ValueError, match="codes"):
        formats.pack_nibbles(jnp.zeros(3, jnp.uint8))
    with pytest.raises(TypeError, match="packed"):
        formats.unpack_nibbles(jnp.zeros(3, jnp.int32))
