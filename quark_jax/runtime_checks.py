"""Checks inside jitted code (``checks=True`` of the model call and of ``generate``), via jax.experimental.checkify.

Inside ``jax.jit`` nothing can raise, so by default quark_jax computes on (documented in docs/SPEC.md): an
out-of-range token id (a traced one; concrete ids are checked on the host) reads a NaN embedding row (Flax's
``nnx.Embed`` fills out-of-range lookups with NaN), so at least that token's logits are NaN (no error, no
clamping to a valid id); non-finite activations (say from a NaN weight scale set by hand) propagate to NaN
logits the same way. With checks on, the points below are
traced with ``checkify.check`` and the first failure (in execution order) raises
:class:`~quark_jax.errors.RuntimeCheckError` naming the layer:

* :func:`check_token_ids_in_range` (``input_ids``), :func:`check_finite` after the embedding, on the input and
  the output of each :class:`~quark_jax.nn.QuarkLinear` (by its module path; inputs matter: the FP8 quantizer
  maps NaN to +448 as vLLM does, so a NaN input can give a finite output), after each decoder layer and on the
  logits.

The switch is read when a function is traced, so code traced without it carries no checks and costs nothing.

>>> import jax.numpy as jnp
>>> err, _ = run_checked(lambda x: check_finite(x * 0 + jnp.log(x), "demo.layer"), jnp.array([1.0, -1.0]))
>>> str(err)
'demo.layer: non-finite values (NaN or inf) in its output, first at flat index 1'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re

import jax
import jax.numpy as jnp

__all__ = ["enabled", "checking", "check_finite", "check_token_ids_in_range", "run_checked"]

_ENABLED = contextvars.ContextVar("quark_jax_runtime_checks", default=False)


def enabled() -> bool:
    """Whether checks are being traced now."""
    return _ENABLED.get()


@contextlib.contextmanager
def checking():
    """Trace checks inside this block (used by :func:`run_checked`)."""
    token = _ENABLED.set(True)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def check_finite(x, where: str, what: str = "output"):
    """``x`` unchanged; with checks on, a checkify check that every value is finite (naming ``where`` and
    ``what``: "output" or "input")."""
    if _ENABLED.get():
        from jax.experimental import checkify

        bad = ~jnp.isfinite(x)
        checkify.check(~jnp.any(bad), f"{where}: non-finite values (NaN or inf) in its {what}, first at flat "
                                      "index {i}", i=jnp.argmax(bad.reshape(-1)))
    return x


def check_token_ids_in_range(ids, vocab_size: int, name: str = "input_ids"):
    """``ids`` unchanged; with checks on, a check that every id is in [0, vocab_size)."""
    if _ENABLED.get():
        from jax.experimental import checkify

        bad = (ids < 0) | (ids >= vocab_size)
        flat = jnp.argmax(bad.reshape(-1))
        checkify.check(~jnp.any(bad), f"{name}: token id {{v}} at flat index {{i}} is out of range for vocab_size "
                                      f"{vocab_size}", v=ids.reshape(-1)[flat], i=flat)
    return ids


@functools.lru_cache(maxsize=32)
def _checked_jit(fn, static_argnums):
    from jax.experimental import checkify

    def traced(*a):
        with checking():
            return fn(*a)

    return jax.jit(checkify.checkify(traced, errors=checkify.user_checks), static_argnums=static_argnums)


def run_checked(fn, *args, static_argnums=()):
    """``fn(*args)`` jitted with the checks traced in (compiled once per ``fn`` and argument shapes): returns
    ``(error or None, result)``; the error is a :class:`~quark_jax.errors.RuntimeCheckError` (not raised) naming
    the first failing check."""
    from quark_jax.errors import RuntimeCheckError

    err, out = _checked_jit(fn, tuple(static_argnums))(*args)
    msg = err.get()
    if msg is None:
        return None, out
    first = re.sub(r" \(`?check`? failed.*$", "", msg.splitlines()[0])
    return RuntimeCheckError(first), out
