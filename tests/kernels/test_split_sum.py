"""``kernels.tiling.sum_splits``: the split-K partial sums added as elementwise ops (fusible into the consumer)
give what the reduce gave: bit for bit for two splits (float) and for integers at any count."""

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax.kernels import tiling


def test_two_float_splits_bit_identical_to_reduce():
    r = np.random.default_rng(11)
    p = jnp.asarray(r.standard_normal((2, 3, 4096)) * np.exp(r.uniform(-20, 20, (2, 3, 4096))), jnp.float32)
    got = np.asarray(jax.jit(tiling.sum_splits)(p))
    want = np.asarray(p[0]) + np.asarray(p[1])  # numpy float32 add (IEEE)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(got.view(np.uint32), np.asarray(jax.jit(lambda p: p.sum(axis=0))(p)).view(np.uint32))


def test_int_splits_exact_and_float_order_is_a_left_fold():
    r = np.random.default_rng(12)
    q = r.integers(-2**30, 2**30, (4, 2, 64)).astype(np.int32)
    got = np.asarray(tiling.sum_splits(jnp.asarray(q)))
    assert np.array_equal(got, q.sum(axis=0, dtype=np.int64).astype(np.int32))  # wraps as int32 would
    f = r.standard_normal((3, 64)).astype(np.float32)
    assert np.array_equal(np.asarray(tiling.sum_splits(jnp.asarray(f))), (f[0] + f[1]) + f[2])
