"""Resolving ``impl`` for an entry point on the current device, and whether Pallas runs in interpret mode.

``impl="auto"`` asks ``tuning.choose_impl`` (tables, then defaults) on a CUDA GPU and is ``"xla"`` anywhere
else; the entry passes ``supported=False`` where the Pallas kernel cannot take the input (dtype, alignment), and
``auto`` then falls back to XLA, so ``auto`` never fails where XLA works. A table may name ``"mosaic"`` (the
MXFP4 decode kernel on Hopper, M <= 16); the entry says with ``mosaic_ok`` whether that kernel takes the operands,
and ``auto`` otherwise runs ``"pallas"``.
"""

from __future__ import annotations

import jax

from quark_jax.kernels import tuning

IMPLS = ("auto", "pallas", "xla")
# The FP8 / INT8 / MXFP4 GEMMs also take impl="mosaic": a Pallas Mosaic GPU (Hopper TMA + wgmma) decode kernel
# (FP8 / INT8: M <= 128; MXFP4: M <= 16). ``auto`` picks it only for MXFP4 at M <= 16 on Hopper (the sm90 tables;
# benchmarks/NOTES.md "Session 8, helper mxauto"); FP8 / INT8 Mosaic stay experimental.
IMPLS_WITH_MOSAIC = IMPLS + ("mosaic",)


def check_impl(impl: str, allowed: tuple = IMPLS) -> str:
    """``impl`` if it is one of ``allowed``, else a ValueError naming the choices.

    >>> check_impl("auto")
    'auto'
    """
    if impl not in allowed:
        raise ValueError(f"impl: expected one of {allowed}, got {impl!r}")
    return impl


def pallas_interpret() -> bool:
    """Pallas kernels run in interpret mode anywhere but on a CUDA GPU (CPU CI runs them that way)."""
    return jax.default_backend() != "gpu"


def resolve_impl(op: str, impl: str, m: int, k: int, n: int, *, supported: bool = True,
                 allowed: tuple = IMPLS, mosaic_ok: bool = False) -> str:
    """The concrete implementation ("pallas", "xla" or "mosaic") for ``op`` at shape (m, k, n).

    ``supported``: whether the Pallas kernel takes the operands (else ``auto`` runs "xla"); ``mosaic_ok``: whether
    the Mosaic decode kernel does (else a table's "mosaic" becomes "pallas"). A forced ``impl="pallas"`` (or
    "mosaic") on input the kernel does not take is left to raise the kernel's clear error.

    >>> resolve_impl("mxfp4_mm", "xla", 1, 64, 64)
    'xla'
    """
    check_impl(impl, allowed)
    if impl != "auto":
        return impl
    kind, cc = tuning.current_device()
    choice = tuning.choose_impl(op, m, k, n, device_kind=kind, compute_capability=cc)
    if not supported:
        return "xla"
    return "pallas" if choice == "mosaic" and not mosaic_ok else choice


def device_table(tables: dict) -> dict:
    """This device's entry of a backend's tuned-config tables ({device key or family key: table}): the card's
    own, else its architecture family's (e.g. ``"sm90"``), else {}."""
    kind, cc = tuning.current_device()
    if cc is None:
        return {}
    return tables.get(tuning.device_key(kind)) or tables.get(tuning.family_key(cc)) or {}
