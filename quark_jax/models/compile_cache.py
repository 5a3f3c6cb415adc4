"""JAX's persistent compilation cache, on by default for the decoders on accelerators.

A second process that runs the same model shapes loads the compiled prefill and decode programs from disk instead
of compiling them again (seconds instead of tens of seconds for an 8B-shaped model). :func:`from_pretrained
<quark_jax.models.from_pretrained>` calls :func:`enable_compilation_cache` once per process:

* the directory is ``$QUARK_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/quark_jax/jax`` (``~/.cache/quark_jax/jax``);
* ``QUARK_JAX_COMPILATION_CACHE=0`` (or ``off``/``false``) turns it off;
* a cache directory the user configured already (``jax_compilation_cache_dir``, ``JAX_COMPILATION_CACHE_DIR``)
  is left as it is;
* on the CPU backend it stays off unless ``QUARK_JAX_COMPILATION_CACHE=1`` (CPU programs compile quickly).

What a cache hit costs on a GPU (XLA's sources, jax 0.11): by default XLA serializes a GPU executable in its
"legacy" form, the optimized HLO plus the compiled kernels' binary, and loading it runs XLA's thunk emission over
the whole program again. That re-runs every FFI custom call's *instantiate* stage, where jaxlib compiles each
Mosaic GPU kernel from its MLIR (passes, ptxas, an O3 host object: about a second each, once per process), and
re-emits the Pallas-Triton calls' kernels, all under XLA's LLVM options lock. With XLA's
``xla_gpu_experimental_aot_compiled_thunks`` the entry holds the thunks themselves, and jaxlib's Mosaic custom
call serializes its compiled kernel with them (object file and GPU binary: a load links, compiles nothing).
:data:`AOT_COMPILED_THUNKS` turns that on for the programs quark_jax compiles (:func:`cache_compiler_options`).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "default_cache_dir", "cache_compiler_options", "AOT_COMPILED_THUNKS"]

_OFF = ("0", "off", "false", "no")

AOT_COMPILED_THUNKS = False
"""True: with the persistent cache on a GPU backend, compile generate's prefill and decode programs and the decode
kernel warm-ups with ``xla_gpu_experimental_aot_compiled_thunks`` (see the module docstring), so a second process
loads them without compiling their Mosaic GPU kernels again (read when a model's programs are first built; the
option is part of the cache key, so flipping it misses the other setting's entries), where the running jaxlib
knows the option (checked once per process; else skipped with a warning). Off by default: the H200 image's
jaxlib 0.11.2 (CUDA) rejects the option ("No such compile option", session 10: every GPU compile failed with it
on), although the CPU jaxlib 0.10.2 accepts it, so its effect is unmeasured. An explicit entry in
``generation.PREFILL_COMPILER_OPTIONS`` / ``DECODE_COMPILER_OPTIONS`` wins."""

_AOT_OPTION = "xla_gpu_experimental_aot_compiled_thunks"


def default_cache_dir() -> Path:
    """``$QUARK_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/quark_jax/jax`` (default ``~/.cache/quark_jax/jax``).

    >>> default_cache_dir().name
    'jax'
    """
    if os.environ.get("QUARK_JAX_CACHE_DIR"):
        return Path(os.environ["QUARK_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quark_jax" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None, *, force: bool = False) -> str | None:
    """Point JAX's persistent compilation cache at ``path`` (default :func:`default_cache_dir`); returns the
    directory in use, or None when it stays off (see the module docstring for the switches). ``force`` skips the
    backend and environment checks (an explicit call by the user).

    >>> enable_compilation_cache() is None or True  # CPU: off unless QUARK_JAX_COMPILATION_CACHE=1
    True
    """
    current = jax.config.jax_compilation_cache_dir
    if current and not force:
        _share_options_with_warmups()
        return current  # the user's own setting wins
    switch = os.environ.get("QUARK_JAX_COMPILATION_CACHE", "").strip().lower()
    if not force:
        if switch in _OFF:
            return None
        if jax.default_backend() == "cpu" and switch not in ("1", "on", "true", "yes"):
            return None
    directory = Path(path) if path is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    _share_options_with_warmups()
    return str(directory)


def cache_compiler_options() -> dict:
    """XLA options for programs that go into the persistent cache: ``{"xla_gpu_experimental_aot_compiled_thunks":
    True}`` on a GPU backend with the cache directory set and :data:`AOT_COMPILED_THUNKS` on; else ``{}``.

    >>> cache_compiler_options() if jax.default_backend() == "cpu" else {}  # CPU: none
    {}
    """
    if not AOT_COMPILED_THUNKS or jax.default_backend() != "gpu" or not jax.config.jax_compilation_cache_dir:
        return {}
    if not option_known(_AOT_OPTION):
        warnings.warn(f"AOT_COMPILED_THUNKS: this jaxlib ({jax.__version__}) has no XLA option {_AOT_OPTION!r}; "
                      "compiling without it", RuntimeWarning, stacklevel=2)
        return {}
    return {_AOT_OPTION: True}


@functools.cache
def option_known(name: str) -> bool:
    """Whether the running jaxlib's XLA accepts the boolean compile option ``name`` (one tiny compile per name
    and process on the default backend; XLA's debug options are shared by its backends).

    >>> option_known("xla_gpu_enable_triton_gemm"), option_known("xla_no_such_option_here")
    (True, False)
    """
    try:
        jax.jit(lambda v: v + 1, compiler_options={name: True}).lower(jax.numpy.float32(0)).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises a runtime error type that differs across jaxlib versions
        if "No such compile option" in str(e):
            return False
        raise
    return True


def _share_options_with_warmups() -> None:
    """The decode-kernel warm-up programs (``nn.warmup``, a lower layer) compile with the same cache options."""
    from quark_jax.nn import warmup

    warmup.COMPILER_OPTIONS = cache_compiler_options()
