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


def _scales():
    """float32 scales whose reciprocals are inexact (and a few exact ones): random, near powers of two, tiny, huge."""
    r = np.random.default_rng(7)
    s = np.concatenate([r.uniform(1e-4, 1.0, 3000), 3.0 / np.arange(1, 449), 2.0 ** np.arange(-60, 60),
                        np.nextafter(np.float32(2.0) ** np.arange(-20, 20), np.float32(np.inf)),
                        [1e-30, 3e-38, 1e30, 448.0, 1.0 / 448.0]]).astype(np.float32)
    return s


def test_reciprocal_is_correctly_rounded_traced_and_constant():
    """quant.reciprocal (no broadcast, no barrier: fusible into a quantizer) equals IEEE float32 1/s bit for bit,
    with s traced (a decode program's scale) and as a jit constant, and equals true_divide(1, s)."""
    s = _scales()
    want = (np.float32(1.0) / s).view(np.uint32)
    traced = np.asarray(jax.jit(quant.reciprocal)(jnp.asarray(s)))
    assert np.array_equal(traced.view(np.uint32), want)
    assert np.array_equal(np.asarray(quant.true_divide(1.0, jnp.asarray(s))).view(np.uint32), want)
    consts = np.asarray([jax.jit(lambda: quant.reciprocal(jnp.float32(v)))() for v in s[::601]], np.float32)
    assert np.array_equal(consts.view(np.uint32), want[::601])


def test_fp8_static_codes_same_with_fusible_reciprocal(monkeypatch):
    """scaled_fp8_quant with a static scale gives the same codes with either reciprocal (quant.fp8.FUSIBLE_RECIPROCAL),
    the scale traced inside a jitted producer -> quantizer chain (as in a decode step)."""
    import quark_jax.quant.fp8 as qfp8

    r = np.random.default_rng(3)
    x = jnp.asarray(r.standard_normal((4, 512)) * 8, jnp.float32)
    s = jnp.asarray(r.uniform(0.005, 0.05, 3), jnp.float32)
    f = lambda x, s: jnp.stack([quant.scaled_fp8_quant(jax.nn.silu(x).astype(jnp.bfloat16), si)[0] for si in s])
    monkeypatch.setattr(qfp8, "FUSIBLE_RECIPROCAL", False)
    a = np.asarray(jax.jit(f)(x, s).astype(jnp.float32))
    monkeypatch.setattr(qfp8, "FUSIBLE_RECIPROCAL", True)
    b = np.asarray(jax.jit(f)(x, s).astype(jnp.float32))
    assert np.array_equal(a, b)
    xb = np.asarray(jax.nn.silu(x).astype(jnp.bfloat16).astype(jnp.float32))
    ref = np.clip(xb[None] * (np.float32(1.0) / np.asarray(s))[:, None, None], -448, 448)  # vLLM: x * (1/s)
    assert np.array_equal(b, np.asarray(jnp.asarray(ref).astype(jnp.float8_e4m3fn).astype(jnp.float32)))
