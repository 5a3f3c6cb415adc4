"""``quark_jax.kernels.add_rmsnorm``: residual add + RMSNorm (+ static FP8 codes) as one Pallas-Triton kernel
against its XLA reference (the decoder's RMSNorm as written) and float64 numpy.

One parameterized test over the flavors (dtype, with / without the residual addend, with / without the FP8
output) checks h bit for bit and y bit for bit on CPU (interpret mode: the same summation as XLA), or, compiled on
a CUDA GPU (another float32 summation order), within one unit in the last place on a few elements; and y within
the bound of SPEC 11.6 from the float64 value. On a CUDA GPU these same tests run the compiled kernel.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from kernels.base import ON_GPU, rng
from quark_jax import quant
from quark_jax.kernels import tiling
from quark_jax.kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_xla, pallas_triton
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas

F8 = jnp.float8_e4m3fn
FLAVORS = [  # (name, dtype, M, H, residual, fp8 output)
    ("bf16_add", jnp.bfloat16, 3, 64, True, False),
    ("bf16_add_fp8", jnp.bfloat16, 2, 4096, True, True),
    ("f16_norm_fp8", jnp.float16, 3, 128, False, True),
    ("f32_add", jnp.float32, 2, 32, True, False),
]


def data(name, dtype, m, h, residual):
    r = rng("add_rmsnorm", name)
    x = jnp.asarray(r.standard_normal((m, h)) * 3.0, jnp.float32).astype(dtype)
    a = jnp.asarray(r.standard_normal((m, h)), jnp.float32).astype(dtype) if residual else None
    w = jnp.asarray(1.0 + 0.2 * r.standard_normal(h), jnp.float32).astype(dtype)
    return x, a, w


def ulps(a, b):
    """Distance in units in the last place of two arrays of one float dtype (bit patterns, same sign)."""
    a, b = np.asarray(a), np.asarray(b)
    ints = {1: np.int8, 2: np.int16, 4: np.int32}[a.dtype.itemsize]
    return np.abs(a.view(ints).astype(np.int64) - b.view(ints).astype(np.int64))


@pytest.mark.parametrize("name,dtype,m,h,residual,fp8", FLAVORS, ids=[f[0] for f in FLAVORS])
def test_kernel_matches_reference(name, dtype, m, h, residual, fp8):
    x, a, w = data(name, dtype, m, h, residual)
    eps = 1e-5
    scale = jnp.float32(0.02) if fp8 else None
    inv = quant.true_divide(1.0, scale) if fp8 else None
    codes = "fp8" if fp8 else None
    h_ref, y_ref = add_rmsnorm_xla(x, w, a, eps=eps, codes=codes, scale=scale, scale_reciprocal=inv)
    h_got, y_got = pallas_triton.add_rmsnorm_pallas(x, w, a, scale, inv, eps=eps, codes=codes)
    assert h_got.dtype == x.dtype and y_got.dtype == (F8 if fp8 else x.dtype)
    np.testing.assert_array_equal(np.asarray(h_got.astype(jnp.float32)), np.asarray(h_ref.astype(jnp.float32)))
    d = ulps(y_got, y_ref)
    if ON_GPU and jnp.dtype(dtype) == jnp.float32:  # another sum order moves rsqrt by an ulp: every element may
        assert d.max() <= 3, d.max()  # move by the two float32 products' ulps
    elif ON_GPU:  # another float32 summation order: rare one-ulp differences after the roundings to the dtype
        assert d.max() <= 1 and d.mean() < 0.02, (d.max(), d.mean())
    else:
        assert d.max() == 0
    # float64: h from the rounded sum, y = w * h / sqrt(mean(h^2) + eps); two roundings to the dtype (and, for
    # FP8, the code's own rounding) away
    h64 = np.asarray(h_ref.astype(jnp.float32), np.float64)
    y64 = np.asarray(w.astype(jnp.float32), np.float64) * h64 / np.sqrt((h64 ** 2).mean(-1, keepdims=True) + eps)
    u = {jnp.dtype(jnp.bfloat16): 2.0 ** -8, jnp.dtype(jnp.float16): 2.0 ** -11, jnp.dtype(jnp.float32): 2.0 ** -24}
    bound = 2.01 * u[jnp.dtype(dtype)] + (h - 1) * 2.0 ** -24  # the two roundings + the sum of squares' error
    got = np.asarray(y_got.astype(jnp.float32), np.float64)
    if fp8:  # codes: |y / scale| <= 448 here, relative step 2**-3 of e4m3 (subnormals: absolute 2**-10)
        got = got * 0.02
        assert np.all(np.abs(got - y64) <= (bound + 2.0 ** -4) * np.abs(y64) + 2.0 ** -10 * 0.02)
    else:
        assert np.all(np.abs(got - y64) <= bound * np.abs(y64) + 1e-30)


def test_entry_dispatch_and_errors():
    x, a, w = data("entry", jnp.bfloat16, 2, 48, True)  # H = 48: not a power of two
    h, y = add_rmsnorm(x, w, a, eps=1e-6)  # auto: XLA for this H (and off a GPU)
    h2, y2 = add_rmsnorm_xla(x, w, a, eps=1e-6)
    assert np.array_equal(np.asarray(y, np.float32), np.asarray(y2, np.float32))
    with pytest.raises(ValueError, match="power of two"):
        add_rmsnorm(x, w, a, eps=1e-6, impl="pallas")
    with pytest.raises(ValueError, match="both"):
        add_rmsnorm(x, w, a, eps=1e-6, codes="fp8", scale=jnp.float32(1.0))
    with pytest.raises(ValueError, match="only with codes"):
        add_rmsnorm(x, w, a, eps=1e-6, scale=jnp.float32(1.0))
    x3 = jnp.ones((1, 1, 16), jnp.bfloat16)  # [B, T, H] keeps its shape; no residual: h is x
    h3, y3 = add_rmsnorm(x3, jnp.ones(16, jnp.bfloat16), eps=0.0, impl="pallas")
    assert h3 is x3 and y3.shape == (1, 1, 16) and float(y3[0, 0, 0]) == 1.0


@pytest.mark.parametrize("per_channel", [False, True], ids=["w_per_tensor", "w_per_channel"])
def test_split_k_epilogue_in_the_kernel(per_channel):
    """A split-K GEMM's unfinished sums as the residual addend: the kernel's epilogue gives the values
    ``SplitSums.finish()`` gives (h bit for bit; elementwise products, no reordering), with FP8 codes out."""
    r = rng("add_rmsnorm", "split", per_channel)
    m, h = 2, 64
    x = jnp.asarray(r.standard_normal((m, h)) * 3.0, jnp.float32).astype(jnp.bfloat16)
    w = jnp.asarray(1.0 + 0.2 * r.standard_normal(h), jnp.float32).astype(jnp.bfloat16)
    parts = jnp.asarray(r.standard_normal((2, m, h)) * 40.0, jnp.float32)
    ws = jnp.asarray(0.01 + 0.01 * r.random(h), jnp.float32) if per_channel else jnp.float32(0.013)
    sums = tiling.SplitSums(parts, jnp.float32(0.07), ws, jnp.dtype(jnp.bfloat16))
    scale = jnp.float32(0.02)
    inv = quant.true_divide(1.0, scale)
    assert pallas_triton.takes_split_sums(sums, h, jnp.bfloat16)
    h_ref, y_ref = add_rmsnorm_xla(x, w, sums.finish(), eps=1e-5, codes="fp8", scale=scale, scale_reciprocal=inv)
    h_got, y_got = add_rmsnorm(x, w, sums, eps=1e-5, codes="fp8", scale=scale, scale_reciprocal=inv,
                               impl="pallas")
    np.testing.assert_array_equal(np.asarray(h_got.astype(jnp.float32)), np.asarray(h_ref.astype(jnp.float32)))
    assert ulps(y_got, y_ref).max() <= (1 if ON_GPU else 0)


def test_fp8_gemm_unfinished_equals_finished():
    """``fp8_scaled_mm_pallas(finish=False)`` on a split-K config: ``SplitSums`` whose ``finish()`` is the
    finished call bit for bit; a single-split config returns the array itself."""
    r = rng("add_rmsnorm", "gemm")
    x = jnp.asarray(r.standard_normal((1, 64)) * 4, jnp.float32).astype(F8)
    wq = jnp.asarray(r.standard_normal((32, 64)) * 4, jnp.float32).astype(F8)
    cfg = fp8_pallas.Config(block_m=16, block_n=32, block_k=32, split_k=2, inner="wx")
    args = (x, wq, jnp.float32(0.5), jnp.float32(0.25))
    done = fp8_pallas.fp8_scaled_mm_pallas(*args, config=cfg)
    sums = fp8_pallas.fp8_scaled_mm_pallas(*args, config=cfg, finish=False)
    assert isinstance(sums, tiling.SplitSums) and sums.parts.shape == (2, 1, 32)
    np.testing.assert_array_equal(np.asarray(sums.finish(), np.float32), np.asarray(done, np.float32))
    one = fp8_pallas.fp8_scaled_mm_pallas(*args, config=dataclasses.replace(cfg, split_k=1), finish=False)
    assert not isinstance(one, tiling.SplitSums)


@pytest.mark.parametrize("zero_point", [None, 3], ids=["symmetric", "asymmetric"])
def test_int8_codes(zero_point):
    """Static INT8 codes from the kernel equal ``quant.scaled_int8_quant`` of the normalized row (true division
    for symmetric; ``x * (1 / s)`` and the zero point for asymmetric; saturation at both ends)."""
    x, a, w = data(f"int8{zero_point}", jnp.bfloat16, 2, 128, True)
    scale = jnp.float32(0.011)
    zp = None if zero_point is None else jnp.int32(zero_point)
    h_ref, y_ref = add_rmsnorm_xla(x, w, a, eps=1e-5, codes="int8", scale=scale, zero_point=zp)
    h_got, y_got = add_rmsnorm(x, w, a, eps=1e-5, codes="int8", scale=scale, zero_point=zp, impl="pallas")
    assert y_got.dtype == jnp.int8 and int(jnp.max(y_got)) == 127 and int(jnp.min(y_got)) == -128
    np.testing.assert_array_equal(np.asarray(h_got.astype(jnp.float32)), np.asarray(h_ref.astype(jnp.float32)))
    d = np.abs(np.asarray(y_got, np.int32) - np.asarray(y_ref, np.int32))
    assert d.max() <= (1 if ON_GPU else 0)
