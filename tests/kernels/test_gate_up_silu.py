"""``kernels.fp8_gate_up_silu``: the fused gate_up FP8 GEMM, ``silu(gate) * up`` and the down projection's static
FP8 quantizer in one Pallas-Triton kernel (interpret mode on the CPU): bit for bit the XLA composition (the
decoder's MLP as written) in interpret mode, and within one FP8 step of a float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax.kernels import fp8_gate_up_silu
from quark_jax.kernels.fp8_scaled_mm import pallas_triton

ON_GPU = jax.default_backend() == "gpu"
K, I = 256, 64


def operands(m, per_channel, seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.standard_normal((m, K)) * 0.5, jnp.bfloat16)
    w = jnp.asarray(np.clip(r.standard_normal((2 * I, K)) * 64, -448, 448), jnp.float8_e4m3fn)
    ws = jnp.asarray(r.uniform(0.5, 2.0, 2 * I) / 64 if per_channel else 1 / 64, jnp.float32)
    return x, w, jnp.float32(8 / 448), ws, jnp.float32(3 / 448)


def codes_f32(c):
    return np.asarray(c.astype(jnp.float32))


@pytest.mark.parametrize("m,per_channel", [(1, False), (3, True), (16, False)])
def test_kernel_equals_composition(m, per_channel):
    x, w, xs, ws, os = operands(m, per_channel)
    cfg = pallas_triton.Config(block_m=16, block_n=16, block_k=64, inner="wx")  # 4 K steps, 4 programs per row block
    ref = fp8_gate_up_silu(x, w, xs, ws, os, impl="xla")
    from quark_jax import quant
    codes = quant.scaled_fp8_quant(x, xs, dtype=jnp.float8_e4m3fn)[0]
    got = pallas_triton.fp8_gate_up_silu_pallas(codes, w, xs, ws, quant.true_divide(1.0, os), config=cfg)
    assert got.shape == (m, I) and got.dtype == jnp.float8_e4m3fn
    if ON_GPU:  # the compiled SiLU: an FP8 code one step away on a few elements at most
        diff = codes_f32(got) != codes_f32(ref)
        assert diff.mean() <= 0.02
        np.testing.assert_allclose(codes_f32(got), codes_f32(ref), rtol=2 ** -3, atol=2 ** -9)
    else:
        np.testing.assert_array_equal(np.asarray(got).view(np.uint8), np.asarray(ref).view(np.uint8))
    # the entry takes the Pallas path (same result)
    np.testing.assert_array_equal(codes_f32(fp8_gate_up_silu(x, w, xs, ws, os, impl="pallas")), codes_f32(ref))


def test_against_float64():
    x, w, xs, ws, os = operands(2, True, seed=3)
    got = codes_f32(fp8_gate_up_silu(x, w, xs, ws, os, impl="pallas")) * float(os)
    from quark_jax import quant
    xq = np.asarray(quant.scaled_fp8_quant(x, xs, dtype=jnp.float8_e4m3fn)[0].astype(jnp.float32), np.float64)
    y = float(xs) * np.asarray(ws, np.float64) * (xq @ np.asarray(w.astype(jnp.float32), np.float64).T)
    g, u = y[:, :I], y[:, I:]
    ref = np.clip(g / (1 + np.exp(-g)) * u, -448 * float(os), 448 * float(os))  # the quantizer saturates
    assert (np.abs(ref) == 448 * float(os)).any() and (np.abs(ref) < 0.5).any()  # both regimes present
    # FP8 e4m3: relative step 2^-3 (half of it from rounding) plus the bf16 roundings; tiny values: subnormal steps
    np.testing.assert_allclose(got, ref, rtol=2 ** -4 + 2 ** -7, atol=2 ** -9 * float(os) * 2)
    assert np.abs(got - ref).max() > 0


def test_unsplit_tiling_only():
    cfg = pallas_triton.gate_up_config(1, 4096, 14336)
    assert cfg is None or (cfg.split_k == 1 and 14336 % cfg.block_n == 0)
    with pytest.raises(ValueError, match="I a multiple of 16"):
        fp8_gate_up_silu(jnp.ones((1, 32), jnp.bfloat16), jnp.ones((48, 32), jnp.float8_e4m3fn), 1.0, 1.0, 1.0)
