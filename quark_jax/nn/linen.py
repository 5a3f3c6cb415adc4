"""The Linen counterpart of :class:`~quark_jax.nn.QuarkLinear`: ``QuarkDense``, a drop-in for ``nn.Dense``.

Use it where a Linen model has ``nn.Dense`` layers: give it the Quark config (a :class:`~quark_jax.QuarkConfig`,
a checkpoint directory or a ``quantization_config`` dict) and it resolves its own scheme from its module path;
give it ``checkpoint`` too and ``model.init`` loads and processes the layer's parameters from that checkpoint.

* Module path: the Linen path (``self.path``) joined by dots behind ``prefix``, with a trailing ``_<n>`` of a
  component read as a list index (Linen names list items ``layers_0``; HF checkpoints say ``layers.0``).
  ``checkpoint_path`` overrides the whole path.
* Variables: the processed scheme params (and ``bias``) live in the ``"quark"`` collection, so an optimizer over
  ``"params"`` leaves them alone; an unquantized (excluded) layer keeps a float ``kernel`` [in, out] (and ``bias``)
  in ``"params"``. Pass all collections to ``apply``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from quark_jax.quant import dot_precision, round_to
from quark_jax.schemes import apply_params

__all__ = ["QuarkDense", "linen_module_path"]

_INDEXED = re.compile(r"^(.*\D)_(\d+)$")


def linen_module_path(path: tuple, prefix: str = "") -> str:
    """``('model', 'layers_0', 'mlp')`` -> ``'model.layers.0.mlp'`` (behind ``prefix``).

    >>> linen_module_path(('layers_3', 'self_attn', 'q_proj'), prefix='model')
    'model.layers.3.self_attn.q_proj'
    """
    parts = [prefix] if prefix else []
    for p in path:
        m = _INDEXED.match(str(p))
        parts.extend([m.group(1), m.group(2)] if m else [str(p)])
    return ".".join(parts)


class QuarkDense(nn.Module):
    """``nn.Dense`` with a Quark scheme: ``y [..., features] = scheme(x [..., K])`` in ``dtype`` (default: x's).

    Attributes: ``features``; ``config`` (QuarkConfig / checkpoint dir / dict) or ``scheme`` (a scheme, or None
    for a float layer); ``checkpoint`` (directory to load from at init; else params start as zeros);
    ``prefix`` / ``checkpoint_path``; ``logical_widths`` (fused shard sizes, default from the checkpoint);
    ``use_bias``; ``dtype``.

    >>> from quark_jax.data import bundled_checkpoint
    >>> ckpt = bundled_checkpoint("tiny-llama-fp8")
    >>> layer = QuarkDense(128, config=ckpt, checkpoint=ckpt, checkpoint_path="model.layers.0.mlp.up_proj")
    >>> variables = layer.init(jax.random.PRNGKey(0), jnp.ones((2, 64)))
    >>> layer.apply(variables, jnp.ones((2, 64))).shape, variables["quark"]["weight"].dtype
    ((2, 128), dtype(float8_e4m3fn))
    """

    features: int
    config: Any = None
    scheme: Any = None
    checkpoint: Any = None
    prefix: str = ""
    checkpoint_path: str | None = None
    logical_widths: tuple | None = None
    use_bias: bool = False
    dtype: Any = None

    def _layer_path(self) -> str:
        return self.checkpoint_path or linen_module_path(self.path, self.prefix)

    def _scheme(self, path):
        if self.scheme is not None or self.config is None:
            return self.scheme
        from quark_jax.nn.substitute import as_quark_config

        return as_quark_config(self.config).scheme_for(path)

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x)
        dtype = jnp.dtype(self.dtype) if self.dtype is not None else x.dtype
        path = self._layer_path()
        scheme = self._scheme(path)
        k = x.shape[-1]
        if scheme is None:
            return self._float(x, k, dtype, path)
        from quark_jax.nn.linear import QuarkLinear

        def build():
            return QuarkLinear(k, self.features, scheme=scheme, logical_widths=self._widths(path, scheme),
                               use_bias=self.use_bias, dtype=dtype, name=path)

        if self.is_initializing():  # an abstract layer gives the processed shapes; a checkpoint fills them
            from flax import nnx

            layer = nnx.eval_shape(build)
            if self.checkpoint is not None:
                layer.load_checkpoint(self._reader(), path)
            names = list(layer.param_names) + (["bias"] if layer.use_bias else [])
        else:
            layer, names = None, list(self.variables.get("quark", {}))

        def init(name):
            value = getattr(layer, name).get_value()
            return jnp.zeros(value.shape, value.dtype) if isinstance(value, jax.ShapeDtypeStruct) else value

        params = {name: self.variable("quark", name, init, name).value for name in names}
        bias = params.pop("bias", None)
        return apply_params(scheme, params, round_to(x, dtype), bias)

    def _reader(self):
        from quark_jax.checkpoint import open_checkpoint

        return open_checkpoint(self.checkpoint)

    def _widths(self, path, scheme):
        if self.logical_widths is not None:
            return tuple(self.logical_widths)
        from quark_jax.checkpoint import shard_paths

        if len(shard_paths(path)) == 1:
            return None
        source = self.checkpoint if self.checkpoint is not None else getattr(self.config, "checkpoint_dir", None)
        if source is None and isinstance(self.config, (str, os.PathLike)):
            source = self.config
        if source is None:
            raise ValueError(f"layer {path}: a fused layer needs logical_widths or a checkpoint to read them from")
        from quark_jax.checkpoint import layer_geometry, open_checkpoint

        return layer_geometry(open_checkpoint(source), path, scheme).logical_widths

    def _float(self, x, k, dtype, path):
        """An unquantized layer (excluded by the config): float kernel [K, N], f32 accumulation."""
        def load(name, shape):
            def init(key, shape=shape):
                if self.checkpoint is None:
                    return nn.initializers.lecun_normal()(key, shape, dtype) if name == "kernel" else \
                        jnp.zeros(shape, dtype)
                import numpy as np

                arr = np.asarray(self._reader().get(f"{path}.{'weight' if name == 'kernel' else 'bias'}"))
                arr = arr.T if name == "kernel" else arr
                if arr.shape != shape:
                    from quark_jax.errors import CheckpointError

                    raise CheckpointError(f"layer {path}: tensor {path}.weight has shape {list(arr.shape[::-1])}, "
                                          f"expected {[shape[1], shape[0]]}")
                return jnp.asarray(arr.astype(np.float32)).astype(dtype)
            return self.param(name, init)

        kernel = load("kernel", (k, self.features))
        y = jnp.dot(x.astype(dtype), kernel, precision=dot_precision(kernel), preferred_element_type=jnp.float32)
        if self.use_bias:
            y = y + load("bias", (self.features,)).astype(jnp.float32)
        return round_to(y, dtype)

