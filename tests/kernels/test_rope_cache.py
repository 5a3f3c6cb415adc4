"""``kernels.attention.rope_cache_update``: the decode step's RoPE of q and k and the k/v cache write in one
Pallas-Triton kernel (interpret mode on the CPU), from the fused qkv output or its split-K sums: bit for bit the
XLA composition, and within bf16 rounding of a float64 rotation (numpy); untouched cache slots keep their bits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax.kernels import SplitSums, rope_cache_update

B, S, H, KV, D = 2, 8, 4, 2, 16
N = (H + 2 * KV) * D


def operands(splits, per_channel, seed=0):
    r = np.random.default_rng(seed)
    parts = jnp.asarray(r.standard_normal((max(splits, 1), B, N)) * 40, jnp.float32)
    ws = jnp.asarray(r.uniform(0.001, 0.1, N) if per_channel else 0.037, jnp.float32)
    qkv = SplitSums(parts, jnp.float32(0.013), ws, jnp.dtype(jnp.bfloat16))
    if splits == 0:  # a finished (unsplit) GEMM output
        qkv = qkv.finish()
    ang = np.arange(B)[:, None] * 3.0 + np.arange(D)[None, :] * 0.41
    cos, sin = jnp.asarray(np.cos(ang), jnp.bfloat16), jnp.asarray(np.sin(ang), jnp.bfloat16)
    kc = jnp.asarray(r.standard_normal((B, S, KV, D)), jnp.bfloat16)
    vc = jnp.asarray(r.standard_normal((B, S, KV, D)), jnp.bfloat16)
    return qkv, cos, sin, kc, vc


def bits(a):
    return np.asarray(a).view(np.uint16)


@pytest.mark.parametrize("splits,per_channel", [(0, False), (2, False), (4, True), (3, False)])
def test_pallas_equals_xla_bit_for_bit(splits, per_channel):
    qkv, cos, sin, kc, vc = operands(splits, per_channel)
    pos = jnp.int32(5)
    ref = rope_cache_update(qkv, cos, sin, kc, vc, pos, num_heads=H, num_kv_heads=KV, impl="xla")
    got = jax.jit(lambda *a: rope_cache_update(*a, num_heads=H, num_kv_heads=KV, impl="pallas"))(
        qkv, cos, sin, kc, vc, pos)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_array_equal(bits(g), bits(r))


def test_against_float64_rotation_and_untouched_slots():
    qkv, cos, sin, kc, vc = operands(4, True, seed=1)
    pos = 6
    q, kc2, vc2 = rope_cache_update(qkv, cos, sin, kc, vc, jnp.int32(pos), num_heads=H, num_kv_heads=KV)
    # independent reference: the split sums in float64, the rotation in float64 on bf16 cos/sin
    p = np.asarray(qkv.parts, np.float64)
    x = 0.013 * np.asarray(qkv.w_scale, np.float64) * p.sum(0)  # [B, N]
    c = np.asarray(cos.astype(jnp.float32), np.float64)[:, None, :]
    s = np.asarray(sin.astype(jnp.float32), np.float64)[:, None, :]

    def rot(v):
        h = D // 2
        return v * c + np.concatenate([-v[..., h:], v[..., :h]], -1) * s

    xq = x[:, :H * D].reshape(B, H, D)
    xk = x[:, H * D:(H + KV) * D].reshape(B, KV, D)
    xv = x[:, (H + KV) * D:].reshape(B, KV, D)
    f32 = lambda a: np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)
    scale = np.abs(x).max()
    # three bf16 roundings (value, products, sum): within a few 2^-8 relative to the row's magnitude
    np.testing.assert_allclose(f32(q), rot(xq), atol=2 ** -6 * scale, rtol=0)
    np.testing.assert_allclose(f32(kc2)[:, pos], rot(xk), atol=2 ** -6 * scale, rtol=0)
    np.testing.assert_allclose(f32(vc2)[:, pos], xv, atol=2 ** -8 * scale, rtol=2 ** -8)
    assert np.abs(f32(q) - rot(xq)).max() > 0  # the reference is independent (not the same roundings)
    others = [i for i in range(S) if i != pos]
    np.testing.assert_array_equal(bits(kc2)[:, others], bits(kc)[:, others])
    np.testing.assert_array_equal(bits(vc2)[:, others], bits(vc)[:, others])


def test_rejects_bad_shapes_and_fp8_cache():
    qkv, cos, sin, kc, vc = operands(0, False)
    with pytest.raises(ValueError, match="qkv"):
        rope_cache_update(qkv[:, :-D], cos, sin, kc, vc, 1, num_heads=H, num_kv_heads=KV)
    fp8 = kc.astype(jnp.float8_e4m3fn)
    with pytest.raises(ValueError, match="cache"):
        rope_cache_update(qkv, cos, sin, fp8, fp8, 1, num_heads=H, num_kv_heads=KV)
    with pytest.raises(ValueError, match="impl"):
        rope_cache_update(qkv, cos, sin, kc, vc, 1, num_heads=H, num_kv_heads=KV, impl="cuda")
