"""MXFP6 weight GEMM backends (``KernelContract``) against the XLA reference and float64 numpy (an independent FP6
decode of the packed bytes). Every dequantized weight is exact in bf16 and the activations are small integers over
4, so the kernel equals the reference bit for bit (f32 output)."""

import jax.numpy as jnp
import numpy as np
import pytest

from kernels.base import KernelContract, Variant
from quark_jax import kernels, quant
from quark_jax.kernels.mxfp6_mm import pallas_triton
from quark_jax.kernels.mxfp6_mm.xla import mxfp6_mm_xla

C = pallas_triton.Config
EM = {"fp6_e2m3": (2, 3), "fp6_e3m2": (3, 2)}


def f64_reference(d):
    """x @ W^T + b in float64 from the packed bytes: four 6-bit codes per little-endian 24-bit word."""
    ebits, mbits = EM[d["element"]]
    bias_e = 2 ** (ebits - 1) - 1
    b = np.asarray(d["w"]).astype(np.int64).reshape(d["w"].shape[0], -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = np.stack([(word >> (6 * i)) & 63 for i in range(4)], axis=-1).reshape(d["w"].shape[0], -1)
    e, m = (codes & 31) >> mbits, codes & ((1 << mbits) - 1)
    val = np.where(e == 0, m * 2.0 ** (1 - bias_e - mbits), (1 + m / 2.0 ** mbits) * 2.0 ** (e - bias_e))
    val = np.where(codes & 32, -val, val) * np.repeat(2.0 ** (np.asarray(d["s"], np.float64) - 127), 32, axis=1)
    y = np.asarray(d["x"].astype(jnp.float32), np.float64) @ val.T
    return y + (np.asarray(d["bias"], np.float64) if d["bias"] is not None else 0.0)


class TestMxfp6Mm(KernelContract):
    OP = "mxfp6_mm"
    VARIANTS = [  # ragged M, three column tiles, a K split with two K steps each (the entry test: fp6_e3m2)
        Variant(backend="pallas_triton", name="decode_split_k", shape=(3, 256, 48),
                config=C(block_n=16, block_k=64, split_k=2)),
    ]
    FLAVORS = ["fp6_e2m3-bias", "fp6_e3m2-nobias"]
    ENTRY_SHAPE = (2, 64, 32)
    PALLAS = (pallas_triton, "mxfp6_mm_pallas")

    def flavors_for(self, variant):
        return [self.FLAVORS[self.VARIANTS.index(variant)]]

    def data(self, rng, m, k, n, flavor):
        element = flavor.split("-")[0]
        w, s = quant.quantize_mx(jnp.asarray(rng.standard_normal((n, k)) * 2.0 ** rng.integers(-3, 3, (n, 1)),
                                             jnp.float32), element)
        x = jnp.asarray(rng.integers(-8, 9, (m, k)) / 4, jnp.bfloat16)
        bias = jnp.asarray(rng.integers(-8, 9, n) / 4, jnp.float32) if flavor.endswith("-bias") else None
        return dict(x=x, w=w, s=s, bias=bias, element=element)

    def run(self, variant, d, flavor):
        return pallas_triton.mxfp6_mm_pallas(d["x"], d["w"], d["s"], d["bias"], element=d["element"],
                                             out_dtype=jnp.float32, config=variant.config)

    def check(self, got, d, flavor):
        want = mxfp6_mm_xla(d["x"], d["w"], d["s"], d["bias"], element=d["element"], out_dtype=jnp.float32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_allclose(np.asarray(got, np.float64), f64_reference(d), rtol=1e-6, atol=1e-6)

    def entry(self, d, impl):
        return kernels.mxfp6_mm(d["x"], d["w"], d["s"], d["bias"], element=d["element"], impl=impl)

    def entry_check(self, got, want, d):
        assert got.dtype == d["x"].dtype
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


def test_decode_codes_every_code():
    for element, (ebits, mbits) in EM.items():
        codes = np.arange(64)
        got = np.asarray(pallas_triton.decode_codes(jnp.asarray(codes, jnp.int32), element), np.float64)
        bias_e = 2 ** (ebits - 1) - 1
        e, m = (codes & 31) >> mbits, codes & ((1 << mbits) - 1)
        ref = np.where(e == 0, m * 2.0 ** (1 - bias_e - mbits), (1 + m / 2.0 ** mbits) * 2.0 ** (e - bias_e))
        np.testing.assert_array_equal(got, np.where(codes & 32, -ref, ref))


def test_entry_errors_name_the_argument():
    w, s = quant.quantize_mx(jnp.ones((16, 64)), "fp6_e2m3")
    with pytest.raises(ValueError, match=r"w_packed: expected shape \(16, 24\)"):
        kernels.mxfp6_mm(jnp.ones((1, 32)), w, s)
    with pytest.raises(ValueError, match="element: expected one of"):
        kernels.mxfp6_mm(jnp.ones((1, 64)), w, s, element="fp4")
