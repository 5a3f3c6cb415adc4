"""The ``quark-jax inspect`` command on the bundled checkpoints, every fixture, and broken ones."""

import pytest

from checkpoint_tools import edited_copy, truncate
from conftest import VARIANTS, reference_layers, variant_dir
from quark_jax import cli
from quark_jax.data import BUNDLED


@pytest.mark.parametrize("target", sorted(BUNDLED) + VARIANTS)
def test_inspect_every_checkpoint(target, capsys):
    path = target if target in BUNDLED else str(variant_dir(target))
    assert cli.main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "quant_method: quark" in out and "exclude: ['lm_head']" in out
    assert "quantized: 14 layer(s)" in out and "excluded: 1 layer(s)" in out and "unsupported" not in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("model.", "lm_head"))}
    kb = "32.0 KB" if target.startswith("bf16") else "64.0 KB"  # 256 x 64 float
    assert "excluded (exclude 'lm_head')" in rows["lm_head"] and kb in rows["lm_head"]
    layers = reference_layers(target) if target in VARIANTS else [p for p in rows if p.endswith("_proj")]
    assert len(layers) == 14
    for layer in layers:
        assert "Quark" in rows[layer], rows[layer]
    assert ("KV cache: float8_e4m3fn per_tensor" in out) == target.endswith("kv_fp8")


def test_inspect_reports_unsupported_layers_and_broken_checkpoints(tmp_path, capsys):
    def only_down_proj_int4(config):
        qc = config["quantization_config"]
        spec = {**qc["global_quant_config"], "weight": {"dtype": "int4", "qscheme": "per_group", "group_size": 128}}
        qc["layer_quant_config"] = {"*down_proj": spec}
    d = edited_copy(variant_dir("w_fp8_a_fp8_pertensor_static"), tmp_path / "a", config_edit=only_down_proj_int4)
    assert cli.main(["inspect", str(d)]) == 1
    out = capsys.readouterr().out
    assert "unsupported: 2 layer(s)" in out and "quantized: 12 layer(s)" in out
    assert "unsupported model.layers.1.mlp.down_proj: layer model.layers.1.mlp.down_proj: no quark_jax scheme" in out
    assert "Weight config: {dtype: 'int4', qscheme: 'per_group', group_size: 128}" in out
    d2 = edited_copy(variant_dir("w_fp8_a_fp8_pertensor_static"), tmp_path / "b")
    truncate(d2 / "model.safetensors", 10)
    assert cli.main(["inspect", str(d2)]) == 2
    assert "is damaged" in capsys.readouterr().err
    d3 = edited_copy(variant_dir("w_fp8_a_fp8_pertensor_static"), tmp_path / "c",
                     config_edit=lambda c: c["quantization_config"].update(quant_method="awq"))
    assert cli.main(["inspect", str(d3)]) == 1
    assert "quant_method: expected 'quark', got 'awq'" in capsys.readouterr().err


@pytest.mark.parametrize("variant, scheme", [("mixtral/w_fp8_a_fp8_pertensor_static", "QuarkW8A8Fp8"),
                                             ("qwen3_moe/w_mxfp4_a_mxfp4", "QuarkW4A4MXFP4")])
def test_inspect_and_check_moe_checkpoints(variant, scheme, capsys):
    """MoE exports (amd-quark 0.13, tests/fixtures/quark_tiny_moe): every expert projection of every sparse layer
    is listed with its scheme, routers stay unquantized, dense (mlp_only) layers keep their MLP, check finds no
    problem. Expected counts come from config.json, not from the command."""
    import json

    from conftest import FIXTURES

    d = FIXTURES.parent / "quark_tiny_moe" / variant
    cfg = json.loads((d / "config.json").read_text())
    experts, layers = cfg["num_local_experts"], cfg["num_hidden_layers"]
    dense = set(cfg.get("mlp_only_layers", []))
    assert cli.main(["inspect", str(d)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("model.", "lm_head"))}
    for layer in range(layers):
        gate = rows[f"model.layers.{layer}.mlp.gate"] if layer not in dense else None
        assert layer in dense or "Quark" not in gate, gate  # the router is never quantized
        names = ([f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")] if layer in dense else
                 [f"mlp.experts.{e}.{p}" for e in range(experts) for p in ("gate_proj", "up_proj", "down_proj")])
        for name in names:
            assert scheme in rows[f"model.layers.{layer}.{name}"], name
    assert not any(f"experts.{experts}." in r for r in rows)
    assert cli.main(["check", str(d)]) == 0
    assert "no problems found" in capsys.readouterr().out
