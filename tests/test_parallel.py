"""Tensor-parallel inference (issue 17) on 8 forced CPU devices: one subprocess (tests/parallel_checks.py) loads each
(variant, mesh) once and measures; the tests here assert on its measurements. Plus in-process checks of the rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from quark_jax.errors import InvalidArgumentError
from quark_jax.nn.parallel import DEFAULT_RULES, PartitionRules, plan_layer

HERE = os.path.dirname(os.path.abspath(__file__))
QKV = ("l.q_proj", "l.k_proj", "l.v_proj")


@pytest.fixture(scope="module")
def measured():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, os.path.join(HERE, "parallel_checks.py")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def _cases(measured):
    return {(c["variant"], tuple(c["mesh"])): c for c in measured["cases"]}


def test_mesh_matrix_covers_variants_and_shapes(measured):
    cases = _cases(measured)
    assert {m for v, m in cases if v == "w_fp8_a_fp8_pertensor_static_kv_fp8"} == {(8, 1), (4, 2), (2, 4)}
    assert {v for v, _ in cases} >= {"w_int8_perchannel_sym_a_int8_pertensor_static_asym", "w_mxfp4_a_mxfp4",
                                     "bf16_w_fp8_perchannel_a_fp8_pertoken_dynamic", "float",
                                     "issue19/w_int4_pergroup32_weight_only", "issue19/w_nvfp4_a_nvfp4"}


def test_a_sharded_model_keeps_the_partitionable_decode_attention(measured):
    # the Pallas decode attention is one pallas_call (XLA cannot split it over the heads' mesh axis)
    assert {tuple(c["decode_attention"]) for c in measured["cases"]} == {("xla",)}


def test_logits_equal_unsharded_within_f32_reordering(measured):
    for (variant, mesh), c in _cases(measured).items():
        # float32 models: only the row-parallel partial sums' order changes; bf16 models round the same sums
        tol = 2e-2 if variant.startswith("bf16") else 2e-5 * max(1.0, c["max_abs"])
        assert c["max_abs_diff"] <= tol, (variant, mesh, c["max_abs_diff"])


def test_a_mesh_with_one_axis(measured):
    assert set(measured["one_axis"]) == {"model", "data"}
    for name, diff in measured["one_axis"].items():
        assert diff <= 2e-5, (name, diff)


def test_each_device_holds_its_fraction_of_each_sharded_param(measured):
    for (variant, mesh), c in _cases(measured).items():
        n = mesh[1]
        names = [s[0] for s in c["shards"]]
        if n == 1:
            assert names == [], (variant, names)  # nothing split over a "model" axis of 1
            continue
        for name, shape, fractions, spec in c["shards"]:
            assert fractions == [1.0 / n], (variant, mesh, name, shape, fractions, spec)
        # every projection of layer 0, the embedding and the LM head are split
        fused = ("mlp.gate_up_proj", "self_attn.qkv_proj") if variant != "float" else (
            "mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        for want in ("model.embed_tokens.embedding", "lm_head.kernel", "model.layers.0.mlp.down_proj",
                     "model.layers.0.self_attn.o_proj") + tuple("model.layers.0." + f for f in fused):
            assert any(x.startswith(want) for x in names), (variant, mesh, want, names)


def test_fused_layers_hold_a_slice_of_each_logical_shard(measured):
    cases = _cases(measured)
    # (4, 2): q 4 heads -> 2 per device, k / v 2 heads -> 1 each; gate / up 128 -> 64 each
    lay = cases[("w_fp8_a_fp8_pertensor_static_kv_fp8", (4, 2))]["layouts"]
    assert lay["model.layers.0.self_attn.qkv_proj"] == ["column", [32, 16, 16]]
    assert lay["model.layers.0.mlp.gate_up_proj"] == ["column", [64, 64]]
    assert lay["model.layers.0.mlp.down_proj"] == ["row", [64]]
    # (2, 4): 2 KV heads < 4 devices: each device holds both (replicated), q one head each
    lay = cases[("w_int8_perchannel_sym_a_int8_pertensor_static_asym", (2, 4))]["layouts"]
    assert lay["model.layers.0.self_attn.qkv_proj"] == ["column", [16, 32, 32]]


def test_greedy_generation_gives_the_same_ids(measured):
    gen = [c for c in measured["cases"] if "generate_equal" in c]
    assert len(gen) == 2 and all(c["generate_equal"] for c in gen), [(c["variant"], c["mesh"]) for c in gen]


def test_decode_step_reduces_row_parallel_outputs_and_gathers_no_weight(measured):
    cases = _cases(measured)
    for mesh in ((4, 2), (2, 4)):
        hlo = cases[("w_fp8_a_fp8_pertensor_static_kv_fp8", mesh)]["hlo"]
        assert hlo["all_reduce"] >= 4, mesh  # o_proj and down_proj of both layers (psum over "model")
        weights = set(hlo["weight_shapes"])
        for dtype, shape in hlo["all_gathers"]:
            assert dtype not in ("f8e4m3fn", "u8", "s8"), (mesh, dtype, shape)  # no quantized weight gathered
            assert shape not in weights, (mesh, dtype, shape)
    # the float checkpoint under a mesh: unfused q/k/v and gate/up, each split cleanly (only the row all-reduces)
    fl = cases[("float", (4, 2))]
    assert fl["fused"] is False and fl["hlo"]["all_gathers"] == [] and fl["hlo"]["other"] == []
    assert fl["hlo"]["all_reduce"] >= 4
    assert cases[("w_fp8_a_fp8_pertensor_static_kv_fp8", (4, 2))]["hlo"]["other"] == []
    # KV heads split over "model": no gather at all; 2 KV heads on 4 devices (the cache replicated over "model"):
    # XLA computes each head's cache update on the devices that read it and gathers the layer's cache
    # [B / data, S, H_kv, D] (SPEC 12.6: a known cost, not a weight)
    assert cases[("w_fp8_a_fp8_pertensor_static_kv_fp8", (4, 2))]["hlo"]["all_gathers"] == []
    assert {s for _, s in cases[("w_fp8_a_fp8_pertensor_static_kv_fp8", (2, 4))]["hlo"]["all_gathers"]} <= {"4,16,2,16"}


def test_a_mesh_the_model_cannot_split_is_a_clear_error(measured):
    err = measured["errors"]
    assert err["mxfp4_row_blocks"] and "o_proj" in err["mxfp4_row_blocks"] and "32" in err["mxfp4_row_blocks"]
    assert err["heads"] and "4 heads" in err["heads"] and "q_proj" in err["heads"]
    assert err["batch"] and "batch 3" in err["batch"] and "'data' axis of 4" in err["batch"]
    assert err["int4_groups"] and "o_proj" in err["int4_groups"] and "whole groups of 64" in err["int4_groups"]


def test_issue19_layouts_split_with_their_blocks(measured):
    """INT4 per group is read [K, N/8] (each device its words, scales, zero points) and stored repacked: the weight
    [N, K/2] (column split over axis 0, row split over axis 1 by whole groups), the scales [G, N] (N on axis 1);
    NVFP4's per-shard global scales stay whole."""
    cases = _cases(measured)
    int4 = {name: (shape, spec) for name, shape, _, spec in
            cases[("issue19/w_int4_pergroup32_weight_only", (4, 2))]["shards"]}
    assert int4["model.layers.0.mlp.gate_up_proj.weight"] == ([256, 32], "P('model', None)")
    assert int4["model.layers.0.mlp.gate_up_proj.weight_scale"] == ([2, 256], "P(None, 'model')")
    assert int4["model.layers.0.mlp.down_proj.weight"] == ([64, 64], "P(None, 'model')")
    assert int4["model.layers.0.mlp.down_proj.weight_scale"] == ([4, 64], "P('model', None)")
    nv = {name for name, _, _, _ in cases[("issue19/w_nvfp4_a_nvfp4", (4, 2))]["shards"]}
    assert "model.layers.0.self_attn.o_proj.weight_scale" in nv and not any("scale_2" in n or "global" in n
                                                                            for n in nv)


# ---------------------------------------------------------------------------------- rules (in process)

def test_rules_are_data_and_overridable():
    assert DEFAULT_RULES.role("model.layers.3.mlp.down_proj") == "row"
    assert DEFAULT_RULES.spec("column", "weight", 2) == P("model", None)
    assert DEFAULT_RULES.spec("row", "weight_scale", 2) == P(None, "model")  # E8M0 scales with their K blocks
    assert DEFAULT_RULES.spec("row", "weight_scale", 1) == P()  # per-channel: replicated on a row split
    assert DEFAULT_RULES.spec("row", "azp_adj", 1) == P("model")
    mine = PartitionRules(layers=(("*.down_proj", "replicated"),) + DEFAULT_RULES.layers)
    assert mine.role("model.layers.3.mlp.down_proj") == "replicated"


def test_plan_layer_splits_per_logical_shard_and_checks_blocks():
    mesh = AbstractMesh((2, 4), ("data", "model"))
    rules = PartitionRules(head_dim=16)
    lay = plan_layer("l.qkv_proj", QKV, (64, 32, 32), 64, mesh=mesh, rules=rules)
    assert (lay.role, lay.split, lay.local_widths) == ("column", (True, False, False), (16, 32, 32))
    assert lay.local_index(0, 64, 3, (64, 64)) == (slice(48, 64), slice(None))
    assert lay.local_index(1, 32, 3, (32, 64)) is None  # replicated KV heads: the whole tensor
    row = plan_layer("l.down_proj", ("l.down_proj",), (64,), 256, mesh=mesh, rules=rules, pack_factor=2)
    assert row.local_k == 64 and row.local_index(0, 64, 2, (64, 4)) == (slice(None), slice(2, 3))
    with pytest.raises(InvalidArgumentError, match="whole MXFP4 blocks"):
        plan_layer("l.o_proj", ("l.o_proj",), (64,), 64, mesh=mesh, rules=rules, pack_factor=2)
    with pytest.raises(InvalidArgumentError, match="3 heads"):
        plan_layer("l.q_proj", ("l.q_proj",), (48,), 64, mesh=mesh, rules=rules)
    np.testing.assert_equal(plan_layer("l.qkv_proj", QKV, (64, 32, 32), 64, mesh=AbstractMesh((8, 1), ("data", "model")),
                                       rules=rules).local_widths, (64, 32, 32))


def test_plan_layer_scale_blocks_and_transposed_layouts():
    """FP8 per-block: column slices of whole 128-row blocks, block scales [N/128, G] split with them; INT4 per
    group ([K, N/8] words, [G, N] scales): N from axis 1 on a column split, K from axis 0 on a row split."""
    mesh = AbstractMesh((1, 4), ("data", "model"))
    lay = plan_layer("l.gate_up_proj", ("l.gate_proj", "l.up_proj"), (512, 512), 256, mesh=mesh, rules=DEFAULT_RULES,
                     n_block=128)
    assert lay.local_index(1, 512, 1, (4, 2)) == (slice(1, 2), slice(None))
    assert lay.local_index(1, 512, 1, (512, 256)) == (slice(128, 256), slice(None))
    with pytest.raises(InvalidArgumentError, match="not whole blocks of 128 rows"):
        plan_layer("l.up_proj", ("l.up_proj",), (256,), 256, mesh=mesh, rules=DEFAULT_RULES, n_block=128)
    col = plan_layer("l.up_proj", ("l.up_proj",), (256,), 256, mesh=mesh, rules=DEFAULT_RULES, n_block=8,
                     transposed=True)
    assert col.local_index(0, 256, 2, (256, 32)) == (slice(None), slice(16, 24))  # packed words
    assert col.local_index(0, 256, 2, (2, 256)) == (slice(None), slice(128, 192))  # group scales
    assert col.spec("weight", 2) == P(None, "model") and col.spec("bias", 1) == P("model")
    row = plan_layer("l.down_proj", ("l.down_proj",), (256,), 512, mesh=mesh, rules=DEFAULT_RULES, k_block=128,
                     transposed=True)
    assert row.local_index(0, 256, 1, (512, 32)) == (slice(128, 256), slice(None))
    assert row.local_index(0, 256, 1, (4, 256)) == (slice(1, 2), slice(None))
    assert row.spec("weight", 2) == P("model", None)
    # the scheme's processed params: the weight repacked [N, K/2], scales / zero points still [G, N]
    tp = ("weight_scale", "weight_zero_point")
    col = plan_layer("l.up_proj", ("l.up_proj",), (256,), 256, mesh=mesh, rules=DEFAULT_RULES, n_block=8,
                     transposed=True, transposed_params=tp)
    row = plan_layer("l.down_proj", ("l.down_proj",), (256,), 512, mesh=mesh, rules=DEFAULT_RULES, k_block=128,
                     transposed=True, transposed_params=tp)
    assert [col.spec(k, 2) for k in ("weight",) + tp] == [P("model", None), P(None, "model"), P(None, "model")]
    assert [row.spec(k, 2) for k in ("weight",) + tp] == [P(None, "model"), P("model", None), P("model", None)]
    with pytest.raises(InvalidArgumentError, match="not whole groups of 128"):
        plan_layer("l.down_proj", ("l.down_proj",), (256,), 256, mesh=mesh, rules=DEFAULT_RULES, k_block=128)


def test_quantize_model_with_a_mesh_checks_the_splits_before_loading():
    from flax import nnx

    from quark_jax import quantize_model
    from quark_jax.data import bundled_checkpoint

    class Attn(nnx.Module):
        def __init__(self):
            self.o_proj = nnx.Linear(64, 64, use_bias=False, rngs=nnx.Rngs(0))

    ckpt = bundled_checkpoint("tiny-llama-mxfp4")
    with pytest.raises(InvalidArgumentError, match="o_proj.*whole MXFP4 blocks"):
        quantize_model(Attn(), ckpt, prefix="model.layers.0.self_attn", mesh=AbstractMesh((1, 4), ("data", "model")))
    ok = quantize_model(Attn(), ckpt, prefix="model.layers.0.self_attn", mesh=AbstractMesh((4, 2), ("data", "model")))
    assert type(ok.o_proj).__name__ == "QuarkLinear"


def test_bench_e2e_mesh_option():
    import jax
    from pathlib import Path

    sys.path.insert(0, str(Path(HERE).parent))
    from benchmarks.bench_e2e import make_mesh

    assert make_mesh("") is None
    mesh = make_mesh("1x1")
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    with pytest.raises(SystemExit, match="needs"):
        make_mesh(f"1x{len(jax.devices()) + 1}")
