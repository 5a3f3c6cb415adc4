"""JAX's persistent compilation cache, on by default for the decoders on accelerators.

A second process that runs the same model shapes loads the compiled prefill and decode programs from disk instead
of compiling them again (seconds instead of tens of seconds for an 8B-shaped model). :func:`from_pretrained
<quark_jax.models.from_pretrained>` calls :func:`enable_compilation_cache` once per process:

* the directory is ``$QUARK_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/quark_jax/jax`` (``~/.cache/quark_jax/jax``);
* ``QUARK_JAX_COMPILATION_CACHE=0`` (or ``off``/``false``) turns it off;
* a cache directory the user configured already (``jax_compilation_cache_dir``, ``JAX_COMPILATION_CACHE_DIR``)
  is left as it is;
* on the CPU backend it stays off unless ``QUARK_JAX_COMPILATION_CACHE=1`` (CPU programs compile quickly).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "default_cache_dir"]

_OFF = ("0", "off", "false", "no")


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
    return str(directory)
