"""The issue-19 schemes (QuarkOCP_MX, QuarkW8A8Fp8PerBlock, QuarkW4A16Int4) on synthetic fused layers with bias,
in float32 and bfloat16, against float64 numpy references of vLLM's formulas (tests/reference_mx.py)."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import reference_mx as rmx
from quark_jax import CheckpointError, kernels
from quark_jax.schemes import (QuarkOCP_MX, QuarkW4A16Int4, QuarkW8A8Fp8PerBlock, apply_params, dequantize_params,
                               process_params)

F32 = np.float32
WIDTHS = (128, 64, 64)
K = 256


def data(seed=0):
    rng = np.random.default_rng(seed)
    w = [(rng.standard_normal((n, K)) * 0.05 * (i + 1)).astype(F32) for i, n in enumerate(WIDTHS)]
    x = (rng.standard_normal((2, 3, K)) * 2).astype(F32)
    x[0, 0, :4] = [300.0, -300.0, 0.0, 1e-6]
    bias = rng.standard_normal(sum(WIDTHS)).astype(F32)
    return w, x, bias


def run(scheme, raw, x, bias, dtype):
    specs = scheme.create_weights(WIDTHS, K)
    for name, arr in raw.items():
        assert arr.shape == specs[name].shape and np.dtype(arr.dtype) == specs[name].dtype, name
    params = process_params(scheme, raw, WIDTHS)
    y = apply_params(scheme, params, jnp.asarray(x, dtype), jnp.asarray(bias))
    assert y.shape == (*x.shape[:-1], sum(WIDTHS)) and y.dtype == dtype
    return params, np.asarray(y.astype(jnp.float32), np.float64).reshape(-1, sum(WIDTHS))


def check(y, x_eff, w_eff, bias, dtype):
    """y against float64 ``x_eff @ w_eff.T + bias`` (x_eff / w_eff: what the GEMM sees)."""
    want = x_eff @ w_eff.T + bias
    err = np.abs(y - want).max() / np.abs(want).max()
    assert err <= (2e-6 if dtype == jnp.float32 else 2 ** -7), err


def x_in(x, dtype):
    return np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64).reshape(-1, K)


MX_CASES = [("fp6_e2m3", "fp6_e2m3"), ("fp6_e3m2", "fp6_e3m2"), ("fp4", "fp6_e2m3"), ("fp6_e3m2", None),
            ("fp8_e4m3", "fp8_e4m3"), ("fp8_e4m3", None), ("fp6_e2m3", "fp8_per_tensor")]


@pytest.mark.parametrize("wd,idt,dtype", [c + (jnp.float32,) for c in MX_CASES]
                         + [("fp6_e2m3", "fp6_e2m3", jnp.bfloat16), ("fp8_e4m3", None, jnp.bfloat16)])
def test_ocp_mx_scheme(wd, idt, dtype):
    w, x, bias = data(1)
    q, s = zip(*(rmx.mx_quantize_weight(wi, wd) for wi in w))
    raw = {"weight": np.concatenate(q), "weight_scale": np.concatenate(s)}
    scheme = QuarkOCP_MX(weight_dtype=wd, input_dtype=idt)
    params, y = run(scheme, raw, x, bias, dtype)
    w_ref = rmx.mx_dequantize(raw["weight"], raw["weight_scale"], wd)
    np.testing.assert_array_equal(np.asarray(dequantize_params(scheme, params), np.float64), w_ref)
    xs = x_in(x, dtype)
    if idt is None:
        x_eff = xs
    elif idt == "fp8_per_tensor":
        sc = max(np.abs(xs).max() / 448, 1 / (448 * 512))
        x_eff = np.clip(xs.astype(F32) / F32(sc), -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * F32(sc)
    else:
        x_eff = rmx.mx_qdq(xs, idt)
    if dtype == jnp.bfloat16:  # the activation is rounded to the model dtype after qdq (exact for MX values)
        x_eff = np.asarray(jnp.asarray(x_eff, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    check(y, x_eff, w_ref, bias, dtype)


@pytest.mark.parametrize("scale_format", ["float", "e8m0"])
def test_fp8_per_block_scheme(scale_format):
    w, x, bias = data(2)
    import jax.numpy as jnp2
    from quark_jax import quant

    qs = [quant.quantize_fp8_per_block(jnp2.asarray(wi), (64, 128), scale_format=scale_format) for wi in w]
    q = np.concatenate([np.asarray(a) for a, _ in qs])
    s = np.concatenate([np.asarray(b) for _, b in qs])
    if scale_format == "e8m0":
        s = s.view(ml_dtypes.float8_e8m0fnu)  # vLLM's on-disk dtype
    raw = {"weight": q, "weight_scale": s}
    scheme = QuarkW8A8Fp8PerBlock(block=(64, 128), scale_format=scale_format)  # rows 64: the shards are 128/64/64
    params, y = run(scheme, raw, x, bias, jnp.float32)
    w_ref = rmx.fp8_block_dequantize(q, s, (64, 128))
    np.testing.assert_array_equal(np.asarray(dequantize_params(scheme, params), np.float64), w_ref)
    # the float weight, requantized: within FP8's half-ulp (1/16) of a block's amax scale
    w_all = np.concatenate(w).astype(np.float64)
    assert np.abs(w_ref - w_all).max() <= np.abs(w_all).max() / 16
    check(y, rmx.fp8_group_qdq(x.reshape(-1, K), 128), w_ref, bias, jnp.float32)


@pytest.mark.parametrize("signed,group,order", [(True, 32, "reorder"), (False, 64, "order"), (True, -1, "order"), (False, -1, "reorder"),
                                                (False, 128, "reorder")])
def test_int4_scheme(signed, group, order):
    w, x, bias = data(3)
    g = K if group == -1 else group
    if group == -1:  # amd-quark's per-channel layout: [N, K/8], [N], [N/8]; shards stacked along N
        parts = [rmx.int4_quantize_weight_per_channel(wi, order, signed) for wi in w]
        axis = 0
    else:
        parts = [rmx.int4_quantize_weight(wi, g, order, signed) for wi in w]
        axis = 1
    raw = {"weight": np.concatenate([p[0] for p in parts], axis=axis),
           "weight_scale": np.concatenate([p[1] for p in parts], axis=axis)}
    if not signed:
        raw["weight_zero_point"] = np.concatenate([p[2] for p in parts], axis=axis)
    scheme = QuarkW4A16Int4(signed=signed, group_size=group, pack_method=order)
    assert scheme.weight_geometry(raw["weight"].shape) == (sum(WIDTHS), K)
    for dtype in (jnp.float32, jnp.bfloat16) if (signed, group) == (True, 32) else (jnp.float32,):
        params, y = run(scheme, raw, x, bias, dtype)
        if group == -1:
            w_ref = rmx.int4_dequantize_per_channel(raw["weight"], raw["weight_scale"], raw.get("weight_zero_point"),
                                                    order, signed)
        else:
            w_ref = rmx.int4_dequantize(raw["weight"], raw["weight_scale"], raw.get("weight_zero_point"), g, order,
                                        signed)
        np.testing.assert_array_equal(np.asarray(dequantize_params(scheme, params), np.float64), w_ref)
        w_eff = w_ref if dtype == jnp.float32 else np.asarray(
            jnp.asarray(w_ref, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
        check(y, x_in(x, dtype), w_eff, bias, dtype)
        if group != -1 and dtype == jnp.float32 and group < 128:  # the decode kernel on the processed params
            y = apply_params(scheme.replace(impl="pallas"), params, jnp.asarray(x, dtype), jnp.asarray(bias))
            check(np.asarray(y, np.float64).reshape(-1, sum(WIDTHS)), x_in(x, dtype), w_eff, bias, dtype)
    if group != -1:  # processed: the repacked layout only, which round-trips to the checkpoint's
        want = {"weight": ((sum(WIDTHS), K // 2), jnp.uint8), "weight_scale": ((K // g, sum(WIDTHS)), jnp.float32)}
        if not signed:
            want["weight_zero_point"] = ((K // g, sum(WIDTHS)), jnp.int8)
        assert {k: (v.shape, v.dtype) for k, v in params.items()} == want
        w_back, z_back = kernels.int4_unrepack(params["weight"], params.get("weight_zero_point"), group_size=g,
                                               order=order, signed=signed)
        np.testing.assert_array_equal(np.asarray(w_back), raw["weight"])
        if not signed:
            np.testing.assert_array_equal(np.asarray(z_back), raw["weight_zero_point"])
    # the wrong pack order gives a different weight (the option matters)
    other = scheme.replace(pack_method="order" if order == "reorder" else "reorder")
    assert not np.array_equal(np.asarray(dequantize_params(other, process_params(other, raw, WIDTHS))), w_ref)


def test_new_scheme_shape_errors_name_the_field():
    with pytest.raises(ValueError, match="input_size: OCP MX needs K to be a multiple of 32, got 48"):
        QuarkOCP_MX(weight_dtype="fp6_e3m2").create_weights((64,), 48)
    with pytest.raises(ValueError, match=r"each fused shard .* multiple of the block rows 128, got \[128, 64\]"):
        QuarkW8A8Fp8PerBlock().create_weights((128, 64), 256)
    with pytest.raises(ValueError, match="input_size: .* multiple of the block cols 128, got 192"):
        QuarkW8A8Fp8PerBlock().create_weights((128,), 192)
    with pytest.raises(ValueError, match=r"multiple of 8, got \[64, 12\]"):
        QuarkW4A16Int4().create_weights((64, 12), 256)
    with pytest.raises(ValueError, match="weight_dtype: expected one of"):
        QuarkOCP_MX(weight_dtype="fp5")
    with pytest.raises(CheckpointError, match="weight_zero_point must be all zeros for a symmetric int4"):
        QuarkW4A16Int4().check_loaded({"weight_zero_point": np.array([[1]], np.int32)}, "L")
