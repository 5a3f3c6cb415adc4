"""Quantizers see exactly their bf16 input even when XLA would skip the producer's rounding (excess precision)."""

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax import quant


def _fused_and_split(quantize):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((8, 256)), jnp.float32)
    # bf16 arithmetic: XLA computes it in f32 and may drop the bf16 rounding before the quantizer's f32 convert
    producer = lambda a: jax.nn.silu(a.astype(jnp.bfloat16)) * jnp.bfloat16(1.2345) + jnp.bfloat16(0.01)
    fused = jax.jit(lambda a: quantize(producer(a)))(a)
    split = jax.jit(quantize)(jax.jit(producer)(a))  # the bf16 value really materialized
    return fused, split


def test_fp8_per_token_fused_producer():
    f, s = _fused_and_split(lambda x: quant.scaled_fp8_quant(x, per_token=True)[0])
    np.testing.assert_array_equal(np.asarray(f).view(np.uint8), np.asarray(s).view(np.uint8))


def test_fp8_static_fused_producer():
    f, s = _fused_and_split(lambda x: quant.scaled_fp8_quant(x, jnp.float32(0.013))[0])
    np.testing.assert_array_equal(np.asarray(f).view(np.uint8), np.asarray(s).view(np.uint8))


def test_int8_and_mxfp4_fused_producer():
    f, s = _fused_and_split(lambda x: quant.scaled_int8_quant(x, jnp.float32(0.021))[0])
    np.testing.assert_array_equal(np.asarray(f), np.asarray(s))
    f, s = _fused_and_split(lambda x: quant.quantize_mxfp4(x)[0])
    np.testing.assert_array_equal(np.asarray(f), np.asarray(s))


def test_round_to_matches_cast():
    v = jnp.asarray(np.random.default_rng(1).standard_normal(1000), jnp.float32)
    np.testing.assert_array_equal(np.asarray(quant.rounding.round_to(v, jnp.bfloat16)), np.asarray(v.astype(jnp.bfloat16)))


def test_round_to_float16_keeps_subnormals():
    v = np.concatenate([np.random.default_rng(2).standard_normal(500) * 1e-6, [2.0**-24, 3 * 2.0**-25, 6.5e-5, 70000]])
    v = jnp.asarray(v, jnp.float32)
    got = np.asarray(quant.rounding.round_to(v, jnp.float16))
    np.testing.assert_array_equal(got, np.asarray(v.astype(jnp.float16)))
    assert (got != 0).sum() > 400  # most of them are float16 subnormals, not flushed
    np.testing.assert_array_equal(np.asarray(quant.exact_f32(v.astype(jnp.float16))),
                                  np.asarray(v.astype(jnp.float16).astype(jnp.float32)))
