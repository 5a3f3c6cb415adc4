"""OCP MX (fp4, fp6_e2m3, fp6_e3m2, fp8_e4m3), the FP6 3-byte packing and INT4 packing against float64 numpy
references built from the format definitions (not from quark_jax), plus golden values."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import reference_mx

from quark_jax import formats, quant

F32 = np.float32
grid, ref_quantize, ref_pack_fp6 = reference_mx.grid, reference_mx.mx_quantize, reference_mx.pack_fp6


def data(seed=0, shape=(6, 128)):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-8, 8, (shape[0], 1)))).astype(F32)
    x[0, :32] = 0.0                                  # a zero block
    x[1, :8] = [1e-30, -1e-30, 3.0, -3.0, 7.49, 7.51, 27.9, 28.1]
    x[2, 32:64] = np.linspace(-1, 1, 32)             # ties on the grid
    return x


@pytest.mark.parametrize("name", ["fp4", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3"])
def test_mx_quantize_dequantize_qdq_match_the_reference(name):
    x = data()
    r, codes, e = ref_quantize(x, name)
    want = r * np.repeat(np.ldexp(1.0, e), 32, axis=-1)
    q, s = quant.quantize_mx(jnp.asarray(x), name)
    np.testing.assert_array_equal(np.asarray(s), (e + 127).astype(np.uint8))
    if name == "fp8_e4m3":
        np.testing.assert_array_equal(np.asarray(q).astype(np.float64), r)
    elif name == "fp4":
        np.testing.assert_array_equal(np.asarray(q), codes[..., 0::2] | (codes[..., 1::2] << 4))
        p4, s4 = quant.quantize_mxfp4(jnp.asarray(x))  # the existing MXFP4 quantizer: the same bytes
        np.testing.assert_array_equal(np.asarray(q), np.asarray(p4))
    else:
        np.testing.assert_array_equal(np.asarray(q), ref_pack_fp6(codes))
    deq = np.asarray(quant.dequantize_mx(q, s, name), np.float64)
    np.testing.assert_array_equal(deq, want)
    got = np.asarray(quant.qdq_mx(jnp.asarray(x), name), np.float64)
    np.testing.assert_array_equal(got, want)
    # bf16 activations: computed in f32, rounded once
    xb = jnp.asarray(x, jnp.bfloat16)
    want_b = ref_quantize(np.asarray(xb.astype(jnp.float32)), name)
    want_b = want_b[0] * np.repeat(np.ldexp(1.0, want_b[2]), 32, axis=-1)
    np.testing.assert_array_equal(np.asarray(quant.qdq_mx(xb, name).astype(jnp.float32), np.float64),
                                  np.asarray(jnp.asarray(want_b, jnp.float32).astype(jnp.bfloat16)
                                             .astype(jnp.float32), np.float64))


def test_mx_element_tables_and_golden_values():
    for name in ("fp4", "fp6_e2m3", "fp6_e3m2"):
        table = formats.mx_element_values_np(name).astype(np.float64)
        g = grid(name)
        half = len(table) // 2
        np.testing.assert_array_equal(table[g[:, 1].astype(int)], g[:, 0])
        np.testing.assert_array_equal(table[half:], -table[:half])
        assert table.max() == formats.mx_element(name).max
    assert formats.mx_element_values_np("fp6_e3m2")[[1, 4, 31]].tolist() == [0.0625, 0.25, 28.0]
    # e2m3 (3 mantissa bits): amax rounds up to the next binade from 1.9375 * 2**e, so 7.74 keeps scale 1 (and
    # saturates at 7.5) and 7.75 gets scale 2
    x = np.zeros((2, 32), F32)
    x[0, 0], x[1, 0] = 7.74, 7.75
    assert np.asarray(quant.quantize_mx(jnp.asarray(x), "fp6_e2m3")[1]).ravel().tolist() == [127, 128]
    # fp8 elements: scale 2**(floor(log2 amax') - 8); 448 -> 2**0, 7.75 -> 8 -> 2**-5
    x[0, 0] = 448.0
    assert np.asarray(quant.quantize_mx(jnp.asarray(x), "fp8_e4m3")[1]).ravel().tolist() == [127, 122]


def test_fp6_packing_round_trip_and_layout():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 64, (5, 64)).astype(np.uint8)
    packed = np.asarray(formats.pack_fp6(jnp.asarray(codes)))
    np.testing.assert_array_equal(packed, ref_pack_fp6(codes))
    np.testing.assert_array_equal(np.asarray(formats.unpack_fp6(jnp.asarray(packed))), codes)
    # v0 in the low 6 bits of byte 0; v1 = its 2 top bits + 4 low bits of byte 1; v3 in the top 6 bits of byte 2
    assert formats.pack_fp6(jnp.array([0x3F, 0, 0, 0], jnp.uint8)).tolist() == [0x3F, 0, 0]
    assert formats.pack_fp6(jnp.array([0, 0x3F, 0, 0], jnp.uint8)).tolist() == [0xC0, 0x0F, 0]
    assert formats.pack_fp6(jnp.array([0, 0, 0, 0x3F], jnp.uint8)).tolist() == [0, 0, 0xFC]
    with pytest.raises(ValueError, match="multiple of 3"):
        formats.unpack_fp6(jnp.zeros((4,), jnp.uint8))


@pytest.mark.parametrize("order", ["order", "reorder"])
@pytest.mark.parametrize("signed", [True, False])
def test_int4_packing_both_orders(order, signed):
    rng = np.random.default_rng(2)
    vals = rng.integers(-8, 8, (3, 32)) if signed else rng.integers(0, 16, (3, 32))
    nib = [0, 1, 2, 3, 4, 5, 6, 7] if order == "order" else [0, 2, 4, 6, 1, 3, 5, 7]
    want = np.zeros((3, 4), np.int64)
    for c in range(4):
        for i in range(8):
            want[:, c] |= (vals[:, 8 * c + nib[i]] & 0xF) << (4 * i)
    want = want.astype(np.uint32).view(np.int32)
    packed = formats.pack_int4(jnp.asarray(vals), order)
    np.testing.assert_array_equal(np.asarray(packed), want)
    np.testing.assert_array_equal(np.asarray(formats.unpack_int4(packed, order, signed=signed)), vals)


def test_nvfp4_matches_vllms_emulation_formulas():
    """vLLM's ref_nvfp4_quant in float32 numpy: s = fp8(g * (amax * f32(1/6))), x * 1/(s * 1/g) clamped to ±6 and
    rounded to E2M1 (ties to even), dequant q * (s / g)."""
    import reference_numpy as rnp

    x = data(4, (4, 64))
    g = F32(448 * 6) / np.abs(x).max().astype(F32)  # vLLM's input_global_scale for this tensor
    xb = x.astype(F32).reshape(4, 4, 16)
    vmax = np.abs(xb).max(-1, keepdims=True)
    s = np.clip(g * (vmax * (F32(1) / F32(6))), -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(F32)
    inv_g = F32(1) / g
    denom = s * inv_g
    out_scale = F32(1) / (denom + np.where(denom == 0, F32(1e8), F32(0)))
    r, _ = rnp.e2m1_round(np.clip(xb * out_scale, -6, 6).astype(np.float64))
    want = (r * (s / g).astype(np.float64)).reshape(x.shape)
    got = np.asarray(quant.qdq_nvfp4(jnp.asarray(x), g), np.float64)
    np.testing.assert_array_equal(got, want.astype(F32))
    packed, scales = quant.quantize_nvfp4(jnp.asarray(x), g)
    np.testing.assert_array_equal(np.asarray(scales.astype(jnp.float32)), s[..., 0])
    deq = np.asarray(quant.dequantize_nvfp4(packed, scales, g), np.float64)
    np.testing.assert_array_equal(deq, (r * (s * inv_g).astype(np.float64)).reshape(x.shape).astype(F32))
