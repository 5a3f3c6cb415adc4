"""``load_weights``: fill any flax.nnx model from an HF-style safetensors checkpoint, by module path.

Name mapping (module path ``p``, e.g. ``model.layers.0.self_attn.q_proj``, behind an optional ``prefix``):

* ``QuarkLinear``: its scheme's raw params (``p.weight``, ``p.weight_scale``, ``p.input_scale``, ...; a fused
  ``qkv_proj`` / ``gate_up_proj`` reads its shards), then ``process_weights_after_loading``;
* ``nnx.Linear``: ``kernel`` [in, out] <- ``p.weight`` [out, in] transposed (a fused name: its shards
  concatenated); ``bias`` <- ``p.bias``;
* ``QuarkExperts`` (``<moe>.experts.gate_up_proj`` / ``.down_proj``): every expert's tensors
  (``<moe>.experts.{i}.{gate,up,down}_proj`` or Mixtral's ``w1 / w3 / w2``), stacked into [E, N, K];
* ``nnx.Embed``: ``embedding`` <- ``p.weight``;
* ``nnx.RMSNorm`` / ``nnx.LayerNorm``: ``scale`` <- ``p.weight``; ``bias`` <- ``p.bias``;
* a module with an FP8 KV cache (:class:`~quark_jax.nn.FP8KVCacheScales`, ``kv_fp8`` on): ``k_scale`` <-
  ``p.k_proj.output_scale`` or ``p.k_scale`` (v likewise; SPEC section 6);
* any other module: each ``nnx.Param`` attribute ``name`` <- ``p.name``.

Float tensors are cast to the variable's dtype (round to nearest even). Every model variable must find its tensor
and every checkpoint tensor must find a variable (unless ``strict=False`` or it matches ``ignore``); errors name
the tensor, the layer and what was expected. Shapes and dtypes are checked from the file headers before any data
is read.
"""

from __future__ import annotations

import fnmatch
from functools import partial
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.checkpoint import (CheckpointReader, layer_tensor_names, load_kv_scales, open_checkpoint,
                                  shard_paths)
from quark_jax.errors import CheckpointError, InvalidArgumentError
from quark_jax.nn.experts import QuarkExperts
from quark_jax.nn.kv_scales import FP8KVCacheScales
from quark_jax.nn.linear import QuarkLinear
from quark_jax.nn.parallel import DEFAULT_RULES, MODEL, axis_size, check_mesh, param_sharding
from quark_jax.nn.warmup import warm_decode_kernels

__all__ = ["load_weights", "module_path"]

ALWAYS_IGNORED = ("*.rotary_emb.inv_freq",)
PROGRESS_MIN_BYTES = 256 << 20


def module_path(path) -> str:
    """``('model', 'layers', 0, 'mlp')`` -> ``'model.layers.0.mlp'``.

    >>> module_path(('model', 'layers', 0, 'mlp'))
    'model.layers.0.mlp'
    """
    return ".".join(str(p) for p in path)


class _Progress:
    """A one-line stderr progress report (``\\r`` updates on a terminal, a line per quarter otherwise)."""

    def __init__(self, total_bytes: int, n: int, enabled: bool, label: str):
        self.total, self.n, self.enabled, self.label = total_bytes, n, enabled, label
        self.done_bytes = self.done = 0
        self.t0 = time.perf_counter()
        self.last = -1
        self.tty = sys.stderr.isatty()

    def update(self, nbytes: int, done: int = 1):
        self.done += done
        self.done_bytes += nbytes
        if not self.enabled:
            return
        pct = int(100 * self.done_bytes / max(self.total, 1))
        step = 1 if self.tty else 25
        if pct // step == self.last and self.done < self.n:
            return
        self.last = pct // step
        bar = "#" * (pct // 5) + "-" * (20 - pct // 5)
        unit, div = ("GB", 1e9) if self.total >= 1e9 else ("MB", 1e6)
        line = (f"{self.label} [{bar}] {pct:3d}% {self.done}/{self.n} layers, "
                f"{self.done_bytes / div:.2f}/{self.total / div:.2f} {unit}, {time.perf_counter() - self.t0:.1f} s")
        sys.stderr.write(("\r" + line + ("\n" if self.done == self.n else "")) if self.tty else line + "\n")
        sys.stderr.flush()


def _is_wide_float(dt: np.dtype) -> bool:
    return dt.itemsize >= 2 and (dt.kind == "f" or dt.name == "bfloat16")


def _check_dtype(src: np.dtype, dst, tensor: str, target: str) -> None:
    """A float variable takes any float tensor of >= 16 bits; a quantized tensor there is an error."""
    dst = np.dtype(dst)
    if src == dst or (_is_wide_float(dst) and _is_wide_float(src)):
        return
    if _is_wide_float(dst):
        raise CheckpointError(
            f"tensor {tensor}: dtype {src} is a quantized tensor, but {target} is a float layer; quantize "
            "the model first (quark_jax.quantize_model(model, quark_jax.QuarkConfig.from_pretrained(dir)))")
    raise CheckpointError(f"tensor {tensor}: dtype {src}, expected {dst} for {target}")


class _Task:
    """One float variable to fill: from one tensor, or from fused shards concatenated along rows."""

    def __init__(self, target: str, var, names: tuple[str, ...], transpose: bool):
        self.target, self.var, self.names, self.transpose = target, var, names, transpose

    def check(self, ckpt: CheckpointReader, where: str):
        value = self.var.get_value()
        shapes = [ckpt.info(n).shape for n in self.names]
        for n in self.names:
            _check_dtype(ckpt.info(n).dtype, value.dtype, n, self.target)
        stored = shapes[0] if len(shapes) == 1 else (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        if len(shapes) > 1 and any(tuple(s[1:]) != tuple(shapes[0][1:]) for s in shapes):
            raise CheckpointError(f"{where}: the shards {list(self.names)} of {self.target} have shapes "
                                  f"{[list(s) for s in shapes]} that do not stack along rows")
        expected = tuple(value.shape)[::-1] if self.transpose else tuple(value.shape)
        if tuple(stored) != expected:
            what = self.names[0] if len(self.names) == 1 else " + ".join(self.names)
            raise CheckpointError(f"{where}: tensor {what} has shape {list(stored)}, expected {list(expected)} "
                                  f"for {self.target}")

    def load_sharded(self, ckpt: CheckpointReader, sharding) -> int:
        """Place the variable as a global array with ``sharding``, each device's slice read from the file."""
        value = self.var.get_value()
        dtype, shape = value.dtype, tuple(value.shape)

        def read(index):
            idx = tuple(slice(*s.indices(d)) for s, d in zip(index, shape))
            stored = idx[::-1] if self.transpose else idx
            rows, rest = stored[0], stored[1:]
            parts, off = [], 0
            for n in self.names:
                h = ckpt.info(n).shape[0]
                lo, hi = max(rows.start, off), min(rows.stop, off + h)
                if lo < hi:
                    parts.append(ckpt.get_slice(n, (slice(lo - off, hi - off),) + rest).astype(dtype))
                off += h
            arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            return arr.T if self.transpose else arr

        self.var.set_value(jax.make_array_from_callback(shape, sharding, read))
        return sum(ckpt.nbytes(n) for n in self.names)

    def read(self, ckpt: CheckpointReader) -> list:
        """The shards read once from the file into their own arrays and sent to the device as stored."""
        return [jax.device_put(ckpt.get(n)) for n in self.names]

    def place(self, parts) -> None:
        """Set the variable from :meth:`read`'s device arrays: the dtype cast, the concatenation of fused shards
        and the transpose run on the device (no host copies of the model); a single part stored as the variable
        holds it (an 8B embedding: no device program to compile and run)."""
        dtype = self.var.get_value().dtype
        if len(parts) == 1 and not self.transpose and parts[0].dtype == dtype:
            self.var.set_value(parts[0])
        else:
            self.var.set_value(_place(parts, dtype, self.transpose))

    def load(self, ckpt: CheckpointReader) -> int:
        parts = self.read(ckpt)
        self.place(parts)
        return sum(p.nbytes for p in parts)


PIPELINE_STATS: dict = {}
"""The last :func:`load_weights` without a mesh: ``wait_s`` (host seconds the main thread waited for the reader
threads), ``jobs``, ``peak_in_flight_bytes`` (checkpoint bytes being loaded at once, at most
:data:`READ_AHEAD_BYTES` or one job's), ``largest_job_bytes`` (for benchmarks and tests)."""

READ_THREADS = min(8, max(2, os.cpu_count() or 2))
"""Threads loading variables / layers in :func:`load_weights` (2 to 8, by the host's cores) (file reads, host-to-device copies and compiles
release the GIL, so they overlap with each other and with the device's processing)."""

READ_AHEAD_BYTES = 1 << 30
"""At most this many checkpoint bytes are read ahead of the layer being placed (plus one tensor): the host holds
about this much of the model at a time, never a second copy of it."""


FLOAT_CHUNK_BYTES = 256 << 20
"""A float variable stored as one tensor of more than this many bytes (an 8B model's embedding and LM head, 1 GB
each) loads as jobs of consecutive rows of at most this many bytes, read and sent to the device in parallel with
the other jobs (not alone under :data:`READ_AHEAD_BYTES`), then joined (cast / transposed) on the device."""


class _ChunkedTask:
    """One large :class:`_Task` (a single stored tensor) loading as row-chunk jobs: each reads its rows and sends
    them to the device; whichever finishes last joins them into the variable (:meth:`_Task.place`)."""

    def __init__(self, ckpt, task):
        import threading

        self.ckpt, self.task, self.name = ckpt, task, task.names[0]
        rows = ckpt.info(self.name).shape[0]
        per = max(1, FLOAT_CHUNK_BYTES // max(1, ckpt.nbytes(self.name) // rows))
        self.chunks = [(a, min(a + per, rows)) for a in range(0, rows, per)]
        self.parts = [None] * len(self.chunks)
        self.left = len(self.chunks)
        self.lock = threading.Lock()

    @staticmethod
    def applies(ckpt, task) -> bool:
        if len(task.names) != 1:
            return False
        shape = ckpt.info(task.names[0]).shape
        return len(shape) >= 1 and shape[0] >= 2 and ckpt.nbytes(task.names[0]) > FLOAT_CHUNK_BYTES

    def nbytes(self, j: int) -> int:
        a, b = self.chunks[j]
        return self.ckpt.nbytes(self.name) // self.ckpt.info(self.name).shape[0] * (b - a)

    def run(self, j: int) -> None:
        a, b = self.chunks[j]
        part = jax.device_put(self.ckpt.get_slice(self.name, (slice(a, b),)))
        with self.lock:
            self.parts[j] = part
            self.left -= 1
            last = self.left == 0
        if last:
            parts, self.parts = self.parts, None
            self.task.place(parts)


EXPERT_CHUNK_BYTES = 64 << 20
"""A MoE experts module loads as jobs of consecutive experts of at most this many checkpoint bytes (at least one
expert each: one job per expert at Mixtral's size), read in parallel and stacked on the device."""


class _ExpertsLoad:
    """One :class:`QuarkExperts` module loading as chunk jobs: each reads its experts (validated) and sends them to
    the device; whichever job finishes last stacks and processes them all (:meth:`QuarkExperts.load_experts`, on
    the device) in its thread."""

    def __init__(self, ckpt, module, chunks):
        import threading

        self.ckpt, self.module, self.chunks = ckpt, module, chunks
        self.parts = [None] * len(chunks)
        self.left = len(chunks)
        self.lock = threading.Lock()

    def run(self, j: int) -> None:
        first, stop, _ = self.chunks[j]
        parts = jax.device_put(self.module.read_experts(self.ckpt, first, stop))
        with self.lock:
            self.parts[j] = parts
            self.left -= 1
            last = self.left == 0
        if last:
            parts, self.parts = self.parts, None
            self.module.load_experts(parts)


def _load_pipelined(ckpt, tasks, quark_layers, quark_names, bar, expert_layers=()) -> None:
    """Fill the float variables, the Quark layers and the MoE experts, each job (a variable, a Quark layer, or a
    chunk of one experts module's experts) entirely in a reader thread: its tensors read from the file, sent to the
    device, cast / stacked / transposed (float) or processed by the scheme (Quark; an experts module when its
    last chunk is in), and set. Reads, host-to-device copies, the first compile of each shape and the device
    work of several jobs overlap; the main thread takes the results in order (errors surface in checkpoint
    order) and bounds the bytes in flight by :data:`READ_AHEAD_BYTES`."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    def task_job(t):
        t.place(t.read(ckpt))

    def quark_job(module, cp):
        raw = module.read_checkpoint(ckpt, cp)
        if module.scheme.processes_on_host:  # processed in numpy here, then sent as processed: no device program
            module.load_raw(raw)
        else:  # host_raw: load-time value checks without a sync
            module.load_raw(jax.device_put(raw), host_raw=raw)
        warm_decode_kernels([module], at="load")  # nn.warmup.DECODE_KERNEL_WARMUP = "load" only

    jobs = []  # (function run in a reader thread, checkpoint bytes, progress units completed)
    for t in tasks:
        if _ChunkedTask.applies(ckpt, t):
            load = _ChunkedTask(ckpt, t)
            jobs += [(partial(load.run, j), load.nbytes(j), int(j == len(load.chunks) - 1))
                     for j in range(len(load.chunks))]
        else:
            jobs.append((partial(task_job, t), sum(ckpt.nbytes(n) for n in t.names), 1))
    jobs += [(partial(quark_job, m, cp), sum(ckpt.nbytes(n) for n in quark_names[id(m)]), 1)
             for m, cp in quark_layers]
    for module in expert_layers:
        load = _ExpertsLoad(ckpt, module, module.expert_chunks(ckpt, EXPERT_CHUNK_BYTES))
        jobs += [(partial(load.run, j), nbytes, int(j == len(load.chunks) - 1))
                 for j, (_, _, nbytes) in enumerate(load.chunks)]

    pending = collections.deque()
    in_flight, nxt, peak = 0, 0, 0
    wait = 0.0
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="quark_jax_load") as pool:
        # the device processing of each distinct Quark layer geometry compiles first, in parallel, while the
        # first jobs (the embedding, ~1 GB at 8B) are read: not one compile per shape inside the layers' jobs
        for fn in _processing_compiles(quark_layers):
            pool.submit(fn)
        try:
            while nxt < len(jobs) or pending:
                while nxt < len(jobs) and (not pending or in_flight + jobs[nxt][1] <= READ_AHEAD_BYTES):
                    fn, nbytes, units = jobs[nxt]
                    pending.append((pool.submit(fn), nbytes, units))
                    in_flight += nbytes
                    nxt += 1
                peak = max(peak, in_flight)
                future, nbytes, units = pending.popleft()
                t0 = time.perf_counter()
                future.result()
                wait += time.perf_counter() - t0
                in_flight -= nbytes
                bar.update(nbytes, units)
        finally:
            for future, _, _ in pending:
                future.cancel()
    PIPELINE_STATS.clear()
    PIPELINE_STATS.update(wait_s=wait, jobs=len(jobs), peak_in_flight_bytes=peak,
                          largest_job_bytes=max((b for _, b, _ in jobs), default=0))


def _processing_compiles(quark_layers) -> list:
    """One AOT compile of ``process_params`` per distinct (scheme, widths, raw shapes) among the Quark layers
    that process on the device (a scheme that ``processes_on_host`` needs none); the jit cache then serves each
    layer's call. A failing compile is left to the layer's own call to report."""
    from quark_jax.schemes import process_params

    seen, out = set(), []
    for module, _ in quark_layers:
        if module.scheme.processes_on_host:
            continue
        specs = {k: v.shape_dtype() for k, v in module.raw_param_specs().items() if k != "bias" and v.required}
        key = (module.scheme, module.logical_widths, tuple((k, v.shape, str(v.dtype)) for k, v in specs.items()))
        if key in seen:
            continue
        seen.add(key)

        def compile_one(scheme=module.scheme, specs=specs, widths=module.logical_widths):
            try:
                process_params.lower(scheme, specs, widths).compile()
            except Exception:  # noqa: BLE001  (the layer's own call raises it with its name)
                pass

        out.append(compile_one)
    return out


@partial(jax.jit, static_argnums=(1, 2))
def _place(parts, dtype, transpose):
    """The variable's value from its checkpoint shards (device arrays as stored): cast, stacked, transposed."""
    arr = parts[0].astype(dtype) if len(parts) == 1 else jnp.concatenate([p.astype(dtype) for p in parts], axis=0)
    return arr.T if transpose else arr


def _find(ckpt, name: str, fused: bool) -> tuple[str, ...] | None:
    """``(name,)`` when stored, else the shards of a fused name (``...qkv_proj.weight``) when all are stored."""
    if name in ckpt:
        return (name,)
    module, _, leaf = name.rpartition(".")
    shards = shard_paths(module)
    if fused and len(shards) > 1 and all(f"{s}.{leaf}" in ckpt for s in shards):
        return tuple(f"{s}.{leaf}" for s in shards)
    return None


def _rules(module, ckpt_prefix: str):
    """(variable name, checkpoint tensor name, transpose, may be fused) for a module's own float variables."""
    if isinstance(module, nnx.Linear):
        out = [("kernel", ckpt_prefix + "weight", True, True)]
        if module.bias is not None:
            out.append(("bias", ckpt_prefix + "bias", False, True))
        return out
    if isinstance(module, nnx.Embed):
        return [("embedding", ckpt_prefix + "weight", False, False)]
    if isinstance(module, (nnx.RMSNorm, nnx.LayerNorm)):
        out = []
        if getattr(module, "scale", None) is not None:
            out.append(("scale", ckpt_prefix + "weight", False, False))
        if getattr(module, "bias", None) is not None:
            out.append(("bias", ckpt_prefix + "bias", False, False))
        return out
    return [(k, ckpt_prefix + k, False, False) for k, v in vars(module).items() if isinstance(v, nnx.Param)]


def _unmatched_hint(ckpt, module_paths: set[str]) -> str:
    """``"; checkpoint layers the model lacks: ..."`` for checkpoint modules no model module covers."""
    covered = set(module_paths) | {s for p in module_paths for s in shard_paths(p)}
    stray = sorted({n.rpartition(".")[0] for n in ckpt.names() if n.endswith(".weight")} - covered)
    if not stray:
        return ""
    more = f" and {len(stray) - 3} more" if len(stray) > 3 else ""
    return f"; checkpoint layers with no module in the model: {', '.join(stray[:3])}{more}"


def _nearest_module(name: str, paths: set[str]) -> str:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in paths:
            return ".".join(parts[:i])
    return ""


def _float_role(rules, path: str, module, n: int) -> str:
    """The role of a float module on a "model" axis of ``n`` (heads checked; KV heads fewer than n replicated)."""
    role = rules.role(path)
    if role not in ("heads", "kv_heads", "column", "vocab") or n == 1:
        return role
    width = module.num_embeddings if isinstance(module, nnx.Embed) else getattr(module, "out_features", 0)
    units = width // rules.head_dim if role in ("heads", "kv_heads") and rules.head_dim else width
    if role == "kv_heads" and units % n and n % units == 0:
        return "replicated"
    if units % n:
        raise InvalidArgumentError(f"layer {path}: the 'model' axis of {n} devices does not split its {units} "
                                   f"{'heads' if role in ('heads', 'kv_heads') else 'outputs'} evenly")
    return "vocab" if role == "vocab" else "column"


def load_weights(model, checkpoint_dir: str | os.PathLike | CheckpointReader, *, prefix: str = "",
                 strict: bool = True, ignore=(), progress: bool | None = None, mesh=None, partition_rules=None):
    """Fill ``model``'s variables from a checkpoint in place (see the module docstring); returns ``model``.

    Args:
      model: any ``nnx.Module``, concrete or abstract (built under ``nnx.eval_shape``); quantized layers come
        from :func:`quark_jax.quantize_model`.
      checkpoint_dir: a folder with ``model.safetensors`` or a sharded ``model.safetensors.index.json``.
      prefix: prepended to module paths to form checkpoint names (a model that is part of the checkpoint's).
      strict: when False, checkpoint tensors the model has no place for are skipped (missing ones still fail).
      ignore: fnmatch patterns of checkpoint tensors to skip.
      progress: a stderr progress line (default: only when more than 256 MiB are loaded).
      mesh: a ``jax.sharding.Mesh`` with axes "data" / "model": every variable becomes a global array with the
        NamedSharding of ``partition_rules`` (default :data:`~quark_jax.nn.parallel.DEFAULT_RULES`), each device
        reading only its slice of each tensor; Quark layers get their
        :class:`~quark_jax.nn.parallel.ShardLayout` and run their GEMMs per shard.

    >>> import tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> d = tempfile.mkdtemp()
    >>> save_file({"proj.weight": np.eye(2, 3, dtype=np.float32)}, d + "/model.safetensors")
    >>> class M(nnx.Module):
    ...     def __init__(self): self.proj = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0))
    >>> load_weights(M(), d).proj.kernel[...].tolist()
    [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    ckpt = open_checkpoint(checkpoint_dir)
    where = f"checkpoint {ckpt.directory}"
    rules = DEFAULT_RULES if partition_rules is None else partition_rules
    if mesh is not None:
        check_mesh(mesh)
    layouts = {}  # id(QuarkLinear) -> ShardLayout, planned before any data is read
    shardings = {}  # id(_Task) -> NamedSharding
    tasks: list[_Task] = []
    kv_modules = []  # (attention module, checkpoint path)
    quark_layers = []  # (QuarkLinear, checkpoint path)
    expert_layers = []  # QuarkExperts
    missing = []
    module_paths = set()
    for path, module in nnx.iter_modules(model):
        p = module_path(path)
        cp = f"{prefix}.{p}" if prefix and p else (prefix or p)
        module_paths.add(cp)
        if isinstance(module, QuarkLinear):
            quark_layers.append((module, cp))
            if mesh is not None:
                layouts[id(module)] = module.plan_sharding(mesh, rules, cp)
            missing += [(f"{s}.weight", f"QuarkLinear {cp}") for s in shard_paths(cp) if f"{s}.weight" not in ckpt]
            continue
        if isinstance(module, QuarkExperts):
            if mesh is not None:
                raise InvalidArgumentError(f"layer {cp}: tensor parallelism (mesh=) does not support MoE experts yet; "
                                           "load without a mesh")
            if cp != module.name:
                raise InvalidArgumentError(f"layer {cp}: a QuarkExperts module reads the checkpoint at its own name "
                                           f"{module.name!r}; build it with name={cp!r}")
            expert_layers.append(module)
            missing += [(n, f"QuarkExperts {cp}") for n in module.missing_tensors(ckpt)]
            continue
        if isinstance(module, FP8KVCacheScales) and module.kv_fp8:
            kv_modules.append((module, cp))
        for var_name, tensor, transpose, fusable in _rules(module, cp + "." if cp else ""):
            names = _find(ckpt, tensor, fusable)
            target = f"{type(module).__name__} {cp or '<root>'}.{var_name}"
            if names is None:  # a fused variable with some shards stored: name the absent shards
                shards = [f"{sp}.{tensor.rpartition('.')[2]}" for sp in shard_paths(tensor.rpartition(".")[0])]
                some = fusable and len(shards) > 1 and any(sh in ckpt for sh in shards)
                missing += [(sh, target) for sh in shards if sh not in ckpt] if some else [(tensor, target)]
            else:
                tasks.append(_Task(target, getattr(module, var_name), names, transpose))
                if mesh is not None:
                    role = _float_role(rules, cp, module, axis_size(mesh, MODEL))
                    shardings[id(tasks[-1])] = param_sharding(mesh, rules, role, var_name,
                                                              len(tasks[-1].var.get_value().shape))
    if missing:
        shown = "; ".join(f"{t} (for {v})" for t, v in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointError(f"{where}: missing tensors: {shown}{more}{_unmatched_hint(ckpt, module_paths)}")
    for task in tasks:  # validate from the headers before reading any data
        task.check(ckpt, where)

    consumed = {n for t in tasks for n in t.names}
    quark_names = {id(m): layer_tensor_names(ckpt, cp) for m, cp in quark_layers}
    for names in quark_names.values():
        consumed.update(names)
    expert_names = {id(m): m.tensor_names(ckpt) for m in expert_layers}
    for names in expert_names.values():
        consumed.update(names)
    kv_scales = {}
    for module, cp in kv_modules:
        kv_scales[id(module)] = s = load_kv_scales(ckpt, cp)
        consumed.update(s.tensor_names)

    patterns = tuple(ignore) + ALWAYS_IGNORED
    leftover = [n for n in ckpt.names()
                if n not in consumed and not any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    kv_leftover = [n for n in leftover if n.endswith(".output_scale")]
    if kv_leftover:
        warnings.warn(f"{where}: {len(kv_leftover)} KV-cache scale tensor(s) (e.g. {kv_leftover[0]}) are not used: "
                      "this model has no FP8 KV cache", stacklevel=2)
        leftover = [n for n in leftover if n not in kv_leftover]
    if leftover and strict:
        near = _nearest_module(leftover[0], module_paths)
        hint = (f"the model has module {near!r}, but nothing there reads this tensor" if near
                else "no module of the model has this path")
        raise CheckpointError(f"{where}: tensor {leftover[0]} has no matching layer in the model ({hint}; "
                              f"{len(leftover)} unmatched tensor(s) in all; pass strict=False to skip them)")

    total = sum(ckpt.nbytes(n) for n in consumed)
    show = progress if progress is not None else total > PROGRESS_MIN_BYTES
    bar = _Progress(total, len(tasks) + len(quark_layers) + len(expert_layers), show, f"loading {ckpt.directory.name}")
    if mesh is None:
        _load_pipelined(ckpt, tasks, quark_layers, quark_names, bar, expert_layers)
    else:  # (MoE experts were refused under a mesh above)
        for task in tasks:
            task.load_sharded(ckpt, shardings[id(task)])
            bar.update(sum(ckpt.nbytes(n) for n in task.names))
        for module, cp in quark_layers:
            module.load_checkpoint(ckpt, cp, layout=layouts.get(id(module)))
            bar.update(sum(ckpt.nbytes(n) for n in quark_names[id(module)]))
    for module, _ in kv_modules:
        s = kv_scales[id(module)]
        for var, value in ((module.k_scale, s.k_scale), (module.v_scale, s.v_scale)):
            value = jnp.float32(value)
            if mesh is not None:
                value = jax.device_put(value, param_sharding(mesh, rules, "replicated", "kv_scale", 0))
            var.set_value(value)
    return model
