"""QuarkOCP_MX with FP6 weights on the load-time planes layout (``kernels.mxfp6_repack`` at load,
``kernels.mxfp6_mm_planes`` in apply): bit for bit the checkpoint-layout path, the processed shapes, the
tensor-parallel specs, the errors, and an amd-quark fixture layer through the new layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

import reference_mx as rmx
from conftest import FIXTURES
from quark_jax import formats, kernels, quant
from quark_jax.errors import InvalidArgumentError
from quark_jax.io import SafetensorsFile
from quark_jax.kernels.mxfp6_mm import pallas_planes
from quark_jax.nn import QuarkLinear
from quark_jax.nn.parallel import DEFAULT_RULES
from quark_jax.schemes import QuarkOCP_MX, apply_params, dequantize_params, process_params
from quark_jax.schemes.ocp_mx import PLANES_PARAMS

EM = ("fp6_e2m3", "fp6_e3m2")
WIDTHS = (32, 16)  # a fused layer (N = 48)
# the bit-for-bit layer test: ``auto`` on the CPU (the XLA planes path); on a GPU ``auto`` would run the Pallas
# kernel at M <= 16 (equal up to the f32 summation order only), so there the XLA path is asked for
IMPL = "auto" if jax.default_backend() == "cpu" else "xla"


def _raw(rng, element, n, k, *, scale_range=(118, 136)):
    """Random codes (every 6-bit code appears), E8M0 bytes in ``scale_range``: the checkpoint's params."""
    codes = rng.integers(0, 64, (n, k)).astype(np.uint8)
    scales = rng.integers(*scale_range, (n, k // 32)).astype(np.uint8)
    return {"weight": formats.pack_fp6(jnp.asarray(codes)), "weight_scale": jnp.asarray(scales)}


def _old_path(scheme, raw, x, bias):
    """The checkpoint-layout path the scheme ran before the planes layout: ``kernels.mxfp6_mm`` (XLA reference)
    on ``quantize_input(x)``."""
    x2 = x.reshape(-1, x.shape[-1])
    y = kernels.mxfp6_mm(scheme.quantize_input(x2), raw["weight"], raw["weight_scale"], bias,
                         element=scheme.weight_dtype, impl="xla")
    return y.reshape(*x.shape[:-1], y.shape[-1])


@pytest.mark.parametrize("element", EM)
@pytest.mark.parametrize("m", [1, 3, 64])
def test_planes_path_equals_the_checkpoint_path_bit_for_bit(element, m):
    """A fused layer (K = 256, N = 32 + 16, bias) loaded through ``QuarkLinear``: the planes path (CPU: ``auto``
    is the XLA planes dequantize + one GEMM) equals the old checkpoint-layout path bit for bit, in bf16 with the
    weight-only and MX inputs and in f32 with the per-tensor FP8 input; and float64 within bf16 / f32 rounding."""
    rng = np.random.default_rng(m)
    k = 256
    raw = _raw(rng, element, sum(WIDTHS), k)
    bias = jnp.asarray(rng.standard_normal(sum(WIDTHS)), jnp.float32)
    for idt, dtype in ((None, jnp.bfloat16), (element, jnp.bfloat16), ("fp8_per_tensor", jnp.float32)):
        scheme = QuarkOCP_MX(weight_dtype=element, input_dtype=idt, impl=IMPL)
        layer = QuarkLinear(k, sum(WIDTHS), scheme=scheme, logical_widths=WIDTHS, use_bias=True, dtype=dtype,
                            name="model.layers.0.mlp.gate_up_proj")
        layer.load_params({**raw, "bias": bias.astype(dtype)})
        assert layer.param_names == PLANES_PARAMS
        x = jnp.asarray(rng.standard_normal((1, m, k)) * 2, dtype)
        got = layer(x)
        want = _old_path(scheme, raw, x, bias.astype(dtype))
        assert got.shape == (1, m, sum(WIDTHS)) and got.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
        # independent: float64 of the numpy MX decode (tests/reference_mx.py) on what the GEMM sees
        w64 = rmx.mx_dequantize(np.asarray(raw["weight"]), np.asarray(raw["weight_scale"]), element)
        np.testing.assert_array_equal(np.asarray(dequantize_params(scheme, layer.params()), np.float64), w64)
        xe = np.asarray(scheme.quantize_input(x.reshape(m, k)).astype(jnp.float32), np.float64)
        ref = xe @ w64.T + np.asarray(bias.astype(dtype).astype(jnp.float32), np.float64)
        err = np.abs(np.asarray(got.astype(jnp.float32)).reshape(m, -1) - ref).max() / np.abs(ref).max()
        assert err <= (2 ** -7 if dtype == jnp.bfloat16 else 2e-6), (idt, err)


@pytest.mark.parametrize("element", EM)
def test_planes_xla_path_reads_the_planes_and_matches_the_reference(element):
    """``mxfp6_mm_planes(impl="xla")`` = the checkpoint-layout reference bit for bit, including scale byte 0
    (2**-127) and 250, in f32 and bf16; ``dequantize_planes`` = ``dequantize_mx`` on the unrepacked bytes; its
    program holds no ``pack_fp6`` byte triple (the codes come from the planes elementwise)."""
    rng = np.random.default_rng(5)
    raw = _raw(rng, element, 32, 384, scale_range=(0, 251))
    planes = kernels.mxfp6_repack(raw["weight"], raw["weight_scale"])
    for dtype in (jnp.float32, jnp.bfloat16):
        w = kernels.mxfp6_dequantize_planes(*planes, element, dtype)
        np.testing.assert_array_equal(np.asarray(w.astype(jnp.float32)), np.asarray(
            quant.dequantize_mx(raw["weight"], raw["weight_scale"], element, dtype).astype(jnp.float32)))
        x = jnp.asarray(rng.standard_normal((5, 384)), dtype)
        got = kernels.mxfp6_mm_planes(x, *planes, element=element, impl="xla")
        want = kernels.mxfp6_mm(x, raw["weight"], raw["weight_scale"], element=element, impl="xla")
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))
    assert pallas_planes.CHUNK == kernels.MXFP6_PLANES_CHUNK


def test_planes_path_runs_the_pallas_kernel_when_asked():
    """``impl="pallas"`` (interpret mode here) on the processed planes: the repacked-layout kernel, equal to the
    old path bit for bit on exact data (x on a 1/4 grid, scales near 2**0: every f32 partial sum exact)."""
    rng = np.random.default_rng(7)
    raw = _raw(rng, "fp6_e3m2", 32, 256, scale_range=(125, 130))
    scheme = QuarkOCP_MX(weight_dtype="fp6_e3m2", impl="pallas")
    params = process_params(scheme, raw, (32,))
    x = jnp.asarray(rng.integers(-8, 9, (1, 256)) / 4, jnp.bfloat16)
    got = apply_params(scheme, params, x)
    want = _old_path(scheme, raw, x, None)
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


def test_processed_shapes_and_which_layers_get_the_planes():
    """FP6 with K % 128 == 0: hi [N, K/2], lo [N, K/4], scales [K/32, N], uint8, the checkpoint's names gone;
    FP6 with K = 64 (the tiny fixtures' attention) keeps the checkpoint layout; fp4 / fp8 unchanged."""
    for element in EM:
        layer = QuarkLinear(512, 48, scheme=QuarkOCP_MX(weight_dtype=element), abstract=True)
        got = {k: (tuple(getattr(layer, k).get_value().shape), np.dtype(getattr(layer, k).get_value().dtype).name)
               for k in layer.param_names}
        assert got == {"weight_hi": ((48, 256), "uint8"), "weight_lo": ((48, 128), "uint8"),
                       "weight_scale_kn": ((16, 48), "uint8")}
        small = QuarkLinear(64, 48, scheme=QuarkOCP_MX(weight_dtype=element), abstract=True)
        assert small.param_names == ("weight", "weight_scale")
        assert small.scheme.stores_planes(64) is False and layer.scheme.stores_planes(512) is True
    fp4 = QuarkLinear(512, 48, scheme=QuarkOCP_MX(weight_dtype="fp4"), abstract=True)
    fp8 = QuarkLinear(512, 48, scheme=QuarkOCP_MX(weight_dtype="fp8_e4m3"), abstract=True)
    assert fp4.param_names == fp8.param_names == ("weight", "weight_scale")
    assert fp4.weight.get_value().shape == (48, 256) and fp8.weight.get_value().shape == (48, 512)
    assert QuarkOCP_MX(weight_dtype="fp4").shard_k_block == QuarkOCP_MX(weight_dtype="fp8_e4m3").shard_k_block == 32
    assert QuarkOCP_MX(weight_dtype="fp6_e2m3").shard_k_block == 128


def test_processing_runs_once_and_apply_needs_processed_params():
    rng = np.random.default_rng(3)
    raw = _raw(rng, "fp6_e2m3", 16, 128)
    scheme = QuarkOCP_MX(weight_dtype="fp6_e2m3")
    params = scheme.process_weights_after_loading(raw)
    with pytest.raises(ValueError, match=r"already processed .*'weight_hi'"):
        scheme.process_weights_after_loading(params)
    with pytest.raises(ValueError, match=r"fp6_e2m3, K = 128\): params not processed"):
        scheme.apply_weights(raw, jnp.ones((1, 128)))


def test_tensor_parallel_specs_cover_the_planes():
    """Column split: hi / lo by rows (N), the [K/32, N] scales by columns; row split: hi / lo along K, the scales
    by rows (K/32); each device's planes are the repack of its K slice (a slice of the whole layer's planes, K
    slices of whole 128-chunks)."""
    mesh = AbstractMesh((2,), ("model",))
    scheme = QuarkOCP_MX(weight_dtype="fp6_e3m2", input_dtype="fp6_e3m2")
    col = QuarkLinear(512, 64, scheme=scheme, abstract=True, name="model.layers.0.mlp.up_proj").plan_sharding(
        mesh, DEFAULT_RULES)
    row = QuarkLinear(512, 64, scheme=scheme, abstract=True, name="model.layers.0.mlp.down_proj").plan_sharding(
        mesh, DEFAULT_RULES)
    assert [col.spec(k, 2) for k in PLANES_PARAMS] == [P("model", None), P("model", None), P(None, "model")]
    assert [row.spec(k, 2) for k in PLANES_PARAMS] == [P(None, "model"), P(None, "model"), P("model", None)]
    assert row.local_k == 256
    raw = _raw(np.random.default_rng(4), "fp6_e3m2", 64, 512)
    whole = kernels.mxfp6_repack(raw["weight"], raw["weight_scale"])
    for i in range(2):  # row shard i: K elements 256 i .. 256 i + 255 (bytes 192 i .., scales 8 i ..)
        part = kernels.mxfp6_repack(raw["weight"][:, 192 * i: 192 * (i + 1)], raw["weight_scale"][:, 8 * i: 8 * (i + 1)])
        for got, want in zip(part, (whole[0][:, 128 * i: 128 * (i + 1)], whole[1][:, 64 * i: 64 * (i + 1)],
                                    whole[2][8 * i: 8 * (i + 1)])):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        part = kernels.mxfp6_repack(raw["weight"][32 * i: 32 * (i + 1)], raw["weight_scale"][32 * i: 32 * (i + 1)])
        for got, want in zip(part, (whole[0][32 * i: 32 * (i + 1)], whole[1][32 * i: 32 * (i + 1)],
                                    whole[2][:, 32 * i: 32 * (i + 1)])):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_row_split_into_k_slices_not_whole_chunks_names_the_layer():
    """K = 256 over 4 devices: slices of 64, not whole 128-K chunks of the planes layout."""
    layer = QuarkLinear(256, 64, scheme=QuarkOCP_MX(weight_dtype="fp6_e2m3"), abstract=True,
                        name="model.layers.3.mlp.down_proj")
    with pytest.raises(InvalidArgumentError, match=r"layer model\.layers\.3\.mlp\.down_proj: .*slices of 64, not "
                                                   r"whole groups of 128"):
        layer.plan_sharding(AbstractMesh((4,), ("model",)), DEFAULT_RULES)


@pytest.mark.parametrize("variant", ["w_mxfp6_e2m3_a_mxfp6_e2m3", "w_mxfp6_e3m2_a_mxfp6_e3m2"])
def test_fixture_down_proj_runs_on_the_planes_and_matches_quark(variant):
    """amd-quark's tiny-llama export: down_proj (K = 128) loads into the planes layout; its dequantized weight is
    Quark's fake-quantized weight bit for bit and its output Quark's within 1e-5 (the fixture tolerance)."""
    root = FIXTURES / "issue19" / variant
    ref = SafetensorsFile(root / "reference.safetensors").load_all()
    path = "model.layers.1.mlp.down_proj"
    layer = QuarkLinear.from_pretrained(root, path)
    assert layer.param_names == PLANES_PARAMS
    np.testing.assert_array_equal(np.asarray(layer.dequantized_weight(), np.float64),
                                  ref[f"{path}.w_qdq"].astype(np.float64))
    y = np.asarray(apply_params(layer.scheme, layer.params(), jnp.asarray(ref[f"{path}.x"])), np.float64)
    want = ref[f"{path}.y_fakeq"].astype(np.float64)
    assert np.abs(y - want).max() / np.abs(want).max() <= 1e-5


def test_sharded_planes_equal_the_unsharded_layer():
    """4 forced CPU devices (a subprocess): a column-parallel and a row-parallel FP6 layer on the planes, sharded
    by their layouts' specs, equal the unsharded layer up to f32 summation order (a wrong spec, e.g. the scales
    split along N in a row split, would give shape errors or O(1) differences)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "ocp_mx_planes_tp.py")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(got) == ["column/fp6_e2m3", "row/fp6_e3m2"]
    assert max(got.values()) <= 2e-6, got
