"""QuarkDense (Linen): resolves its scheme by module path, loads at init, equals the NNX QuarkLinear."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import variant_dir
from quark_jax import QuarkConfig
from quark_jax.models import from_pretrained
from quark_jax.nn.linen import QuarkDense

VARIANT = "w_int8_perchannel_sym_a_int8_pertensor_static_sym"


class LinenMLP(nn.Module):
    """A user's Linen MLP block whose Dense layers are QuarkDense (names as in the HF checkpoint)."""

    config: object
    checkpoint: object
    prefix: str

    @nn.compact
    def __call__(self, x):
        dense = lambda n, name: QuarkDense(n, config=self.config, checkpoint=self.checkpoint,  # noqa: E731
                                           prefix=self.prefix, name=name)
        g, u = dense(128, "gate_proj")(x), dense(128, "up_proj")(x)
        return dense(64, "down_proj")(nn.silu(g) * u)


class LinenHead(nn.Module):
    config: object
    checkpoint: object

    @nn.compact
    def __call__(self, x):
        return QuarkDense(256, config=self.config, checkpoint=self.checkpoint, name="lm_head")(x)


@pytest.fixture(scope="module")
def nnx_model():
    return from_pretrained(variant_dir(VARIANT), fuse_projections=False)  # Quark's layout: gate_proj, up_proj


def test_quark_dense_in_a_linen_model_equals_quark_linear(nnx_model):
    d = variant_dir(VARIANT)
    cfg = QuarkConfig.from_pretrained(d)
    mlp = LinenMLP(cfg, d, "model.layers.1.mlp")
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 64), jnp.float32)
    variables = mlp.init(jax.random.PRNGKey(0), x)
    assert "params" not in variables  # every layer quantized: nothing for an optimizer
    assert variables["quark"]["gate_proj"]["weight"].dtype == jnp.int8
    y = np.asarray(jax.jit(mlp.apply)(variables, x))
    ref_mlp = nnx_model.model.layers[1].mlp
    g, u = ref_mlp.gate_proj(x), ref_mlp.up_proj(x)
    np.testing.assert_array_equal(np.asarray(ref_mlp.down_proj(jax.nn.silu(g) * u)), y)


def test_excluded_layer_stays_float_and_loads_the_checkpoint_weight(nnx_model):
    d = variant_dir(VARIANT)
    head = LinenHead(d, d)  # config given as a directory; lm_head is excluded there
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 64), jnp.float32)
    variables = head.init(jax.random.PRNGKey(0), x)
    assert "quark" not in variables
    np.testing.assert_array_equal(np.asarray(variables["params"]["lm_head"]["kernel"]),
                                  np.asarray(nnx_model.lm_head.kernel[...]))
    np.testing.assert_allclose(np.asarray(head.apply(variables, x)), np.asarray(nnx_model.lm_head(x)),
                               atol=1e-6, rtol=0)


def test_linen_path_with_list_index():
    from quark_jax.nn.linen import linen_module_path

    assert linen_module_path(("model", "layers_12", "mlp", "down_proj")) == "model.layers.12.mlp.down_proj"
    assert linen_module_path(("block",), prefix="model.layers.0") == "model.layers.0.block"
