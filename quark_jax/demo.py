"""``quark-jax demo``: per quantized layer of a checkpoint, the error of the layer's own quantized computation.

For each quantized linear layer (a :class:`~quark_jax.nn.QuarkLinear` built from the checkpoint, so each scheme
runs its own activation quantizer: FP8, INT8 or MXFP4, static or dynamic):

* ``x``: ``rows`` activation rows drawn N(0, sigma^2) with numpy (``seed``), sigma chosen so the rows lie in the
  range the layer was calibrated for: for a static input scale s, ``sigma = s * qmax / 4`` (qmax 448 for FP8, 127
  for INT8), so the rows' amax is about the calibrated amax ``s * qmax``; for NVFP4's static global input scale
  (``input_scale_2`` = 1/g) ``sigma = 448 * 6 / (4 g)``; sigma = 1 for dynamic and weight-only inputs. (Drawing N(0, 1) for every layer, as the first version did, clips the inputs of layers calibrated on
  small activations: o_proj / down_proj of the bundled FP8 checkpoint have calibrated amax 0.43 / 0.13, hence
  errors of 0.68 / 0.90 instead of about 0.04.)
* ``weight_error``: ``|W_deq - W_float| / |W_float|`` (Frobenius) when a float reference checkpoint is known;
* ``output_error``: ``|y - y_ref| / |y_ref|`` with ``y`` the quantized layer's output and ``y_ref = x @ W_float.T``
  (float64), or ``x @ W_deq.T`` (then only the activation quantization is measured; a weight-only layer has none:
  ``None``) when no float reference is known;
* ``compile_ms`` (the first jitted call: compilation, about 0 for a layer whose scheme and shapes were already
  compiled) and ``run_ms`` (median of 5 later calls), apart.

The float reference defaults to the bundled float model for the bundled checkpoints (``quark_jax.data``).

>>> rows = layer_errors("tiny-llama-fp8")
>>> rows[0].layer, rows[0].output_error < 0.1, rows[0].weight_error < 0.1
('model.layers.0.mlp.down_proj', True, True)
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from quark_jax.errors import InvalidArgumentError

__all__ = ["LayerError", "layer_errors", "demo_inputs", "default_reference"]


@dataclasses.dataclass(frozen=True)
class LayerError:
    """One row of the demo (errors relative, Frobenius norms; None where not measured)."""

    layer: str
    scheme: str
    output_error: float | None
    weight_error: float | None
    compile_ms: float
    run_ms: float


def default_reference(checkpoint_dir: Path) -> Path | None:
    """The float checkpoint a bundled checkpoint was quantized from, else None."""
    from quark_jax.data import BUNDLED, FLOAT_CHECKPOINT

    bundled = {Path(p).resolve() for p in BUNDLED.values()}
    return FLOAT_CHECKPOINT if Path(checkpoint_dir).resolve() in bundled else None


def demo_inputs(layer, rows: int, seed: int) -> np.ndarray:
    """The demo's activations [rows, K] float32 for a loaded :class:`~quark_jax.nn.QuarkLinear` (module doc)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, layer.in_features)).astype(np.float32)
    scheme = layer.scheme
    if "input_scale" in layer.param_names:
        s = float(np.max(np.asarray(layer.input_scale[...], np.float32)))
        qmax = 127.0 if "Int8" in type(scheme).__name__ else 448.0
        x *= np.float32(s * qmax / 4)
    if "input_global_scale" in layer.param_names:  # NVFP4: its static global scale g spans amax = 448 * 6 / g
        x *= np.float32(448.0 * 6.0 / 4.0 / float(np.asarray(layer.input_global_scale[...], np.float32)))
    return x


def _timed(fn, *args, repeat: int = 5):
    t0 = time.perf_counter()
    out = fn(*args)
    out.block_until_ready()
    compile_ms = 1e3 * (time.perf_counter() - t0)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(1e3 * (time.perf_counter() - t0))
    return out, compile_ms, float(np.median(times))


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def layer_errors(checkpoint: str | os.PathLike, *, reference: str | os.PathLike | None = None, rows: int = 8,
                 seed: int = 0, layers=None) -> list[LayerError]:
    """The demo's rows for every quantized layer of ``checkpoint`` (or those in ``layers``, checkpoint order,
    module doc); ``reference`` is a float
    checkpoint with the same layer names (default: :func:`default_reference`). A checkpoint without
    ``quantization_config`` raises :class:`~quark_jax.errors.InvalidArgumentError`."""
    import jax.numpy as jnp

    from quark_jax.checkpoint import open_checkpoint
    from quark_jax.config import QuarkConfig
    from quark_jax.io import resolve_checkpoint
    from quark_jax.nn import QuarkLinear
    from quark_jax.schemes import apply_params

    directory = resolve_checkpoint(checkpoint)
    reader = open_checkpoint(directory)
    if reader.config.get("quantization_config") is None:
        raise InvalidArgumentError(f"checkpoint {directory}: no quantization_config in config.json, a float "
                                   "checkpoint: the demo measures quantized layers (give a Quark checkpoint)")
    ref_dir = resolve_checkpoint(reference) if reference is not None else default_reference(directory)
    ref = open_checkpoint(ref_dir) if ref_dir is not None else None
    cfg = QuarkConfig.from_pretrained(directory)
    out = []
    for path in cfg.layer_paths():
        scheme = cfg.scheme_for(path)
        if scheme is None or (layers is not None and path not in layers):
            continue
        layer = QuarkLinear.from_pretrained(directory, path, dtype=jnp.float32, config=cfg)
        x = demo_inputs(layer, rows, seed)
        y, compile_ms, run_ms = _timed(lambda v: apply_params(layer.scheme, layer.params(), v), x)
        w_deq = np.asarray(layer.dequantized_weight(), np.float64)
        w_float = None
        if ref is not None and f"{path}.weight" in ref:
            w_float = ref.get(f"{path}.weight").astype(np.float64)
        y = np.asarray(y, np.float64)
        x64 = x.astype(np.float64)
        if w_float is not None:
            output_error, weight_error = _rel(y, x64 @ w_float.T), _rel(w_deq, w_float)
        else:
            weight_only = "input_scale" not in layer.param_names and (
                "A16" in type(scheme).__name__ or getattr(scheme, "input_dtype", "") is None)
            output_error, weight_error = (None if weight_only else _rel(y, x64 @ w_deq.T)), None
        out.append(LayerError(path, scheme.summary(), output_error, weight_error, compile_ms, run_ms))
    return out
