"""The schemes on synthetic fused layers (every mode, with bias, f32 and bf16) against numpy models of vLLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
import layer_reference as lref
import reference_numpy as ref
from quark_jax import CheckpointError
from quark_jax.schemes import (QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4, QuarkW8A8Fp8, QuarkW8A8Int8,
                               UnquantizedLinearMethod, apply_params, process_params)

F32 = np.float32
WIDTHS = (64, 32, 32)
K = 96
# float32 outputs of the FP8 GEMM (impl="xla"): exact f32 accumulation on CPU. On an NVIDIA GPU, XLA runs
# cuBLASLt's FP8 GEMM with fast accumulation (the Hopper tensor core's reduced-precision FP8 accumulator, as vLLM's
# CUTLASS "FP8FastAccum" kernels on SM90 do): measured 1.9e-4 here (H100, 2026-11-25), 5e-4..2.9e-3 relative at
# K = 4096..14336 (benchmarks/NOTES.md, session 3).
F32_FP8_TOL = 1e-3 if jax.default_backend() == "gpu" else 2e-6


def rel(got, want):
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    return np.abs(got - want).max() / np.abs(want).max()


def out_round(y64, dtype):
    return np.asarray(np.asarray(y64, F32).astype(dtype)).astype(np.float64)


def data(seed=0):
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal((n, K)).astype(F32) * (0.05 * (i + 1)) for i, n in enumerate(WIDTHS)]
    x = (rng.standard_normal((2, 5, K)) * 2).astype(F32)
    x[0, 0, :4] = [500.0, -500.0, 0.0, 1e-6]  # saturation and tiny values
    bias = rng.standard_normal(sum(WIDTHS)).astype(F32)
    return w, x, bias


def run_scheme(scheme, raw, x, bias, dtype):
    specs = scheme.create_weights(WIDTHS, K)
    for name, spec in specs.items():
        if name in raw:
            assert raw[name].shape == spec.shape and np.dtype(raw[name].dtype) == spec.dtype, name
    assert set(raw) <= set(specs) and all(n in raw for n, s in specs.items() if s.required)
    params = process_params(scheme, raw, WIDTHS)
    y = apply_params(scheme, params, jnp.asarray(x, dtype), jnp.asarray(bias))
    assert y.shape == (*x.shape[:-1], sum(WIDTHS)) and y.dtype == dtype
    return params, y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("weight_qscheme", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("activation", ["static", "dynamic_per_token", "dynamic_per_tensor"])
def test_fp8_scheme(weight_qscheme, activation, dtype):
    w, x, bias = data(1)
    if weight_qscheme == "per_tensor":
        scales = [F32(np.abs(wi).max() / 448) for wi in w]
        shards = [ref.fp8_cast(wi / s) for wi, s in zip(w, scales)]
        w_ref, s_w = lref.requantize_max_scale(shards, scales)
        raw_scale = np.array(scales, F32)
    else:
        raw_scale = np.concatenate([np.abs(wi).max(axis=1) / F32(448) for wi in w]).astype(F32)
        shards = [ref.fp8_cast(np.concatenate(w) / raw_scale[:, None])]
        w_ref, s_w = shards[0], raw_scale
    raw = {"weight": np.concatenate(shards), "weight_scale": raw_scale}
    scheme = QuarkW8A8Fp8(weight_qscheme=weight_qscheme, activation=activation, impl="xla")
    xs = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)).reshape(-1, K)
    if activation == "static":
        raw["input_scale"] = np.array([0.01, 0.012, 0.011], F32)
        q, s_x = ref.fp8_static(xs, F32(0.012))  # the max over shards
    elif activation == "dynamic_per_token":
        q, s_x = ref.fp8_dynamic_per_token(xs)
    else:
        q, s_x = ref.fp8_dynamic_per_tensor(xs)
    params, y = run_scheme(scheme, raw, x, bias, dtype)
    if weight_qscheme == "per_tensor":  # fused per-tensor shards end as one scalar, their max (SPEC 7 item 7)
        assert params["weight_scale"].shape == () and float(params["weight_scale"]) == max(raw_scale)
        np.testing.assert_array_equal(np.asarray(params["weight"]).view(np.uint8), w_ref.view(np.uint8))
    want = kref.scaled_mm_f64(q.astype(F32), w_ref.astype(F32), s_x, s_w, bias).reshape(*x.shape[:-1], -1)
    want = out_round(want, dtype)
    assert rel(y, want) <= (2.0**-8 if dtype == jnp.bfloat16 else F32_FP8_TOL)
    # against the float layer (inputs clamped to the static range): FP8 keeps a few percent of error at most
    xf = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)
    if activation == "static":
        xf = np.clip(xf, -448 * 0.012, 448 * 0.012)
    y_float = xf @ np.concatenate(w).T + bias
    assert rel(y, y_float) < 0.1


def int8_weights(w, qscheme):
    """Symmetric INT8 codes of the fused shards ``w`` (numpy), their stored scales and the per-row scale."""
    if qscheme == "per_tensor":
        scales = np.array([np.abs(wi).max() / 127 for wi in w], F32)
        wq = np.concatenate([ref.int8_static_sym(wi, s) for wi, s in zip(w, scales)])
        return wq, scales, np.repeat(scales, WIDTHS)
    scales = np.concatenate([np.abs(wi).max(axis=1) / F32(127) for wi in w]).astype(F32)
    wq = np.clip(np.rint(np.concatenate(w) / scales[:, None]), -128, 127).astype(np.int8)
    return wq, scales, scales


@pytest.mark.parametrize("qscheme", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("symmetric,azp_mode", [(True, "vllm"), (False, "vllm"), (False, "checkpoint")])
def test_int8_scheme(qscheme, symmetric, azp_mode):
    w, x, bias = data(2)
    wq, scales, s_w = int8_weights(w, qscheme)
    s_in, z_in = F32(0.045), -7
    raw = {"weight": wq, "weight_scale": scales, "input_scale": np.full(3, s_in, F32),
           "weight_zero_point": np.zeros_like(scales, np.int32)}
    if not symmetric:
        raw["input_zero_point"] = np.full(3, z_in, np.int32)
    scheme = QuarkW8A8Int8(qscheme=qscheme, input_symmetric=symmetric, azp_mode=azp_mode, impl="xla")
    scheme.check_loaded(raw, "layer")
    params, y = run_scheme(scheme, raw, x, bias, jnp.float32)
    assert "weight_zero_point" not in params
    assert params["weight_scale"].shape == (sum(WIDTHS),)  # fused per-tensor -> per-channel
    xs = x.reshape(-1, K)
    if symmetric:
        want = kref.scaled_mm_f64(ref.int8_static_sym(xs, s_in), wq, s_in, s_w, bias)
    else:
        s, z = (s_in, z_in) if azp_mode == "checkpoint" else lref.reconstruct_azp(s_in, z_in)
        assert float(params["input_scale"]) == s and int(params["input_zero_point"]) == z
        want = kref.scaled_mm_f64(ref.int8_static_asym(xs, s, z), wq, s, s_w, bias,
                                  azp_adj=z * wq.astype(np.int64).sum(axis=1))
    assert rel(y, want.reshape(*x.shape[:-1], -1)) <= 2e-6


@pytest.mark.parametrize("qscheme", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_dynamic_per_token_scheme(qscheme, symmetric):
    """vLLM's dynamic per-token INT8 input (scaled_int8_quant with no scale; asymmetric: cutlass_scaled_mm_azp with
    per-token zero points and the weight's column sums)."""
    w, x, bias = data(3)
    wq, scales, s_w = int8_weights(w, qscheme)
    raw = {"weight": wq, "weight_scale": scales}
    scheme = QuarkW8A8Int8(qscheme=qscheme, input_symmetric=symmetric, is_static_input_scheme=False, impl="xla")
    assert set(scheme.create_weights(WIDTHS, K)) == {"weight", "weight_scale", "weight_zero_point"}
    params, y = run_scheme(scheme, raw, x, bias, jnp.float32)
    assert "input_scale" not in params
    xs = x.reshape(-1, K)
    if symmetric:
        q, s = ref.int8_dynamic_sym(xs)
        want = kref.scaled_mm_f64(q, wq, s, s_w, bias)
    else:
        q, s, z = ref.int8_dynamic_asym(xs)
        np.testing.assert_array_equal(np.asarray(params["azp_adj"]), wq.astype(np.int64).sum(axis=1))
        want = kref.scaled_mm_f64(q, wq, s, s_w, bias, azp_adj=wq.astype(np.int64).sum(axis=1), azp=z)
    assert rel(y, want.reshape(*x.shape[:-1], -1)) <= 2e-6
    # and close to the float layer: per-token INT8 keeps about a percent of error
    y_float = xs.astype(np.float64) @ np.concatenate(w).T.astype(np.float64) + bias
    assert rel(np.asarray(y).reshape(-1, sum(WIDTHS)), y_float) < 0.03


def test_int8_checkpoint_mode_needs_one_input_quantizer():
    scheme = QuarkW8A8Int8(qscheme="per_channel", input_symmetric=False, azp_mode="checkpoint")
    raw = {"input_scale": np.array([0.1, 0.2], F32), "input_zero_point": np.array([1, 1], np.int32)}
    with pytest.raises(CheckpointError, match=r"layer L: the fused shards have different input quantizers \(scales "
                       r"\[0.1.*, 0.2.*\], zero points \[1, 1\]\); azp_mode='checkpoint' needs one"):
        scheme.check_loaded(raw, "L")
    with pytest.raises(CheckpointError, match=r"input_zero_point must be 0 for a symmetric input quantizer"):
        QuarkW8A8Int8(qscheme="per_channel", input_symmetric=True).check_loaded(
            {"input_zero_point": np.array([3])}, "L")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("cls", [QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4])
@pytest.mark.parametrize("dequantize_at_load", [False, True])
def test_mxfp4_schemes(cls, dtype, dequantize_at_load):
    w, x, bias = data(3)
    packed, scales = zip(*(ref.mxfp4_quantize(wi) for wi in w))
    raw = {"weight": np.concatenate(packed), "weight_scale": np.concatenate(scales)}
    xs = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)).reshape(-1, K)
    if cls is QuarkW4A8MXFP4Fp8:
        raw["input_scale"] = np.array([0.02, 0.03, 0.025], F32)
        xd = (ref.fp8_cast(xs / F32(0.03)).astype(F32) * F32(0.03))  # Quark: x / s (true division), the max scale
        xd = np.asarray(jnp.asarray(xd).astype(dtype).astype(jnp.float32))
        want = kref.mxfp4_mm_f64(xd, raw["weight"], raw["weight_scale"], bias, quantize_input=False)
    else:
        want = kref.mxfp4_mm_f64(xs, raw["weight"], raw["weight_scale"], bias, quantize_input=cls is QuarkW4A4MXFP4)
    scheme = cls(dequantize_at_load=dequantize_at_load, impl="xla")
    params, y = run_scheme(scheme, raw, x, bias, dtype)
    np.testing.assert_array_equal(np.asarray(scheme.dequantize_weight(params)),
                                  np.concatenate([ref.mxfp4_dequantize(p, s) for p, s in zip(packed, scales)]))
    assert rel(y, out_round(want, dtype).reshape(*x.shape[:-1], -1)) <= (2.0**-8 if dtype == jnp.bfloat16 else 2e-6)


def test_unquantized_method_and_jit_of_the_lifecycle():
    w, x, bias = data(4)
    m = UnquantizedLinearMethod()
    specs = m.create_weights(WIDTHS, K, jnp.bfloat16)
    assert specs["weight"].dtype == jnp.bfloat16 and specs["weight"].shard_shapes == ((64, K), (32, K), (32, K))
    params, y = run_scheme(m, {"weight": np.concatenate(w)}, x, bias, jnp.float32)
    want = x.reshape(-1, K).astype(np.float64) @ np.concatenate(w).T.astype(np.float64) + bias
    assert rel(y, want.reshape(*x.shape[:-1], -1)) <= 1e-6
    # process and apply are pure: jax.jit with the scheme static gives the same values as eager
    s = QuarkW8A8Fp8(weight_qscheme="per_channel", activation="dynamic_per_token", impl="xla")
    raw = {"weight": ref.fp8_cast(np.concatenate(w) * 10), "weight_scale": np.full(128, 0.1, F32)}
    eager = s.apply_weights(s.process_weights_after_loading(raw, WIDTHS), jnp.asarray(x))
    jitted = jax.jit(lambda r, v: s.apply_weights(s.process_weights_after_loading(r, WIDTHS), v))(raw, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))
    with pytest.raises(ValueError, match=r"x: expected shape \[..., 96\] for QuarkW8A8Fp8, got \(2, 95\)"):
        s.apply_weights(s.process_weights_after_loading(raw, WIDTHS), jnp.zeros((2, 95)))
    with pytest.raises(TypeError, match=r"x: expected floating-point activations"):
        s.apply_weights(s.process_weights_after_loading(raw, WIDTHS), jnp.zeros((2, 96), jnp.int32))
    with pytest.raises(ValueError, match=r"activation: expected one of"):
        QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="per_block")
    # a static FP8 input saturates at the e4m3fn maximum 448 (vLLM clamps) instead of overflowing to NaN
    sat = QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static", impl="xla")
    p = sat.process_weights_after_loading({"weight": jnp.ones((2, K), jnp.float8_e4m3fn),
                                           "weight_scale": np.ones(1, F32), "input_scale": np.full(1, 0.5, F32)})
    assert np.asarray(sat.apply_weights(p, jnp.full((1, K), 1e4, jnp.float32))).tolist() == [[0.5 * 448 * K] * 2]


@pytest.mark.parametrize("fp8_dtype", ["float8_e4m3fn", "float8_e4m3fnuz"])
def test_fp8_static_stores_the_correctly_rounded_input_reciprocal(fp8_dtype):
    """A static FP8 layer stores true_divide(1, input_scale) at load (IEEE 1/s, bit for bit, for scales whose
    reciprocal is inexact) and quantizes with it: the codes (and, on CPU, the layer outputs) equal those computed
    without the stored value."""
    from quark_jax import quant

    s = QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static", fp8_dtype=fp8_dtype, impl="xla")
    r = np.random.default_rng(5)
    w = jnp.asarray(np.clip(r.standard_normal((128, K)) * 64, -448, 448), jnp.float32).astype(jnp.float8_e4m3fn)
    x = jnp.asarray(r.standard_normal((3, K)) * 4, jnp.bfloat16)
    for s_in in (3.0 / 448.0, 0.0123, 0.7):  # the first: 1 / s is inexact in float32
        raw = {"weight": w, "weight_scale": np.full(3, 0.01, F32), "input_scale": np.full(3, s_in, F32)}
        p = process_params(s, raw, WIDTHS)
        want = F32(1.0) / F32(p["input_scale"])
        assert np.asarray(p["input_scale_reciprocal"], F32).view(np.uint32) == want.view(np.uint32)
        dt = jnp.dtype(fp8_dtype)
        codes = jax.jit(lambda x, s, r: quant.scaled_fp8_quant(x, s, dtype=dt, scale_reciprocal=r)[0])(
            x, p["input_scale"], p["input_scale_reciprocal"])
        plain = jax.jit(lambda x, s: quant.scaled_fp8_quant(x, s, dtype=dt)[0])(x, p["input_scale"])
        assert np.array_equal(np.asarray(codes.astype(jnp.float32)), np.asarray(plain.astype(jnp.float32)))
        if jax.default_backend() == "cpu":  # (on a GPU two compiles may pick different cuBLASLt algorithms)
            without = {k: v for k, v in p.items() if k != "input_scale_reciprocal"}
            got = jax.jit(lambda p, x: apply_params(s, p, x))(p, x)
            ref_ = jax.jit(lambda p, x: apply_params(s, p, x))(without, x)
            assert np.array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(ref_.astype(jnp.float32)))


def test_scale_reciprocal_only_with_a_static_scale():
    from quark_jax import kernels, quant

    with pytest.raises(ValueError, match="scale_reciprocal: only used with a static scale"):
        quant.scaled_fp8_quant(jnp.ones((2, 4)), per_token=True, scale_reciprocal=jnp.float32(2.0))
    with pytest.raises(ValueError, match="x_scale_reciprocal: only used with float activations"):
        kernels.fp8_scaled_mm(jnp.ones((2, 32), jnp.float8_e4m3fn), jnp.ones((16, 32), jnp.float8_e4m3fn),
                              jnp.float32(1.0), jnp.float32(1.0), impl="xla", x_scale_reciprocal=jnp.float32(1.0))
