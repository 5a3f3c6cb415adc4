"""MXFP6 weight GEMM backends (``KernelContract``) against the XLA reference and float64 numpy (an independent FP6
decode of the packed bytes). Every dequantized weight is exact in bf16 and the activations are small integers over
4, so the kernel equals the reference bit for bit (f32 output)."""

import jax.numpy as jnp
import numpy as np
import pytest

from kernels.base import KernelContract, Variant
from quark_jax import formats, kernels, quant
from quark_jax.kernels.mxfp6_mm import pallas_planes, pallas_triton
from quark_jax.kernels.mxfp6_mm.xla import mxfp6_mm_xla

C = pallas_triton.Config
PC = pallas_planes.Config
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


# ------------------------------------------------------------------ the repacked (4-bit + 2-bit plane) layout

def _planes_data(rng, m, k, n, element, scale_range=(125, 130), bias=True):
    codes = jnp.asarray(rng.permuted(np.tile(np.arange(64), n * k // 64)).reshape(n, k), jnp.uint8)  # every code
    w = formats.pack_fp6(codes)
    s = jnp.asarray(rng.integers(*scale_range, (n, k // 32)), jnp.uint8)
    x = jnp.asarray(rng.integers(-8, 9, (m, k)) / 4, jnp.bfloat16)
    b = jnp.asarray(rng.integers(-8, 9, n) / 4, jnp.float32) if bias else None
    return dict(x=x, w=w, s=s, bias=b, element=element)


@pytest.mark.parametrize("element,cfg,m", [
    ("fp6_e2m3", PC(block_n=16, block_k=128, split_k=2), 17),        # ragged M (two row tiles), K split, 2 steps
    ("fp6_e3m2", PC(block_n=32, block_k=256), 3),                     # two chunks a step, one split
    ("fp6_e2m3", PC(inner="fma", block_m=1, block_n=16, block_k=128, split_k=2), 3),  # one row a program
    ("fp6_e3m2", PC(inner="fma", block_m=1, block_n=32, block_k=256), 1),
    ("fp6_e2m3", PC(inner="fma", block_m=1, block_n=16, block_k=128, prefetch=True), 1),  # 4 steps, prefetched
    ("fp6_e3m2", PC(block_n=16, block_k=128, split_k=2, prefetch=True), 5),
])
def test_planes_kernel_equals_the_reference(element, cfg, m):
    """The repacked-layout kernel (interpret mode: the jnp decode; compiled on a GPU: the PTX decode) equals the
    checkpoint-layout reference bit for bit on exact data (every code, scales 2**-2..2**2, x on a 1/4 grid: every
    f32 partial sum exact) and float64; the repack round-trips to the checkpoint bytes."""
    d = _planes_data(np.random.default_rng(11), m, 512, 64, element, bias=cfg.inner == "mma")
    hi, lo, st = kernels.mxfp6_repack(d["w"], d["s"])
    w2, s2 = kernels.mxfp6_unrepack(hi, lo, st)
    np.testing.assert_array_equal(np.asarray(w2), np.asarray(d["w"]))
    np.testing.assert_array_equal(np.asarray(s2), np.asarray(d["s"]))
    got = pallas_planes.mxfp6_mm_planes(d["x"], hi, lo, st, d["bias"], element=element, out_dtype=jnp.float32,
                                        config=cfg)
    want = mxfp6_mm_xla(d["x"], d["w"], d["s"], d["bias"], element=element, out_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got, np.float64), f64_reference(d))


def test_planes_e8m0_range_value_for_value():
    """One-hot x: each output is one dequantized weight, so the whole E8M0 range (byte 0: 2**-127 subnormal
    products, up to 250) is compared value for value with the reference, and byte 255 gives NaN as there (in
    every output of that weight row: 0 * NaN)."""
    rng = np.random.default_rng(12)
    for element in EM:
        d = _planes_data(rng, 16, 256, 32, element, scale_range=(0, 251), bias=False)
        d["s"] = d["s"].at[0, 0].set(255)
        cols = jnp.asarray([(r * 37 + 3) % 256 for r in range(16)])
        x = jnp.zeros((16, 256), jnp.bfloat16).at[jnp.arange(16), cols].set(1)
        got = kernels.mxfp6_mm_planes(x, *kernels.mxfp6_repack(d["w"], d["s"]), element=element,
                                      out_dtype=jnp.float32, impl="pallas")
        want = mxfp6_mm_xla(x, d["w"], d["s"], element=element, out_dtype=jnp.float32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        g = np.asarray(got)
        assert np.isnan(g[:, 0]).all() and not np.isnan(g[:, 1:]).any()  # weight row 0's block 0 (0 * NaN)


def test_ptx_quarter_model_equals_the_decode():
    """The numpy model of the PTX quarter decode (planes -> bf16 bits ``v * 2**(bias - 127)``) times 2**(127 -
    bias) and the block scale gives ``decode_quarter``'s weights (the jnp decode) for every code and scale bytes
    8..250; the products are exact, so the PTX's two bf16 multiplies return them. (Smaller bytes give bf16
    subnormal weights, which XLA on the CPU flushes in the f32 decode; the compiled GPU check covers bytes 0..250,
    benchmarks/int4dec_gpu_check.py.)"""
    rng = np.random.default_rng(13)
    hb = rng.integers(0, 256, (64, 32)).astype(np.uint8)
    lb = rng.integers(0, 256, (64, 32)).astype(np.uint8)
    sb = np.concatenate([[8, 9, 127, 250], rng.integers(8, 251, 60)]).astype(np.uint8)
    for element, (ebits, _) in EM.items():
        bias_e = 2 ** (ebits - 1) - 1
        for p in range(4):
            bits = pallas_planes.ptx_quarter_bits_emulated(hb, lb, p, element).astype(np.uint32) << 16
            model = bits.view(np.float32).astype(np.float64) * 2.0 ** (127 - bias_e) * 2.0 ** (sb[:, None] - 127.0)
            got = pallas_planes.decode_quarter(jnp.asarray(hb), jnp.asarray(lb), jnp.asarray(sb), p, element,
                                               jnp.bfloat16, asm=False)
            np.testing.assert_array_equal(np.asarray(got, np.float64), model)


def test_planes_entry_and_errors():
    d = _planes_data(np.random.default_rng(14), 2, 256, 32, "fp6_e3m2")
    rep = kernels.mxfp6_repack(d["w"], d["s"])
    want = kernels.mxfp6_mm(d["x"], d["w"], d["s"], d["bias"], element="fp6_e3m2", impl="xla")
    for impl in ("xla", "pallas", "auto"):
        got = kernels.mxfp6_mm_planes(d["x"], *rep, d["bias"], element="fp6_e3m2", impl=impl)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
    with pytest.raises(ValueError, match=r"lo: expected shape \(32, 64\)"):
        kernels.mxfp6_mm_planes(d["x"], rep[0], rep[1][:, :32], rep[2])
    with pytest.raises(ValueError, match=r"scales_t: expected shape \(8, 32\)"):
        kernels.mxfp6_mm_planes(d["x"], rep[0], rep[1], rep[2].T)
    with pytest.raises(ValueError, match="must be a multiple of 128"):
        kernels.mxfp6_repack(d["w"][:, :48], d["s"][:, :2])
    with pytest.raises(ValueError, match="Config.inner"):
        PC(inner="dot")
    c = pallas_planes.default_config(1, 4096, 14336)
    assert (c.inner, c.block_m, c.split_k) == ("fma", 1, 8)
