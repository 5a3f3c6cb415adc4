"""from_pretrained's loading path (issue 14): the abstract model and Quark layers built without a trace per layer
equal the traced ones, and the threaded pipeline (jobs in reader threads, bytes in flight bounded) loads exactly
what one thread loads, with errors in checkpoint order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax.data import bundled_checkpoint
from quark_jax.errors import CheckpointError
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
