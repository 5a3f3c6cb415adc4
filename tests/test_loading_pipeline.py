"""from_pretrained's loading path (issue 14): the abstract model and Quark layers built without a trace per layer
equal the traced ones, and the threaded pipeline (jobs in reader threads, bytes in flight bounded) loads exactly
what one thread loads, with errors in checkpoint order; MoE experts load as parallel chunk jobs stacked on the
device (issue 22)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax.data import bundled_checkpoint
from quark_jax.checkpoint import open_checkpoint
from quark_jax.errors import CheckpointError
from quark_jax.io import SafetensorsFile
from quark_jax.models import from_pretrained
from quark_jax.models.config import ModelConfig
from quark_jax.models.llama import LlamaForCausalLM
from quark_jax.nn import QuarkLinear
from quark_jax.nn import load as load_mod
from quark_jax.schemes import QuarkW8A8Fp8


def _shapes(state):
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype).name), state)


def test_abstract_model_equals_the_traced_one():
    cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
                                 "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1})
    moe = ModelConfig.from_dict({"model_type": "qwen3_moe", "vocab_size": 16, "hidden_size": 32,
                                 "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
                                 "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                                 "mlp_only_layers": [0, 3]})  # dense, sparse, sparse, dense
    for cfg, fused in ((cfg, False), (cfg, True), (moe, True)):
        a = LlamaForCausalLM.abstract(cfg, dtype=jnp.bfloat16, fuse_projections=fused)
        b = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                                                    fuse_projections=fused))
        (ga, sa), (gb, sb) = nnx.split(a), nnx.split(b)
        assert ga == gb and _shapes(sa) == _shapes(sb)
        assert a.model.layers[0] is not a.model.layers[-1]  # clones, not one layer three times


def test_abstract_quark_linear_equals_eval_shape():
    scheme = QuarkW8A8Fp8(weight_qscheme="per_tensor", activation="static")
    kw = dict(scheme=scheme, logical_widths=(32, 16, 16), dtype=jnp.bfloat16, name="qkv_proj")
    a = QuarkLinear(64, 64, abstract=True, **kw)
    b = nnx.eval_shape(lambda: QuarkLinear(64, 64, **kw))
    assert isinstance(a.weight.get_value(), jax.ShapeDtypeStruct)
    assert nnx.graphdef(a) == nnx.graphdef(b) and _shapes(nnx.state(a)) == _shapes(nnx.state(b))


@pytest.mark.parametrize("name", ["tiny-llama-fp8"])
def test_pipelined_load_equals_one_thread_and_bounds_bytes_in_flight(monkeypatch, name):
    d = bundled_checkpoint(name)
    monkeypatch.setattr(load_mod, "READ_THREADS", 1)
    one = nnx.state(from_pretrained(d, progress=False))
    monkeypatch.setattr(load_mod, "READ_THREADS", 4)
    monkeypatch.setattr(load_mod, "READ_AHEAD_BYTES", 20_000)  # a few layers of the tiny model at a time
    many = nnx.state(from_pretrained(d, progress=False))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), one, many)
    st = load_mod.PIPELINE_STATS
    assert st["jobs"] > 10 and 0 < st["peak_in_flight_bytes"] <= max(20_000, st["largest_job_bytes"])


def test_pipelined_load_reports_a_bad_tensor(tmp_path):
    from tests.checkpoint_tools import edited_copy, read_tensors

    src = bundled_checkpoint("tiny-llama-fp8")
    name = next(n for n in sorted(read_tensors(src)) if n.endswith("layers.1.mlp.down_proj.weight_scale"))
    shape = read_tensors(src)[name].shape
    d = edited_copy(src, tmp_path / "ckpt", add={name: np.full(shape, -1.0, np.float32)})  # invalid: < 0
    with pytest.raises(CheckpointError, match="layers.1.mlp.down_proj"):
        from_pretrained(d, progress=False)


MOE = Path(__file__).parent / "fixtures" / "quark_tiny_moe"


def _load_moe(monkeypatch, d, *, chunk_bytes, threads, ahead=1 << 30, **kw):
    monkeypatch.setattr(load_mod, "EXPERT_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(load_mod, "READ_THREADS", threads)
    monkeypatch.setattr(load_mod, "READ_AHEAD_BYTES", ahead)
    model = from_pretrained(d, progress=False, **kw)
    return model, dict(load_mod.PIPELINE_STATS)


def test_moe_experts_load_as_parallel_chunk_jobs(monkeypatch):
    """A MoE checkpoint's experts load as chunk jobs (1-2 experts each here) in 4 threads with bytes in flight
    bounded, equal to one job per experts module in one thread, and the stacked params are exactly the
    per-expert tensors of the file (Quark's per-expert semantics: no requantization)."""
    d = MOE / "mixtral" / "w_fp8_a_fp8_pertensor_static"
    kw = dict(fuse_projections=False, expert_scales="checkpoint")
    one, st1 = _load_moe(monkeypatch, d, chunk_bytes=1 << 40, threads=1, **kw)
    many, st = _load_moe(monkeypatch, d, chunk_bytes=10_000, threads=4, ahead=30_000, **kw)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 nnx.state(one), nnx.state(many))
    layers = one.config.num_hidden_layers
    reader = open_checkpoint(d)
    ex = many.model.layers[0].mlp.experts
    assert ex.gate_up_proj.expert_chunks(reader, 10_000) == [(e, e + 1, 8208) for e in range(4)]  # weight + 4 scales
    assert ex.down_proj.expert_chunks(reader, 10_000) == [(0, 2, 8208), (2, 4, 8208)]
    assert st["jobs"] == st1["jobs"] + layers * (4 + 2 - 2)  # per layer 4 + 2 expert jobs instead of 1 + 1
    assert 0 < st["peak_in_flight_bytes"] <= max(30_000, st["largest_job_bytes"])
    raw = SafetensorsFile(d / "model.safetensors")
    for li in range(layers):
        ex = many.model.layers[li].mlp.experts
        for e in range(4):
            p = f"model.layers.{li}.mlp.experts.{e}."
            gate, up = raw.get(p + "gate_proj.weight"), raw.get(p + "up_proj.weight")
            np.testing.assert_array_equal(np.asarray(ex.gate_up_proj.weight[...][e]), np.concatenate([gate, up]))
            np.testing.assert_array_equal(np.asarray(ex.down_proj.weight[...][e]), raw.get(p + "down_proj.weight"))
            scales = np.repeat([raw.get(p + "gate_proj.weight_scale"), raw.get(p + "up_proj.weight_scale")],
                               gate.shape[0])
            np.testing.assert_array_equal(np.asarray(ex.gate_up_proj.weight_scale[...][e]), scales)
            x_scale = max(raw.get(p + "gate_proj.input_scale"), raw.get(p + "up_proj.input_scale"))
            assert float(ex.gate_up_proj.input_scale[...][e]) == float(x_scale)


def test_fused_float_experts_load_in_row_slices(monkeypatch, tmp_path):
    """transformers 5's fused 3-D expert tensors ([E, 2I, H] gate_up, [E, H, I] down) load in chunks of experts
    (row slices of the tensor), equal to the per-expert checkpoint they were made from."""
    from tests.checkpoint_tools import edited_copy, read_tensors

    src = MOE / "qwen3_moe" / "float"
    t = read_tensors(src)
    fused, drop = {}, []
    for li in (0, 2):  # the sparse layers (mlp_only_layers = [1])
        p = f"model.layers.{li}.mlp.experts."
        names = {proj: [f"{p}{e}.{proj}.weight" for e in range(8)] for proj in ("gate_proj", "up_proj", "down_proj")}
        fused[p + "gate_up_proj"] = np.stack([np.concatenate([t[g], t[u]])
                                              for g, u in zip(names["gate_proj"], names["up_proj"])])
        fused[p + "down_proj"] = np.stack([t[n] for n in names["down_proj"]])
        drop += [n for ns in names.values() for n in ns]
    d = edited_copy(src, tmp_path / "fused", drop=drop, add=fused)
    want, _ = _load_moe(monkeypatch, src, chunk_bytes=1 << 40, threads=1)
    got, _ = _load_moe(monkeypatch, d, chunk_bytes=3 * 64 * 64 * 4, threads=4)  # 3 experts of gate_up
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 nnx.state(want), nnx.state(got))
    np.testing.assert_array_equal(np.asarray(got.model.layers[2].mlp.experts.gate_up_proj.weight[...]),
                                  fused["model.layers.2.mlp.experts.gate_up_proj"])
    chunks = got.model.layers[2].mlp.experts.gate_up_proj.expert_chunks(open_checkpoint(d), 3 * 64 * 64 * 4)
    assert [c[:2] for c in chunks] == [(0, 3), (3, 6), (6, 8)]
