"""Inside jit: out-of-range ids and non-finite activations have a documented result (NaN logits), and
``checks=True`` (checkify) of the model call and of generate raises naming the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax.errors import RuntimeCheckError
from quark_jax.models import from_pretrained


@pytest.fixture(scope="module")
def model():
    return from_pretrained("tiny-llama-fp8")


def test_checks_pass_on_good_input_and_equal_the_plain_call(model):
    ids = np.array([[1, 5, 9]])  # one shape in this file: one compile of the checked pass
    np.testing.assert_array_equal(np.asarray(model(ids, checks=True)), np.asarray(model(ids)))


def test_out_of_range_id_inside_jit_is_nan_and_checks_name_it(model):
    logits = np.asarray(jax.jit(lambda ids: model(ids))(jnp.array([[1, 500, 9]])), np.float32)
    assert np.isnan(logits[0, 1]).all() and np.isfinite(logits[0, 0]).all()  # documented: NaN, no clamping
    with pytest.raises(RuntimeCheckError, match=r"^input_ids: token id 500 at flat index 1 is out of range for "
                                                r"vocab_size 256$"):
        model(np.array([[1, 500, 9]]), checks=True)
    with pytest.raises(RuntimeCheckError, match="token id -3 at flat index 0"):
        model(np.array([[-3, 5, 9]]), checks=True)


def test_non_finite_activation_names_the_layer(model):
    from flax import nnx

    bad = nnx.clone(model)
    layer = bad.model.layers[1].mlp.down_proj
    layer.weight_scale.set_value(layer.weight_scale[...] * jnp.inf)
    assert np.isnan(np.asarray(bad(np.array([[1, 5, 9]])), np.float32)).any()  # silently non-finite without checks
    with pytest.raises(RuntimeCheckError, match=r"^model\.layers\.1\.mlp\.down_proj: non-finite values \(NaN or "
                                                r"inf\) in its output, first at flat index \d+$"):
        bad(np.array([[1, 5, 9]]), checks=True)
    with pytest.raises(RuntimeCheckError, match=r"^model\.layers\.1\.mlp\.down_proj: non-finite"):
        bad.generate(np.array([[1, 5, 9]]), 3, checks=True)


def test_run_checks_flag_names_the_layer(model, tmp_path, capsys):
    from checkpoint_tools import edited_copy, read_tensors

    from quark_jax import cli
    from quark_jax.data import BUNDLED

    name = "model.layers.0.input_layernorm.weight"  # a float tensor: not checked at load (only by `check`)
    w = read_tensors(BUNDLED["tiny-llama-fp8"])[name].copy()
    w[3] = np.nan
    d = edited_copy(BUNDLED["tiny-llama-fp8"], tmp_path / "nan_norm", add={name: w})
    assert cli.main(["run", str(d), "--prompt-ids", "1,5,9", "--max-new-tokens", "2", "--checks"]) == 2
    err = capsys.readouterr().err
    # the FP8 quantizer maps the NaN to +448 (vLLM), so the projection's output is finite: its input is named
    assert err.startswith("error: model.layers.0.self_attn.qkv_proj: non-finite values (NaN or inf) in its input")
    assert err.count("\n") == 1
    assert cli.main(["check", str(d)]) == 1
    assert f"tensor '{name}'" in capsys.readouterr().out
