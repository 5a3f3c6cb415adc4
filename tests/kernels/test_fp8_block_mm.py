"""Block-scaled FP8 GEMM backends (``KernelContract``) against the XLA reference and float64 numpy.

Exact data: fp8 codes times power-of-two block scales with small magnitudes, so every product and f32 partial sum
is exact and the kernel (one f32 dot per group, scaled, summed) equals the reference (both operands dequantized,
one f32 dot) bit for bit; vLLM-quantized random data agrees to f32 rounding.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from kernels.base import KernelContract, Variant
from quark_jax import kernels, quant
from quark_jax.kernels.fp8_block_mm import pallas_triton
from quark_jax.kernels.fp8_block_mm.xla import fp8_block_mm_xla

C = pallas_triton.Config


def f64_reference(d):
    rows, cols = d["block"]
    xs = np.repeat(np.asarray(d["xs"], np.float64), cols, axis=1)
    ws = np.repeat(np.repeat(np.asarray(d["ws"], np.float64), rows, axis=0)[:d["w"].shape[0]], cols, axis=1)
    x = np.asarray(d["x"].astype(jnp.float32), np.float64) * xs
    w = np.asarray(d["w"].astype(jnp.float32), np.float64) * ws
    return x @ w.T + (np.asarray(d["bias"], np.float64) if d["bias"] is not None else 0.0)


def make(rng, m, k, n, flavor, block):
    rows, cols = block
    x = jnp.asarray(rng.integers(-8, 9, (m, k)), jnp.float32).astype(jnp.float8_e4m3fn)
    w = jnp.asarray(rng.integers(-8, 9, (n, k)), jnp.float32).astype(jnp.float8_e4m3fn)
    xs = jnp.asarray(2.0 ** rng.integers(-3, 3, (m, k // cols)), jnp.float32)
    ws = jnp.asarray(2.0 ** rng.integers(-3, 3, (-(-n // rows), k // cols)), jnp.float32)
    bias = jnp.asarray(rng.integers(-8, 9, n) / 4, jnp.float32) if flavor == "bias" else None
    return dict(x=x, w=w, xs=xs, ws=ws, bias=bias, block=block)


class TestFp8BlockMm(KernelContract):
    OP = "fp8_block_mm"
    # (config, block): two weight scale rows per column tile with a K split; column tiles inside one scale row
    # with ragged M; FP8 wgmma dots (kernels.triton_fp8_dot) on 128-element groups (ragged M, two scale rows), f32
    # promotion every 32 K elements or once per group (exact data: exact on the GPU too, sums of 32 or 128 products
    # of integers <= 8 stay integers <= 8192), the latter with the scales loaded one group ahead (one scale row);
    # column slices (subtiles: one weight scale row each; or both inside one) with the lagged or prefetched rescale
    VARIANTS = [
        Variant(backend="pallas_triton", name="two_scale_rows_split_k", shape=(3, 128, 64),
                config=C(block_m=16, block_n=32, split_k=2)),
        Variant(backend="pallas_triton", name="ragged_rows_inside_scale_row", shape=(37, 64, 64),
                config=C(block_m=32, block_n=16)),
        Variant(backend="pallas_triton", name="wgmma_groups_of_128", shape=(20, 256, 64),
                config=C(block_m=16, block_n=64, mma="wgmma")),
        Variant(backend="pallas_triton", name="wgmma_promote_once_per_group_prefetch", shape=(5, 256, 32),
                config=C(block_m=16, block_n=32, mma="wgmma", promote=128, prefetch=True)),
        Variant(backend="pallas_triton", name="wgmma_two_slices_lagged_rescale", shape=(20, 256, 64),
                config=C(block_m=16, block_n=64, mma="wgmma", promote=128, subtiles=2, lag=True)),
        Variant(backend="pallas_triton", name="slices_inside_scale_row_prefetch", shape=(37, 64, 64),
                config=C(block_m=32, block_n=64, subtiles=2, prefetch=True)),
    ]
    BLOCKS = {(3, 128, 64): (16, 32), (37, 64, 64): (64, 32), (20, 256, 64): (32, 128),
              (5, 256, 32): (32, 128)}  # (M, K, N) -> the weight's scale block
    FLAVORS = ["bias", "nobias"]
    VARIANT_FLAVORS = ["bias", "nobias", "bias", "nobias", "bias", "bias"]  # one flavor per variant (VARIANTS order)
    ENTRY_SHAPE = (2, 64, 32)
    PALLAS = (pallas_triton, "fp8_block_mm_pallas")

    def flavors_for(self, variant):
        return [self.VARIANT_FLAVORS[self.VARIANTS.index(variant)]]

    def data(self, rng, m, k, n, flavor):
        return make(rng, m, k, n, flavor, self.BLOCKS.get((m, k, n), (16, 32)))

    def run(self, variant, d, flavor):
        return pallas_triton.fp8_block_mm_pallas(d["x"], d["w"], d["xs"], d["ws"], d["bias"], block=d["block"],
                                                 out_dtype=jnp.float32, config=variant.config)

    def check(self, got, d, flavor):
        assert got.shape == (d["x"].shape[0], d["w"].shape[0]) and got.dtype == jnp.float32
        want = fp8_block_mm_xla(d["x"], d["w"], d["xs"], d["ws"], d["bias"], block=d["block"], out_dtype=jnp.float32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(got, np.float64), f64_reference(d))

    def entry(self, d, impl):
        return kernels.fp8_block_mm(d["x"], d["w"], d["xs"], d["ws"], d["bias"], block=d["block"], impl=impl)

    def entry_check(self, got, want, d):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


def test_vllm_quantized_random_data_within_f32_rounding():
    """vLLM's quantizers on random data, a partial last weight scale row (N = 48, rows 32): f32 order only."""
    rng = np.random.default_rng(3)
    xq, xs = quant.per_token_group_quant_fp8(jnp.asarray(rng.standard_normal((5, 64)), jnp.float32), 32)
    wq, ws = quant.quantize_fp8_per_block(jnp.asarray(rng.standard_normal((48, 64)), jnp.float32), (32, 32))
    d = dict(x=xq, w=wq, xs=xs, ws=ws, bias=None, block=(32, 32))
    got = pallas_triton.fp8_block_mm_pallas(xq, wq, xs, ws, block=(32, 32), out_dtype=jnp.float32,
                                            config=C(block_m=16, block_n=16))
    want = f64_reference(d)
    assert np.abs(np.asarray(got, np.float64) - want).max() <= 1e-6 * np.abs(want).max()


def test_config_mma_options(monkeypatch):
    """``Config()`` is "native"; the defaults above 64 rows are FP8 wgmma promoting once per group with prefetch
    (native where the Triton rule is missing); ``promote`` is validated."""
    assert C().mma == "native" and pallas_triton.default_config(64, 4096, 14336, 128).mma == "native"
    for m in (65, 512, 2048):
        cfg = pallas_triton.default_config(m, 4096, 14336, 128)
        wide = m > 512  # the "max" bucket: 128x256 tiles in two 128-column slices
        assert (cfg.mma, cfg.promote, cfg.prefetch, cfg.block_m, cfg.block_n, cfg.subtiles) == (
            "wgmma", 128, True, 128, 256 if wide else 128, 2 if wide else 1)
    monkeypatch.setattr(pallas_triton.triton_fp8_dot, "TRITON_RULE", False)
    assert pallas_triton.default_config(2048, 4096, 14336, 128) == pallas_triton.WGMMA_FALLBACK["max"]
    assert pallas_triton.fit(C(mma="wgmma", promote=128), 2048, 32, 14336).mma == "wgmma"
    with pytest.raises(ValueError, match="Config.mma: expected one of"):
        C(mma="fp16")
    with pytest.raises(ValueError, match="at least 32 K elements"):
        C(mma="wgmma", promote=16)


@pytest.mark.parametrize("name", sorted(pallas_triton.CANDIDATES))
def test_prefill_candidates_exact_on_gpu(name):
    """Each benchmarked prefill config, compiled (GPU only; interpret mode would take minutes): ragged M, exact."""
    import jax

    if jax.default_backend() != "gpu":
        pytest.skip("compiled-kernel check: the variants above cover the same code paths in interpret mode")
    d = make(np.random.default_rng(5), 300, 512, 512, "bias", (128, 128))
    got = pallas_triton.fp8_block_mm_pallas(d["x"], d["w"], d["xs"], d["ws"], d["bias"], block=(128, 128),
                                            out_dtype=jnp.float32, config=pallas_triton.CANDIDATES[name])
    TestFp8BlockMm().check(got, d, "bias")


def test_entry_errors_name_the_argument():
    d = make(np.random.default_rng(0), 2, 64, 32, "bias", (16, 32))
    with pytest.raises(ValueError, match=r"x_scale: expected shape \(2, 2\)"):
        kernels.fp8_block_mm(d["x"], d["w"], d["xs"][:, :1], d["ws"], block=(16, 32))
    with pytest.raises(ValueError, match=r"w_scale: expected shape \(2, 2\)"):
        kernels.fp8_block_mm(d["x"], d["w"], d["xs"], d["ws"][:1], block=(16, 32))
    with pytest.raises(ValueError, match="K = 64 must be a multiple of 48"):
        kernels.fp8_block_mm(d["x"], d["w"], d["xs"], d["ws"], block=(16, 48))
    with pytest.raises(TypeError, match="x_q: expected dtype float8_e4m3fn"):
        kernels.fp8_block_mm(d["x"].astype(jnp.bfloat16), d["w"], d["xs"], d["ws"], block=(16, 32))
