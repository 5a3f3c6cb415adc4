"""Choosing an implementation (``impl="auto" | "pallas" | "xla"``) and whether Pallas runs in interpret mode.

``auto`` reads a per-device table (``tuning/<device>.json``, written from the benchmark) that maps an op and a
shape class to the faster implementation, with optional per-shape exceptions keyed ``"<class>@<K>x<N>"`` (e.g.
``"prefill@14336x4096": "xla"`` where one weight shape loses against its class's pick). Without a GPU, without an
entry, or for inputs the Pallas kernel does not take, ``auto`` means ``xla``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jax

IMPLS = ("auto", "pallas", "xla")
# The FP8 / INT8 GEMMs also take impl="mosaic": the Pallas Mosaic GPU (Hopper TMA + wgmma) skinny kernel for
# M <= 128, an experimental second backend that ``auto`` does not pick on the H100 (benchmarks/NOTES.md).
IMPLS_WITH_MOSAIC = IMPLS + ("mosaic",)
TUNING_DIR = Path(__file__).parent / "tuning"


def check_impl(impl: str, allowed: tuple = IMPLS) -> str:
    if impl not in allowed:
        raise ValueError(f"impl: expected one of {allowed}, got {impl!r}")
    return impl


def default_backend() -> str:
    return jax.default_backend()


def pallas_interpret() -> bool:
    """Pallas kernels run in interpret mode anywhere but on a CUDA GPU (CPU CI runs them that way)."""
    return default_backend() != "gpu"


def device_key() -> str:
    """A file-name-safe name of the first device's kind, e.g. ``nvidia_h100_80gb_hbm3``; ``cpu`` on CPU."""
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return dev.platform
    return re.sub(r"[^a-z0-9]+", "_", dev.device_kind.lower()).strip("_")


@functools.lru_cache(maxsize=None)
def load_table(device: str) -> dict:
    path = TUNING_DIR / f"{device}.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def shape_class(m: int) -> str:
    """Decode (M <= 16), small (M <= 64), medium (M <= 512), prefill (larger)."""
    if m <= 16:
        return "decode"
    if m <= 64:
        return "small"
    if m <= 512:
        return "medium"
    return "prefill"


def resolve_impl(op: str, impl: str, m: int, k: int, n: int, *, pallas_supported: bool = True,
                 allowed: tuple = IMPLS) -> str:
    """The concrete implementation ("pallas", "xla" or a forced "mosaic") for ``op`` at shape (m, k, n).

    ``pallas_supported`` False (a dtype or alignment the kernel does not take) makes ``auto`` pick XLA, so
    ``auto`` never fails where XLA works; a forced ``impl="pallas"`` is left to raise its clear error.
    """
    check_impl(impl, allowed)
    if impl != "auto":
        return impl
    if default_backend() != "gpu" or not pallas_supported:
        return "xla"
    entry = load_table(device_key()).get(op, {})
    cls = shape_class(m)
    return entry.get(f"{cls}@{k}x{n}", entry.get(cls, "xla"))
