"""``--set module.ATTR=value`` for the benchmarks: set a library switch (a module-level constant read at trace
time, e.g. ``quark_jax.models.llama.DECODE_ROPE_CACHE=auto``) before any model is built, so a device session can
run a measured winner end to end without a code change. The value is parsed as JSON where it parses (``true``,
``16``, ``{"a": 1}``), else taken as a string; the attribute must already exist (a typo is an error, not a new
name).

    >>> import json
    >>> parse_set("json.decoder.FLAGS=8")
    ('json.decoder', 'FLAGS', 8)
    >>> parse_set("quark_jax.models.llama.DECODE_ROPE_CACHE=auto")
    ('quark_jax.models.llama', 'DECODE_ROPE_CACHE', 'auto')
"""

from __future__ import annotations

import importlib
import json


def parse_set(spec: str) -> tuple[str, str, object]:
    """``"pkg.module.ATTR=value"`` -> (module, attr, value); the value JSON-decoded where it decodes."""
    target, sep, raw = spec.partition("=")
    module, dot, attr = target.rpartition(".")
    if not sep or not dot or not module or not attr:
        raise SystemExit(f"--set: expected module.ATTR=value, got {spec!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return module, attr, value


def apply_sets(specs) -> dict:
    """Apply each ``--set`` (see ``parse_set``) and return {"module.ATTR": value} for the results JSON; an unknown
    module or attribute exits naming it."""
    done = {}
    for spec in specs or ():
        module, attr, value = parse_set(spec)
        try:
            mod = importlib.import_module(module)
        except ImportError as ex:
            raise SystemExit(f"--set {spec!r}: cannot import {module!r} ({ex})") from ex
        if not hasattr(mod, attr):
            raise SystemExit(f"--set {spec!r}: {module} has no attribute {attr!r}")
        setattr(mod, attr, value)
        done[f"{module}.{attr}"] = value
    return done


def set_code(specs) -> str:
    """Python source that applies the same ``--set`` specs in a child process (bench_e2e's second process)."""
    return "".join(f"setattr(__import__('importlib').import_module({m!r}), {a!r}, {v!r})\n"
                   for m, a, v in (parse_set(s) for s in specs or ()))
