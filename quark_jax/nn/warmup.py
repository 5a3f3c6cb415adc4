"""Compile process-cached decode kernels ahead (issue 14 item 2): the Mosaic GPU MXFP4 decode kernels.

The Mosaic GPU custom call compiles each distinct kernel once per process, keyed by the sha256 of its serialized
module (``kernel_hash``), when XLA compiles a program that holds it, and each compile takes XLA's LLVM options
lock with options of its own: inside the 8B MXFP4 decode program's compile the kernels compiled one after
another, and waited for the concurrently compiling prefill program's LLVM work. A small program per distinct
layer geometry (a ``QuarkLinear`` called on a ``[batch, 1, K]`` input, as the decode step calls it) compiles the
same kernels (the same module bytes, the same hash) ahead, in parallel threads; the decode program then finds
them compiled. The first ``generate`` submits them before its programs compile (:data:`DECODE_KERNEL_WARMUP`;
or ``load_weights``, as each geometry's first layer loads).

Measured on the H200 (session 10, `benchmarks/compile_phases.py`, 8B MXFP4): slower than no warm-ups (first
call 26.0 vs 22.3 s cold, 10.7 vs 7.9 s warm; making the programs' compiles wait for them: 32.4 / 11.2 s, that
form since removed): the warm-ups contend with the programs for the interpreter and for XLA's LLVM options lock,
and the Mosaic compiles are a small part of the decode compile. Off by default (:data:`DECODE_KERNEL_WARMUP`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["DECODE_KERNEL_WARMUP", "decode_kernel_warmups", "warm_decode_kernels"]

DECODE_KERNEL_WARMUP = None
"""When the warm-ups start (on a GPU backend; read at each call). Default None (off: the decode program compiles its
kernels itself; measured best, see the module docstring). "generate": the first ``generate`` submits them before
its programs compile (the load is left alone); "compile" (only once the decode program's XLA compile has run
:data:`WARM_AFTER_S` without finishing: a second process whose compilation cache is warm never traces them, at
the price of a later start), "load" (``load_weights`` submits each geometry's as its first layer loads: off the
first call's path, but their Python lowering, ~0.3 s each, shares the interpreter with the load's
threads) or None (off: the decode program compiles its kernels itself)."""

WARMUP_POINTS = ("generate", "compile", "load", None)

WARM_AFTER_S = 1.0
"""``DECODE_KERNEL_WARMUP = "compile"``: seconds the decode program's compile runs before the warm-ups start (a
persistent-cache hit returns sooner)."""

COMPILER_OPTIONS: dict = {}
"""XLA options the warm-up programs compile with: ``models.compile_cache`` sets its cache options here when it
turns the persistent cache on (read when a warm-up is built)."""

MAX_ROWS = 16
"""Decode sizes: ``QuarkScheme.runs_process_cached_kernel`` promises the process-cached kernel at M <= 16."""

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="quark_jax-kernels")
_SUBMITTED: set = set()  # warm-up keys submitted in this process
_LOCK = threading.Lock()


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def _linear_call(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


@functools.lru_cache(maxsize=None)
def _jitted(options: tuple):
    """``_linear_call`` jitted with these XLA options (sorted items of :data:`COMPILER_OPTIONS`)."""
    return jax.jit(_linear_call, static_argnums=(0,), compiler_options=dict(options) or None)


def _key(layer, batch: int):
    shapes = tuple((k, tuple(v.shape), jnp.dtype(v.dtype).name)
                   for k, v in ((k, getattr(layer, k).get_value()) for k in layer.param_names))
    dtype = jnp.dtype(layer.dtype if layer.dtype is not None else jnp.float32).name
    return layer.scheme, layer.in_features, layer.logical_widths, layer.use_bias, dtype, shapes, int(batch)


def decode_kernel_warmups(layers, batch: int = 1) -> list:
    """``[(key, jitted function, abstract args)]``: for each distinct layer geometry among ``layers``
    (``QuarkLinear`` modules, loaded, not sharded) whose scheme runs a process-cached decode kernel
    (``QuarkScheme.runs_process_cached_kernel``), one call of the layer on a ``[batch, 1, K]`` input in its dtype;
    ``fn.lower(*args).compile()`` compiles that kernel. Layers differing only in their names share one entry.

    >>> from quark_jax.nn import QuarkLinear
    >>> decode_kernel_warmups([QuarkLinear(64, 64, scheme=None, abstract=True)])   # float: nothing to warm
    []
    """
    from quark_jax.nn.linear import QuarkLinear

    out, seen = [], set()
    for m in layers:
        if (not isinstance(m, QuarkLinear) or not m.weights_loaded or m.shard_layout is not None
                or not m.scheme.runs_process_cached_kernel(m.param_names)):
            continue
        key = _key(m, batch)
        if key in seen:
            continue
        seen.add(key)
        graphdef, state = nnx.split(m)
        sds = jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), state)
        x = jax.ShapeDtypeStruct((int(batch), 1, m.in_features), jnp.dtype(key[4]))
        out.append((key, _jitted(tuple(sorted(COMPILER_OPTIONS.items()))), (graphdef, sds, x)))
    return out


def _compile(fn, args) -> None:
    try:
        fn.lower(*args).compile()
    except Exception:  # noqa: BLE001  (the program that runs the layer compiles the kernel itself and reports)
        pass


def warm_decode_kernels(layers, batch: int = 1, *, at: str = "generate") -> list:
    """Submit the compiles of :func:`decode_kernel_warmups` not yet submitted in this process to a pool of 4
    threads and return their futures. ``at``: the caller, "generate", "compile" or "load"; it submits when
    :data:`DECODE_KERNEL_WARMUP` is ``at`` (or "load" and ``at`` is "generate": what the load left). Nothing
    (``[]``) off a GPU backend, with the warm-up off or above :data:`MAX_ROWS` rows. A failing compile is left to
    the program that runs the layer to report.

    >>> warm_decode_kernels([])
    []
    """
    if DECODE_KERNEL_WARMUP not in WARMUP_POINTS:
        raise ValueError(f"DECODE_KERNEL_WARMUP: expected one of {WARMUP_POINTS}, got {DECODE_KERNEL_WARMUP!r}")
    wanted = DECODE_KERNEL_WARMUP == at or (DECODE_KERNEL_WARMUP == "load" and at == "generate")
    if not wanted or not _on_gpu() or batch > MAX_ROWS:
        return []
    futures = []
    for key, fn, args in decode_kernel_warmups(layers, batch):
        with _LOCK:
            if key in _SUBMITTED:
                continue
            _SUBMITTED.add(key)
        futures.append(_POOL.submit(_compile, fn, args))
    return futures
