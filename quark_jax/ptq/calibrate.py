"""Calibration: run a float Flax NNX model on token batches and record, per linear layer, the min/max of its
input (static per-tensor input scales) and of its output (KV-cache scales of the k/v projections), as Quark's
per-tensor min-max observers do (running min/max over every batch, float forward pass: Quark observes the
unquantized activations).
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.nn.load import module_path
from quark_jax.nn.substitute import set_attr_at
from quark_jax.ptq.observers import MinMax
from quark_jax.quant.rounding import exact_f32, round_to

__all__ = ["NUMERICS", "ObserverSlot", "Observer", "calibrate"]


class ObserverSlot(nnx.Variable):
    """The int32 index under which an :class:`Observer` reports its ranges to the running calibration (state,
    not a static attribute: a decoder may trace one layer's graph for all layers of the same structure).

    >>> int(ObserverSlot(jnp.int32(3))[...])
    3
    """


_SINKS: dict[int, list[MinMax]] = {}  # slot -> [input range, output range per slice], while calibrate() runs
_NEXT_SLOT = itertools.count()


def _record(slot, lo, hi, *, which: int):
    """Host side of an observation: fold (lo, hi) into the slot's range ``which`` (0 = input, 1 + i = slice i)."""
    _SINKS[int(slot)][which].merge(np.float32(lo), np.float32(hi))


def _report(slot, v, which: int):
    jax.debug.callback(partial(_record, which=which), slot, jnp.min(v), jnp.max(v))


class Observer(nnx.Module):
    """Wraps a linear layer: ``y = layer(x)``, reporting min/max of x (``inputs``) and of y rounded to x's dtype
    (``outputs``) to the host (``jax.debug.callback``; min/max folding is order-free), under ``slot``.
    ``slices`` (for a fused layer) observe the output per shard: a list of (start, stop) column ranges."""

    def __init__(self, layer, *, slot: int, inputs: bool, outputs: bool, slices=None):
        self.layer = layer
        self.slot = ObserverSlot(jnp.int32(slot))
        self.observe_inputs, self.observe_outputs = inputs, outputs
        self.slices = tuple(slices) if slices else ((None, None),)

    def __call__(self, x):
        if self.observe_inputs:
            _report(self.slot[...], exact_f32(x), 0)
        y = self.layer(x)
        if self.observe_outputs:
            yr = exact_f32(round_to(y, x.dtype))
            for i, (a, b) in enumerate(self.slices):
                _report(self.slot[...], yr[..., a:b], 1 + i)
        return y


@nnx.jit
def _run(model, input_ids):
    model(input_ids)


NUMERICS = ("torch", "xla")
"""Calibration forward passes: ``torch`` rounds as amd-quark's torch CPU forward (HF Llama, eager attention;
:mod:`quark_jax.ptq.torch_numerics`, Llama-family quark_jax models only, float64-emulated and slower); ``xla`` is
the model's own forward (any NNX model, fast; activations a few ulps from torch's)."""


def calibrate(model, observe: Mapping[str, tuple[bool, bool]], batches: Iterable, *,
              output_slices: Mapping[str, list] | None = None, numerics: str = "torch"
              ) -> dict[str, dict[str, MinMax]]:
    """Observe the linears of ``model`` (paths as :func:`quark_jax.nn.load.module_path` gives them) over
    ``batches`` of token ids [B, T] (each run through the forward pass ``numerics`` names, :data:`NUMERICS`,
    jitted per batch shape).

    ``observe`` maps a layer path to (observe inputs, observe outputs). Returns ``{path: {"input": MinMax,
    "output": [MinMax per output slice]}}``. The model is left as it was (the observers are removed again).
    """
    if numerics not in NUMERICS:
        raise ValueError(f"numerics: expected one of {NUMERICS}, got {numerics!r}")
    if numerics == "torch":
        return _calibrate_torch(model, observe, batches, output_slices or {})
    wrapped = []
    for path, module in list(nnx.iter_modules(model)):
        p = module_path(path)
        if p in observe and path:
            inputs, outputs = observe[p]
            slices = (output_slices or {}).get(p)
            slot = next(_NEXT_SLOT)
            _SINKS[slot] = [MinMax() for _ in range(1 + max(1, len(slices or ())))]
            obs = Observer(module, slot=slot, inputs=inputs, outputs=outputs, slices=slices)
            set_attr_at(model, path, obs)
            wrapped.append((path, p, obs, slot))
    n = 0
    try:
        missing = sorted(set(observe) - {p for _, p, _, _ in wrapped})
        if missing:
            raise ValueError(f"calibrate: the model has no layer at {missing[:4]} (paths to observe)")
        for ids in batches:
            ids = np.asarray(ids)
            if ids.ndim == 1:
                ids = ids[None]
            _run(model, jnp.asarray(ids, jnp.int32))
            n += 1
        jax.effects_barrier()  # every observation has reached the host
        if n == 0:
            raise ValueError("calibration_batches: no batches (static input or KV-cache scales need calibration "
                             "data)")
        return {p: {"input": _SINKS[slot][0], "output": _SINKS[slot][1:]} for _, p, _, slot in wrapped}
    finally:
        for path, _, obs, slot in wrapped:
            set_attr_at(model, path, obs.layer)
            _SINKS.pop(slot, None)


def _calibrate_torch(model, observe, batches, output_slices):
    from quark_jax.ptq.torch_numerics import TorchNumerics

    tn = TorchNumerics(model)
    missing = sorted(set(observe) - set(tn.linear_paths))
    if missing:
        raise ValueError(f"calibrate: the model has no layer at {missing[:4]} (paths to observe)")
    out = {p: {"input": MinMax(), "output": [MinMax() for _ in (output_slices.get(p) or [None])]}
           for p in observe}
    n = 0
    for ids in batches:
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        for p, (rin, routs) in tn.ranges(ids, observe, output_slices).items():
            if observe[p][0]:
                out[p]["input"].merge(*np.asarray(rin))
            if observe[p][1]:
                for m, r in zip(out[p]["output"], routs):
                    m.merge(*np.asarray(r))
        n += 1
    if n == 0:
        raise ValueError("calibration_batches: no batches (static input or KV-cache scales need calibration data)")
    return out
