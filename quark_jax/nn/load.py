"""``load_weights``: fill any flax.nnx model from an HF-style safetensors checkpoint, by module path.

Name mapping (module path ``p``, e.g. ``model.layers.0.self_attn.q_proj``):

| module | variable <- checkpoint tensor |
|---|---|
| ``nnx.Linear`` | ``kernel`` [in, out] <- ``p.weight`` [out, in] transposed; ``bias`` <- ``p.bias`` |
| ``nnx.Embed`` | ``embedding`` <- ``p.weight`` |
| ``nnx.RMSNorm`` / ``nnx.LayerNorm`` | ``scale`` <- ``p.weight``; ``bias`` <- ``p.bias`` |
| Quark layers (``QuarkLinear``) | their scheme's parameters (``p.weight``, ``p.weight_scale``, ...), then processed |
| decoder attention with an FP8 KV cache | ``k_scale`` <- ``p.k_proj.output_scale`` or ``p.k_scale`` (v likewise) |
| any other module | each ``nnx.Param`` attribute ``name`` <- ``p.name`` |

Float tensors are cast to the variable's dtype (round to nearest even). Every model variable must find its tensor
and every checkpoint tensor must find a variable (unless ``strict=False`` or it matches ``ignore``); errors name
the tensor, the layer and what was expected.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.nn.checkpoint_files import CheckpointTensors

__all__ = ["load_weights", "CheckpointMismatchError", "module_path"]

ALWAYS_IGNORED = ("*.rotary_emb.inv_freq",)
PROGRESS_MIN_BYTES = 256 << 20


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model (missing, unexpected, wrong shape or dtype)."""


def module_path(path) -> str:
    """``('model', 'layers', 0, 'mlp')`` -> ``'model.layers.0.mlp'``."""
    return ".".join(str(p) for p in path)


class _Progress:
    """A one-line stderr progress report (``\\r`` updates on a terminal, a few lines otherwise)."""

    def __init__(self, total_bytes: int, n: int, enabled: bool, label: str):
        self.total, self.n, self.enabled, self.label = total_bytes, n, enabled, label
        self.done_bytes = self.done = 0
        self.t0 = time.perf_counter()
        self.last_pct = -1
        self.tty = sys.stderr.isatty()

    def update(self, nbytes: int):
        self.done += 1
        self.done_bytes += nbytes
        if not self.enabled:
            return
        pct = int(100 * self.done_bytes / max(self.total, 1))
        step = 1 if self.tty else 25
        if pct // step == self.last_pct // step and self.done < self.n:
            return
        self.last_pct = pct
        el = time.perf_counter() - self.t0
        bar = "#" * (pct // 5) + "-" * (20 - pct // 5)
        line = (f"{self.label} [{bar}] {pct:3d}% {self.done}/{self.n} tensors, "
                f"{self.done_bytes / 1e9:.2f}/{self.total / 1e9:.2f} GB, {el:.1f} s")
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and self.done == self.n:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _direct_variables(module):
    """(name, variable) for the variables held directly by ``module`` (not by its submodules)."""
    return [(k, v) for k, v in vars(module).items() if isinstance(v, nnx.Variable)]


def _is_wide_float(dt: np.dtype) -> bool:
    return dt.itemsize >= 2 and (dt.kind == "f" or dt.name == "bfloat16")


def _check_dtype(src: np.dtype, dst, tensor: str, target: str) -> None:
    """A float variable takes any float tensor of >= 16 bits; a quantized tensor there is an error."""
    dst = np.dtype(dst)
    if src == dst or (_is_wide_float(dst) and _is_wide_float(src)):
        return
    if _is_wide_float(dst):
        raise CheckpointMismatchError(
            f"tensor {tensor}: dtype {src} is a quantized tensor, but {target} is a float layer; quantize "
            "the model first (quark_jax.quantize_model(model, quark_jax.QuarkConfig.from_pretrained(dir)))")
    raise CheckpointMismatchError(f"tensor {tensor}: dtype {src}, expected {dst} for {target}")


def _handlers():
    """(type, fn(module, prefix) -> list of (variable name, tensor names, transpose)) for the built-in rules."""
    from quark_jax.models.llama import Attention

    def linear(m, p):
        out = [("kernel", (p + "weight",), True)]
        if getattr(m, "bias", None) is not None:
            out.append(("bias", (p + "bias",), False))
        return out

    def norm(m, p):
        out = []
        if getattr(m, "scale", None) is not None:
            out.append(("scale", (p + "weight",), False))
        if getattr(m, "bias", None) is not None:
            out.append(("bias", (p + "bias",), False))
        return out

    return [
        (nnx.Linear, linear),
        (nnx.Embed, lambda m, p: [("embedding", (p + "weight",), False)]),
        ((nnx.RMSNorm, nnx.LayerNorm), norm),
        (Attention, lambda m, p: []),  # its KV scales are handled apart; the projections are submodules
    ]


def _nearest_module(name: str, paths: set[str]) -> str:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in paths:
            return ".".join(parts[:i])
    return ""


def load_weights(model, checkpoint_dir: str | os.PathLike, *, strict: bool = True, ignore=(),
                 progress: bool | None = None):
    """Fill ``model``'s variables from ``checkpoint_dir`` in place (see the module docstring); returns ``model``.

    ``strict=False`` tolerates checkpoint tensors the model has no place for (e.g. loading a few layers);
    missing tensors are always an error. ``ignore``: fnmatch patterns of checkpoint tensors to skip.
    ``progress``: a stderr progress line (default: only when the checkpoint holds more than 256 MiB).
    Quark layers (``QuarkLinear``) are filled and then processed (``process_weights_after_loading``).

    >>> import tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> d = tempfile.mkdtemp()
    >>> save_file({"proj.weight": np.eye(2, 3, dtype=np.float32)}, d + "/model.safetensors")
    >>> class M(nnx.Module):
    ...     def __init__(self): self.proj = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0))
    >>> load_weights(M(), d).proj.kernel[...].tolist()
    [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    ckpt = CheckpointTensors(checkpoint_dir)
    where = f"checkpoint {Path(checkpoint_dir)}"
    handlers = _handlers()
    quark_types = _quark_layer_types()
    from quark_jax.models.llama import Attention

    tasks = []  # (target description, variable, tensor name, transpose)
    kv_tasks = []  # (attention module, prefix)
    quark_layers = []  # (module, path)
    missing = []
    module_paths = set()
    for path, module in nnx.iter_modules(model):
        p = module_path(path)
        module_paths.add(p)
        prefix = p + "." if p else ""
        if quark_types and isinstance(module, quark_types):
            quark_layers.append((module, p))
            continue
        rules = None
        for typ, fn in handlers:
            if isinstance(module, typ):
                rules = fn(module, prefix)
                break
        if rules is None:
            rules = [(k, (prefix + k,), False) for k, v in _direct_variables(module) if isinstance(v, nnx.Param)]
        if isinstance(module, Attention) and getattr(module, "kv_fp8", False):
            kv_tasks.append((module, prefix))
        for var_name, candidates, transpose in rules:
            var = getattr(module, var_name)
            found = next((c for c in candidates if c in ckpt), None)
            if found is None:
                missing.append((candidates[0], f"{p or '<root>'}.{var_name}"))
                continue
            tasks.append((f"{type(module).__name__} {p or '<root>'}.{var_name}", var, found, transpose))

    if missing:
        lines = "; ".join(f"{t} (for {v})" for t, v in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointMismatchError(f"{where}: missing tensors: {lines}{more}")

    consumed = {t[2] for t in tasks}
    for module, prefix in kv_tasks:
        consumed |= _load_kv_scales(module, prefix, ckpt)
    for module, p in quark_layers:
        consumed |= set(_quark_tensor_names(module, p, ckpt))

    patterns = tuple(ignore) + ALWAYS_IGNORED
    leftover = [n for n in ckpt.names() if n not in consumed and not any(fnmatch.fnmatchcase(n, pat)
                                                                         for pat in patterns)]
    kv_leftover = [n for n in leftover if n.endswith(".output_scale")]
    if kv_leftover:
        warnings.warn(f"{where}: {len(kv_leftover)} KV-cache scales (e.g. {kv_leftover[0]}) are not used: this "
                      "model has no FP8 KV cache", stacklevel=2)
        leftover = [n for n in leftover if n not in kv_leftover]
    if leftover and strict:
        near = _nearest_module(leftover[0], module_paths)
        hint = (f"the model has module {near!r} but nothing there takes this tensor" if near
                else "no module of the model has a matching path")
        raise CheckpointMismatchError(
            f"{where}: tensor {leftover[0]} has no matching layer in the model ({hint}; {len(leftover)} "
            f"unmatched tensor(s) in all). Pass strict=False to skip them.")

    for target, var, name, transpose in tasks:  # validate from the headers before reading any data
        value = var.get_value()
        _check_dtype(ckpt.dtype(name), value.dtype, name, target)
        expected = tuple(value.shape)[::-1] if transpose else tuple(value.shape)
        if ckpt.shape(name) != expected:
            raise CheckpointMismatchError(f"{where}: tensor {name} has shape {list(ckpt.shape(name))}, "
                                          f"expected {list(expected)} for {target}")

    total = sum(ckpt.nbytes(t[2]) for t in tasks) + sum(
        ckpt.nbytes(n) for m, p in quark_layers for n in _quark_tensor_names(m, p, ckpt))
    show = progress if progress is not None else total > PROGRESS_MIN_BYTES
    bar = _Progress(total, len(tasks) + len(quark_layers), show, f"loading {Path(checkpoint_dir).name}")

    for target, var, name, transpose in tasks:
        arr = ckpt.get(name).astype(var.get_value().dtype)
        var.set_value(jnp.asarray(arr.T if transpose else arr))
        bar.update(arr.nbytes)
    for module, p in quark_layers:
        _load_quark_layer(module, p, ckpt)
        bar.update(sum(ckpt.nbytes(n) for n in _quark_tensor_names(module, p, ckpt)))
    return model


def _load_kv_scales(module, prefix: str, ckpt: CheckpointTensors) -> set[str]:
    """Set ``k_scale``/``v_scale`` of an FP8-cache attention module (SPEC section 6); returns consumed names."""
    found = {}
    used = set()
    for which in ("k", "v"):
        for name in (f"{prefix}{which}_proj.output_scale", f"{prefix}{which}_scale"):
            if name in ckpt:
                arr = np.asarray(ckpt.get(name), np.float32)
                if arr.size != 1:
                    raise CheckpointMismatchError(f"tensor {name}: expected a per-tensor KV-cache scale (shape [] "
                                                  f"or [1]), got shape {list(arr.shape)}")
                found.setdefault(which, float(arr.reshape(())))
                used.add(name)
    k = found.get("k", found.get("v", 1.0))
    v = found.get("v", found.get("k", 1.0))
    module.k_scale.set_value(jnp.float32(k))
    module.v_scale.set_value(jnp.float32(v))
    return used


# --- Quark layers (quark_jax.nn.QuarkLinear); filled in once the layer exists -------------------------------------

def _quark_layer_types():
    return ()


def _quark_tensor_names(module, path: str, ckpt) -> list[str]:
    return []


def _load_quark_layer(module, path: str, ckpt) -> None:
    raise NotImplementedError
