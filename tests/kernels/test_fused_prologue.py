"""The activation-quantization prologue of the Pallas FP8 / INT8 GEMMs (``quark_jax.kernels.prologue``): a float x
with a static per-tensor scale is quantized inside the kernel, and must give bit for bit what the unfused path
gives (``quant.scaled_fp8_quant`` / ``quant.scaled_int8_quant``, then the same kernel on the codes).

Data: ragged M, K not a multiple of the K block where the variant masks K, a bias, values that saturate (|x| far
past the range), NaN and +-inf, and values that sit on rounding ties of the division. On CPU the kernels run in
interpret mode; on a CUDA GPU these same tests run the compiled kernels (``div.rn.f32`` / ``cvt.rni.sat`` PTX).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.base import rng
from quark_jax import kernels, quant
from quark_jax.kernels import prologue
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas
from quark_jax.kernels.int8_scaled_mm import pallas_triton as int8_pallas

F8 = jnp.float8_e4m3fn
C8 = fp8_pallas.Config
CI = int8_pallas.Config


def activations(r, m, k, dtype, scale):
    """Gaussian activations spanning the quantizer's range, with saturating values, NaN, +-inf and exact
    division ties (odd multiples of scale / 2) planted in the first row."""
    x = r.standard_normal((m, k)) * (200.0 * scale)
    x[0, :6] = [np.nan, np.inf, -np.inf, 1e6 * scale, -1e6 * scale, 2.5 * scale]
    x[-1, :4] = [0.5 * scale, 1.5 * scale, -2.5 * scale, 1e-30]
    return jnp.asarray(x, jnp.float32).astype(dtype)


def same(a, b):
    a = np.asarray(jnp.asarray(a).astype(jnp.float32))
    b = np.asarray(jnp.asarray(b).astype(jnp.float32))
    return np.array_equal(a, b, equal_nan=True)


FP8_CASES = [  # (name, (M, K, N), config, x dtype, with bias)
    ("fma_m1", (1, 96, 32), C8(block_m=1, block_n=16, block_k=32, inner="fma", num_warps=2), jnp.bfloat16, True),
    ("wx_ragged", (5, 128, 32), C8(block_m=16, block_n=16, block_k=32, inner="wx"), jnp.float16, False),
    ("split_k", (7, 192, 32), C8(block_m=16, block_n=16, block_k=32, split_k=3, inner="wx"), jnp.bfloat16, True),
    ("xw_grouped", (37, 64, 48), C8(block_m=16, block_n=16, block_k=32, group_m=2), jnp.float32, True),
]


@pytest.mark.parametrize("name,shape,config,dtype,with_bias", FP8_CASES, ids=[c[0] for c in FP8_CASES])
def test_fp8_fused_equals_unfused(name, shape, config, dtype, with_bias):
    m, k, n = shape
    r = rng("fp8_prologue", name)
    s = jnp.float32(r.uniform(0.01, 0.05))
    x = activations(r, m, k, dtype, float(s))
    w = jnp.asarray(np.clip(r.standard_normal((n, k)) * 100, -448, 448), jnp.float32).astype(F8)
    ws = jnp.float32(0.0037)
    b = jnp.asarray(r.standard_normal(n), dtype) if with_bias else None
    q, _ = quant.scaled_fp8_quant(x, s)
    fused = fp8_pallas.fp8_scaled_mm_pallas(x, w, s, ws, b, out_dtype=dtype, config=config)
    unfused = fp8_pallas.fp8_scaled_mm_pallas(q, w, s, ws, b, out_dtype=dtype, config=config)
    assert fused.dtype == jnp.dtype(dtype) and fused.shape == (m, n)
    assert same(fused, unfused)


def test_fp8_prologue_codes_exact():
    """The in-kernel codes themselves: an identity weight and unit scales make the output the codes (exact in
    f32), compared with the reference quantizer on every element (ties, saturation, NaN, inf, subnormals)."""
    r = rng("fp8_prologue_codes")
    m, k = 3, 64
    s = jnp.float32(3.0 / 448.0)  # 1 / s is inexact in f32: the correctly rounded reciprocal matters
    x = activations(r, m, k, jnp.bfloat16, float(s))
    eye = jnp.eye(k, dtype=jnp.float32).astype(F8)
    got = fp8_pallas.fp8_scaled_mm_pallas(x, eye, s, jnp.float32(1.0), out_dtype=jnp.float32,
                                          config=C8(block_m=16, block_n=32, block_k=32, inner="wx"))
    want = quant.scaled_fp8_quant(x, s)[0].astype(jnp.float32) * s
    assert same(got, want)


INT8_CASES = [  # (name, (M, K, N), config, x dtype, zero point, with bias)
    ("gemv_m1_sym", (1, 96, 48), CI(block_m=16, block_n=16, block_k=32, kind="gemv"), jnp.bfloat16, None, True),
    ("mma_kmask_asym", (5, 96, 48), CI(block_m=16, block_n=16, block_k=64), jnp.bfloat16, -7, True),
    ("swap_split_sym", (7, 128, 32), CI(block_m=16, block_n=16, block_k=32, split_k=2, swap_ab=True),
     jnp.float16, None, False),
    ("grouped_asym", (37, 64, 48), CI(block_m=16, block_n=16, block_k=32, group_m=2), jnp.float32, 11, True),
]


@pytest.mark.parametrize("name,shape,config,dtype,zp,with_bias", INT8_CASES, ids=[c[0] for c in INT8_CASES])
def test_int8_fused_equals_unfused(name, shape, config, dtype, zp, with_bias):
    m, k, n = shape
    r = rng("int8_prologue", name)
    s = jnp.float32(r.uniform(0.01, 0.05))
    x = activations(r, m, k, dtype, float(s))
    w = jnp.asarray(r.integers(-127, 128, (n, k)), jnp.int8)
    ws = jnp.asarray(r.uniform(0.001, 0.01, n), jnp.float32)
    b = jnp.asarray(r.standard_normal(n), dtype) if with_bias else None
    z = None if zp is None else jnp.int32(zp)
    q, _, _ = quant.scaled_int8_quant(x, s, z, symmetric=z is None)
    adj = None if z is None else quant.compute_azp_adj(w, z)
    fused = int8_pallas.int8_scaled_mm_pallas(x, w, s, ws, b, azp_adj=adj, x_zero_point=z, out_dtype=dtype,
                                              config=config)
    unfused = int8_pallas.int8_scaled_mm_pallas(q, w, s, ws, b, azp_adj=adj, out_dtype=dtype, config=config)
    assert same(fused, unfused)


@pytest.mark.parametrize("zp", [None, -3])
def test_int8_prologue_codes_exact(zp):
    """The in-kernel codes: an identity weight, unit scales and f32 output give the int codes (minus the zero
    point, which azp_adj = zp * colsum(eye) takes back out) against the reference quantizer, element by element.
    The scale makes the true division differ from a multiplication by the rounded reciprocal on many inputs."""
    r = rng("int8_prologue_codes", zp)
    m, k = 3, 64
    s = jnp.float32(0.1)
    x = activations(r, m, k, jnp.float32, float(s))
    x = x.at[1].set(jnp.asarray(np.arange(k) * 0.05 - 1.6, jnp.float32))  # x / 0.1 near .5 ties
    z = None if zp is None else jnp.int32(zp)
    eye = jnp.eye(k, dtype=jnp.int8)
    adj = None if z is None else quant.compute_azp_adj(eye, z)
    # the scale that quantizes is also the one the epilogue multiplies by: the output is s * (code - zp)
    got = int8_pallas.int8_scaled_mm_pallas(x, eye, s, jnp.float32(1.0), azp_adj=adj, out_dtype=jnp.float32,
                                            config=CI(block_m=16, block_n=32, block_k=32), x_zero_point=z)
    q, _, _ = quant.scaled_int8_quant(x, s, z, symmetric=z is None)
    codes = np.asarray(q, np.int32) - (0 if zp is None else zp)
    assert same(got, np.float32(s) * codes.astype(np.float32))


def test_prologue_primitives_match_numpy():
    r = rng("prologue_primitives")
    a = jnp.asarray(r.standard_normal(4096) * 10, jnp.float32)
    b = jnp.asarray(r.uniform(0.001, 3.0, 4096), jnp.float32)
    got = np.asarray(prologue.div_rn(a, b, interpret=True))
    assert np.array_equal(got, np.asarray(a) / np.asarray(b))  # numpy float32 division is IEEE
    v = jnp.asarray([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 3e9, -3e9, np.nan, np.inf, -np.inf], jnp.float32)
    assert prologue.rni_sat_s32(v, interpret=True).tolist() == [0, 2, 2, 0, -2, 126, 2**31 - 1, -2**31, 0,
                                                                 2**31 - 1, -2**31]


def test_entry_float_activations():
    """The entries take float x with a static scalar scale on every backend (XLA: quantize, then GEMM, the
    unfused codes) and refuse a per-token scale with float x."""
    r = rng("prologue_entry")
    x = jnp.asarray(r.standard_normal((4, 64)) * 3, jnp.bfloat16)
    s = jnp.float32(0.02)
    w8 = jnp.asarray(r.standard_normal((32, 64)) * 50, jnp.float32).astype(F8)
    y = kernels.fp8_scaled_mm(x, w8, s, 0.01, impl="xla")
    assert same(y, kernels.fp8_scaled_mm(quant.scaled_fp8_quant(x, s)[0], w8, s, 0.01, impl="xla"))
    wi = jnp.asarray(r.integers(-127, 128, (32, 64)), jnp.int8)
    z = jnp.int32(5)
    yi = kernels.int8_scaled_mm(x, wi, s, 0.01, azp_adj=quant.compute_azp_adj(wi, z), x_zero_point=z, impl="xla")
    qi = quant.scaled_int8_quant(x, s, z, symmetric=False)[0]
    assert same(yi, kernels.int8_scaled_mm(qi, wi, s, 0.01, azp_adj=quant.compute_azp_adj(wi, z), impl="xla"))
    with pytest.raises(ValueError, match="static per-tensor"):
        kernels.fp8_scaled_mm(x, w8, jnp.full((4, 1), 0.02), 0.01, impl="xla")
    with pytest.raises(ValueError, match="static per-tensor"):
        kernels.int8_scaled_mm(x, wi, jnp.full((4, 1), 0.02), 0.01, impl="xla")
    with pytest.raises(ValueError, match="x_zero_point"):
        kernels.int8_scaled_mm(qi, wi, s, 0.01, x_zero_point=z, impl="xla")


# ---- transforms: the RMSNorm / SiLU-mul formed in the FP8 GEMM's prologue (llama.DECODE_PROLOGUE_FUSION)

TRANSFORM_CASES = [  # (name, (M, K, N), config): M = 1 takes the one-real-row path of the tensor-core tiles
    ("wx_m1_split", (1, 128, 32), C8(block_m=16, block_n=16, block_k=32, split_k=2, inner="wx")),
    ("wx_ragged", (5, 96, 32), C8(block_m=16, block_n=16, block_k=32, inner="wx")),
    ("fma_m1", (1, 64, 32), C8(block_m=1, block_n=16, block_k=32, inner="fma", num_warps=2)),
    ("xw_grouped_ragged", (37, 64, 48), C8(block_m=16, block_n=16, block_k=32, group_m=2)),
]


ON_GPU = jax.default_backend() == "gpu"


def same_or_silu_close(a, b, transform, impl="pallas"):
    """Bit for bit; the compiled kernel's SiLU (SPEC 11.7) may move a bf16 value by one ulp and so, now and then,
    an FP8 code by one step (2^-3 relative): then at most 2% of the outputs differ, each within 2^-2 relative
    (or a small absolute slack)."""
    if not (ON_GPU and transform == "silu_mul" and impl == "pallas"):
        return same(a, b)
    a = np.asarray(jnp.asarray(a).astype(jnp.float32))
    b = np.asarray(jnp.asarray(b).astype(jnp.float32))
    diff = a != b
    slack = 0.25 * np.abs(b) + 0.05 * np.abs(b).max()
    return diff.mean() <= 0.02 and np.all(np.abs(a - b) <= slack)


def norm_operands(r, m, k, eps=1e-5):
    """Residual rows h (bf16, a wide spread of magnitudes), their inverse RMS as the model computes it and a
    norm weight."""
    from quark_jax.models.llama import RMSNorm

    h = jnp.asarray(r.standard_normal((m, k)) * np.exp(r.uniform(-3, 3, (m, 1))), jnp.bfloat16)
    norm = RMSNorm(k, eps=eps, dtype=jnp.bfloat16)
    norm.weight.set_value(jnp.asarray(r.uniform(0.2, 2.0, k), jnp.bfloat16))
    return h, norm


@pytest.mark.parametrize("name,shape,config", TRANSFORM_CASES, ids=[c[0] for c in TRANSFORM_CASES])
def test_fp8_transform_equals_unfused(name, shape, config):
    """The GEMM with each prologue transform equals the unfused XLA composition (the model's RMSNorm module /
    ``jax.nn.silu(g) * u`` rounded once, then the quantize and the same GEMM on the codes) bit for bit, with a
    bias, ragged M and a K split."""
    m, k, n = shape
    r = rng("fp8_transform", name)
    s = jnp.float32(r.uniform(0.005, 0.02))
    w = jnp.asarray(np.clip(r.standard_normal((n, k)) * 100, -448, 448), jnp.float32).astype(F8)
    ws, b = jnp.float32(0.0037), jnp.asarray(r.standard_normal(n), jnp.bfloat16)
    h, norm = norm_operands(r, m, k)
    x_norm = norm(h)  # the decoder's RMSNorm as written (statistics and products in float32, two roundings)
    gu = jnp.asarray(r.standard_normal((m, 2 * k)) * 4, jnp.bfloat16)
    gu = gu.at[0, :3].set(jnp.asarray([-100.0, 100.0, 0.0], jnp.bfloat16))  # silu(-100) = -0 * exp, 100, 0
    g, u = gu[:, :k].astype(jnp.float32), gu[:, k:].astype(jnp.float32)
    x_silu = quant.round_to(jax.nn.silu(g) * u, jnp.bfloat16)  # llama.MLP as written
    for transform, x, kw, x_ref in [("rmsnorm", h, dict(norm_rinv=norm.inverse_rms(h), norm_weight=norm.weight[...]),
                                     x_norm), ("silu_mul", gu, {}, x_silu)]:
        fused = fp8_pallas.fp8_scaled_mm_pallas(x, w, s, ws, b, config=config, transform=transform, **kw)
        unfused = fp8_pallas.fp8_scaled_mm_pallas(quant.scaled_fp8_quant(x_ref, s)[0], w, s, ws, b, config=config)
        assert fused.shape == (m, n) and fused.dtype == jnp.bfloat16
        assert same_or_silu_close(fused, unfused, transform), transform
        assert same(prologue.transform_reference(transform, x, kw.get("norm_rinv"), kw.get("norm_weight")), x_ref)
        # the entry: Pallas forms x in the kernel, XLA runs the composition first; the same output
        for impl in ("pallas", "xla"):
            y = kernels.fp8_scaled_mm(x, w, s, ws, b, impl=impl, transform=transform, **kw)
            assert same_or_silu_close(y, unfused, transform, impl), impl


def test_fp8_transform_codes_exact():
    """The in-kernel codes of each transform, element by element: an identity weight and unit weight scale give
    ``s * code`` (exact in f32), against the reference transform quantized by ``quant.scaled_fp8_quant``."""
    r = rng("fp8_transform_codes")
    m, k = 1, 64
    s = jnp.float32(3.0 / 448.0)
    eye = jnp.eye(k, dtype=jnp.float32).astype(F8)
    h, norm = norm_operands(r, m, k)
    gu = jnp.asarray(r.standard_normal((m, 2 * k)) * 4, jnp.bfloat16)
    cfg = C8(block_m=16, block_n=32, block_k=32, inner="wx")
    for transform, x, kw in [("rmsnorm", h, dict(norm_rinv=norm.inverse_rms(h), norm_weight=norm.weight[...])),
                             ("silu_mul", gu, {})]:
        got = fp8_pallas.fp8_scaled_mm_pallas(x, eye, s, jnp.float32(1.0), out_dtype=jnp.float32, config=cfg,
                                              transform=transform, **kw)
        ref = prologue.transform_reference(transform, x, kw.get("norm_rinv"), kw.get("norm_weight"))
        assert same_or_silu_close(got, quant.scaled_fp8_quant(ref, s)[0].astype(jnp.float32) * s, transform)


def test_silu_mul_within_one_bf16_ulp_of_float64():
    """SPEC 11.7: the SiLU-mul in either form (XLA's logistic, as in interpret mode and the model; the compiled
    kernel's ``g * (1 / (1 + exp(-g)))`` with an IEEE division, emulated in numpy float32) is within one bf16
    ulp of ``silu(g) * u`` in float64 (a float32 error of a few ulp moves the bf16 rounding by at most one)."""
    r = rng("silu_mul_float64")
    g = np.asarray(jnp.asarray(np.concatenate([r.standard_normal(20000) * 4, r.uniform(-90, 90, 4000)]),
                               jnp.bfloat16).astype(jnp.float32))
    u = np.asarray(jnp.asarray(r.standard_normal(g.size) * 3, jnp.bfloat16).astype(jnp.float32))
    exact = g.astype(np.float64) / (1.0 + np.exp(-g.astype(np.float64))) * u.astype(np.float64)
    xla = np.asarray(prologue.silu_mul_tile(jnp.asarray(g, jnp.bfloat16)[None], jnp.asarray(u, jnp.bfloat16)[None],
                                            interpret=True).astype(jnp.float32))[0]
    with np.errstate(over="ignore"):
        g32 = g.astype(np.float32)
        gpu = g32 * (np.float32(1.0) / (np.float32(1.0) + np.exp(-g32))) * u
    gpu = np.asarray(jnp.asarray(gpu).astype(jnp.bfloat16).astype(jnp.float32))
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))) - 7)  # bf16: 8 significant bits
    for got in (xla, gpu):
        err = np.abs(got.astype(np.float64) - exact)
        assert np.all(err <= ulp), float(np.max(err / ulp))
    assert np.mean(np.abs(xla.astype(np.float64) - exact) <= ulp / 2) > 0.99  # mostly the correctly rounded value


def test_transform_errors():
    x = jnp.ones((2, 64), jnp.bfloat16)
    w = jnp.ones((32, 64), F8)
    with pytest.raises(ValueError, match="2K"):
        kernels.fp8_scaled_mm(x, w, jnp.float32(1.0), jnp.float32(1.0), transform="silu_mul", impl="xla")
    with pytest.raises(ValueError, match="norm_rinv"):
        kernels.fp8_scaled_mm(x, w, jnp.float32(1.0), jnp.float32(1.0), transform="rmsnorm", impl="xla")
    with pytest.raises(ValueError, match="static per-tensor"):
        kernels.fp8_scaled_mm(x.astype(F8), w, jnp.float32(1.0), jnp.float32(1.0), transform="silu_mul",
                              impl="xla")
    with pytest.raises(ValueError, match="transform"):
        kernels.fp8_scaled_mm(x, w, jnp.float32(1.0), jnp.float32(1.0), transform="gelu", impl="xla")
