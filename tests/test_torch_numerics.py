"""quark_jax.ptq.torch_numerics against torch 2.13's CPU kernels: tests/fixtures/torch_numerics holds inputs and
torch's outputs (make_torch_numerics.py, the machine the Quark fixtures were made on) at sizes past the tiny
model's: RMSNorm's mean of squares up to 9000 wide (cascade levels 0-2), softmax rows of 5..130 (vector tails),
SiLU over exp's range ends, float32 / bf16 GEMMs with K up to 2048 (MKL's K blocks) and attention's probs @ v.
Every value must be bit-identical."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from quark_jax.ptq import torch_numerics as tn

DATA = np.load(Path(__file__).parent / "fixtures" / "torch_numerics" / "torch_numerics.npz")


def _run(fn, *args):
    with jax.enable_x64(True):
        return np.asarray(jax.jit(fn)(*args))


def _same(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    bad = np.flatnonzero(got.view(np.int32) != want.view(np.int32))
    assert bad.size == 0, f"{bad.size} of {got.size} differ, e.g. {got.flat[bad[0]]!r} != {want.flat[bad[0]]!r}"


def test_reference_was_made_by_torch_2_13_avx512():
    assert str(DATA["torch_version"]).startswith("2.13") and str(DATA["cpu_capability"]) == "AVX512"


@pytest.mark.parametrize("n", [7, 64, 100, 1000, 4096, 8192, 9000])
def test_mean_of_squares(n):
    """RMSNorm's ``x.pow(2).mean(-1)``: ATen's cascade sum, then / n."""
    x = DATA[f"mean_sq_{n}_x"]
    _same(_run(lambda x: tn._f32(tn._d(tn.aten_sum_lastdim(tn._mul(x, x))) / n), x), DATA[f"mean_sq_{n}_y"][:, 0])


def test_softmax_and_silu():
    for n in (5, 13, 77, 130):
        _same(_run(tn._softmax_f32, DATA[f"softmax_{n}_x"]), DATA[f"softmax_{n}_y"])
    _same(_run(lambda g: tn._silu(g, jnp.float32), DATA["silu_x"]), DATA["silu_y"])


def test_gemms():
    bf16 = ml_dtypes.bfloat16
    for k in (64, 300, 2048):
        x, w = DATA[f"linear_{k}_x"], DATA[f"linear_{k}_w"]
        _same(_run(lambda x, w: tn.linear_fma(x, w, jnp.float32), x, w.T), DATA[f"linear_{k}_y"])
        xb, wb = (a.astype(bf16).astype(np.float32) for a in (x, w))
        _same(_run(lambda x, w: tn.linear_fma(x, w, jnp.bfloat16), xb, wb.T).astype(np.float32),
              DATA[f"linear_bf16_{k}_y"])
    for s in (16, 300):
        _same(_run(lambda a, b: tn._bmm(a, b, jnp.float32), DATA[f"bmm_{s}_a"], DATA[f"bmm_{s}_b"]),
              DATA[f"bmm_{s}_y"])


def test_sleef_exp_is_not_the_correctly_rounded_exp():
    """The mirrored exp is SLEEF's (what softmax and SiLU use), which differs from the correctly rounded one in
    the last bit for some inputs; on those, torch's softmax above agrees with SLEEF."""
    x = np.linspace(-20, 20, 20001, dtype=np.float32)
    got = _run(tn.sleef_expf, x)
    cr = np.exp(x.astype(np.float64)).astype(np.float32)
    diff = np.abs(got.view(np.int32).astype(np.int64) - cr.view(np.int32))
    assert diff.max() == 1 and 0 < np.count_nonzero(diff) < x.size // 5  # measured: 9.5%
