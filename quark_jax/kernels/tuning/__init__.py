"""Which implementation ``impl="auto"`` runs: one pure decision function over measured tables and defaults.

A table (JSON, one per card or architecture family) has the format::

    {"device_kind": "NVIDIA H200", "compute_capability": "9.0", "date": "2026-12-02", "source": "...",
     "impl": {"<op>": {"<bucket>" or "<bucket>@<K>x<N>": "pallas" | "xla" | "mosaic", ...}, ...}}

(keys as in ``quark_jax.kernels.tiling``; ``"16": "pallas"`` serves M <= 16 unless a smaller bucket has its own
entry). ``"mosaic"`` (the Pallas Mosaic GPU decode kernel) is allowed only for the ops of ``MOSAIC_AUTO_OPS`` at
M <= 16 buckets (``"1"``, ``"16"``); the entry falls back to ``"pallas"`` where the Mosaic kernel cannot take the
operands (dtype, N / K alignment). :func:`explain_impl` looks, in order, in

1. the user table for this card, ``<user dir>/<device key>.json`` (written by ``quark-jax tune``; the user dir is
   ``$QUARK_JAX_TUNING_DIR``, else ``$XDG_CACHE_HOME/quark_jax``, else ``~/.cache/quark_jax``);
2. the packaged table for this card, ``tuning/<device key>.json``;
3. the packaged table of its architecture family, ``tuning/sm<major><minor>.json`` with the minor digit dropped
   (every sm90 card uses ``sm90.json``, Hopper's);
4. per-capability defaults (:func:`default_impl`).

CPU (no compute capability) is always ``"xla"``. Decisions are cached per shape; :func:`clear_cache` drops them
(the tuner calls it after writing a table).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import jax

from quark_jax.kernels import tiling

# the dense GEMMs (what the tuner measures)
OPS = ("fp8_scaled_mm", "int8_scaled_mm", "mxfp4_mm", "int4_mm", "fp8_block_mm", "mxfp6_mm")
# the grouped (MoE expert) GEMM, one op per expert weight format (kernels.grouped_mm; not tuned yet: defaults)
GROUPED_OPS = ("grouped_mm_bf16", "grouped_mm_fp8", "grouped_mm_mxfp4")
ALL_OPS = OPS + GROUPED_OPS
AUTO_IMPLS = ("pallas", "xla", "mosaic")  # what a table entry may name
# ops whose entry can run the Mosaic GPU decode kernel under ``auto`` (at M <= MOSAIC_MAX_M; Hopper tables only)
MOSAIC_AUTO_OPS = ("mxfp4_mm",)
MOSAIC_MAX_M = 16
PACKAGE_DIR = Path(__file__).parent
SOURCES = ("user cache", "card table", "family table", "default", "cpu")


def device_key(device_kind: str) -> str:
    """A file-name-safe name of a device kind.

    >>> device_key("NVIDIA H200"), device_key("NVIDIA H100 80GB HBM3")
    ('nvidia_h200', 'nvidia_h100_80gb_hbm3')
    """
    return re.sub(r"[^a-z0-9]+", "_", device_kind.lower()).strip("_")


def capability(compute_capability: str | None) -> tuple[int, int] | None:
    """``"9.0"`` -> (9, 0); None (CPU) stays None.

    >>> capability("8.9"), capability(None)
    ((8, 9), None)
    """
    if compute_capability is None:
        return None
    m = re.match(r"^\s*(\d+)\.(\d+)", str(compute_capability))
    if not m:
        raise ValueError(f"compute_capability: expected 'major.minor' such as '9.0', got {compute_capability!r}")
    return int(m.group(1)), int(m.group(2))


def family_key(compute_capability: str) -> str:
    """The architecture family's table name: ``"9.0"`` -> ``"sm90"``, ``"8.9"`` -> ``"sm80"``.

    >>> family_key("9.0"), family_key("8.6")
    ('sm90', 'sm80')
    """
    major, _ = capability(compute_capability)
    return f"sm{major}0"


def current_device() -> tuple[str, str | None]:
    """``(device_kind, compute_capability)`` of the first device; ``("cpu", None)`` off a CUDA GPU."""
    dev = jax.devices()[0]
    cc = getattr(dev, "compute_capability", None)
    if dev.platform != "gpu" or not re.match(r"^\d+\.\d+", str(cc)):  # CPU, or a GPU without CUDA's numbering
        return dev.platform, None
    return dev.device_kind, str(cc)


def user_dir() -> Path:
    """Where ``quark-jax tune`` writes and ``auto`` reads user tables first."""
    if os.environ.get("QUARK_JAX_TUNING_DIR"):
        return Path(os.environ["QUARK_JAX_TUNING_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quark_jax"


def validate_table(table: dict, where: str) -> dict:
    """Check a table's ``impl`` section (ops, keys, values); returns the table. Errors name ``where``."""
    if not isinstance(table, dict) or not isinstance(table.get("impl", {}), dict):
        raise ValueError(f"{where}: expected a JSON object with an 'impl' object")
    for op, entries in table.get("impl", {}).items():
        if op not in ALL_OPS:
            raise ValueError(f"{where}: unknown op {op!r}, expected one of {ALL_OPS}")
        for key, impl in entries.items():
            tiling.check_key(key, f"{where} [{op}]")
            if impl not in AUTO_IMPLS:
                raise ValueError(f"{where} [{op}][{key}]: expected one of {AUTO_IMPLS}, got {impl!r}")
            if impl == "mosaic" and (op not in MOSAIC_AUTO_OPS or key.partition("@")[0] not in ("1", "16")):
                raise ValueError(f"{where} [{op}][{key}]: 'mosaic' is allowed only for {MOSAIC_AUTO_OPS} at the "
                                 f"M <= {MOSAIC_MAX_M} buckets ('1', '16'), got it for {op} {key!r}")
    return table


@functools.lru_cache(maxsize=None)
def _load(path: str, mtime: float) -> dict:
    del mtime  # part of the cache key: a rewritten file is read again
    return validate_table(json.loads(Path(path).read_text()), path)


def load_table(path: Path) -> dict:
    """The table at ``path`` ({} if there is none), validated; cached until the file changes."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return {}
    return _load(str(path), mtime)


def default_impl(op: str, m: int, compute_capability: str) -> str:
    """Per-capability defaults for a GPU without a table entry.

    - ``mxfp4_mm``: the Pallas kernel from sm80 (bf16 tensor cores) at every M, never the XLA emulation (it
      dequantizes the whole weight per call; 5-10x slower at decode on the H100 and H200); the Hopper tables
      (``sm90.json``, ``nvidia_h200.json``, ``nvidia_h100_80gb_hbm3.json``) name the Mosaic GPU decode kernel
      (``"mosaic"``) at M <= 16, which defaults do not (it needs sm90's wgmma and TMA);
    - ``fp8_scaled_mm``: Pallas for decode (M <= 16) from sm89 (FP8 tensor cores), else XLA (cuBLASLt);
    - ``int8_scaled_mm``: Pallas for decode from sm80, else XLA;
    - ``int4_mm`` (W4A16 INT4/UINT4 per group; ``int4_mm_nk`` on the repacked layout the scheme stores, and
      ``int4_mm`` on the checkpoint's): Pallas for decode from sm80 (H200: the repacked-layout kernel 1.0-1.4x XLA
      bf16 and ~4x the XLA reference, which dequantizes the whole weight per call), else XLA (prefill not measured);
    - ``fp8_block_mm`` (block-scaled FP8): Pallas from sm89 at every M (H200, M = 2048: 6.3x faster than the XLA
      reference, which dequantizes both operands to f32; decode not measured);
    - ``mxfp6_mm`` (MXFP6 weights): Pallas for decode from sm80 (H200: 1.5-2.0x faster than the XLA reference,
      still 0.3x bf16), else XLA (prefill: the reference's dequantize + GEMM is 3x faster than the kernel);
    - ``grouped_mm_<scheme>``: the Pallas kernel at every M (bf16 and MXFP4 from sm80, FP8 from sm89): it reads
      only the routed experts' weights, where XLA's ragged dot may expand to a dense masked product.

    >>> default_impl("fp8_scaled_mm", 1, "8.0"), default_impl("fp8_scaled_mm", 1, "8.9")
    ('xla', 'pallas')
    """
    cc = capability(compute_capability)
    decode = tiling.shape_class(m) == "decode"
    if op == "mxfp4_mm":
        return "pallas" if cc >= (8, 0) else "xla"
    if op == "fp8_scaled_mm":
        return "pallas" if decode and cc >= (8, 9) else "xla"
    if op == "int8_scaled_mm":
        return "pallas" if decode and cc >= (8, 0) else "xla"
    if op == "int4_mm":
        return "pallas" if decode and cc >= (8, 0) else "xla"
    if op == "fp8_block_mm":
        return "pallas" if cc >= (8, 9) else "xla"
    if op == "mxfp6_mm":
        return "pallas" if decode and cc >= (8, 0) else "xla"
    if op in GROUPED_OPS:
        return "pallas" if cc >= ((8, 9) if op == "grouped_mm_fp8" else (8, 0)) else "xla"
    raise ValueError(f"op: expected one of {ALL_OPS}, got {op!r}")


def _tables(device_kind: str, compute_capability: str):
    key = device_key(device_kind)
    yield "user cache", user_dir() / f"{key}.json"
    yield "card table", PACKAGE_DIR / f"{key}.json"
    yield "family table", PACKAGE_DIR / f"{family_key(compute_capability)}.json"


@functools.lru_cache(maxsize=4096)
def _explain(op, m, k, n, device_kind, compute_capability, user: str, stamps: tuple):
    del user, stamps  # cache key: the user dir and the tables' modification times
    for source, path in _tables(device_kind, compute_capability):
        impl, _ = tiling.lookup(load_table(path).get("impl", {}).get(op), m, k, n)
        if impl is not None:
            return impl, source
    return default_impl(op, m, compute_capability), "default"


def explain_impl(op: str, m: int, k: int, n: int, *, device_kind: str,
                 compute_capability: str | None) -> tuple[str, str]:
    """``(impl, source)``: what ``impl="auto"`` runs for ``op`` at x [M, K] times weight [N, K] on this device,
    and where that came from: "user cache", "card table", "family table", "default" or "cpu".

    >>> explain_impl("mxfp4_mm", 1, 4096, 4096, device_kind="cpu", compute_capability=None)
    ('xla', 'cpu')
    >>> explain_impl("mxfp4_mm", 1, 4096, 4096, device_kind="Some GPU", compute_capability="8.0")
    ('pallas', 'default')
    """
    if op not in ALL_OPS:
        raise ValueError(f"op: expected one of {ALL_OPS}, got {op!r}")
    if compute_capability is None:
        return "xla", "cpu"
    capability(compute_capability)  # validates
    stamps = tuple(_mtime(p) for _, p in _tables(device_kind, compute_capability))
    return _explain(op, int(m), int(k), int(n), device_kind, compute_capability, str(user_dir()), stamps)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return -1.0


def choose_impl(op: str, m: int, k: int, n: int, *, device_kind: str, compute_capability: str | None) -> str:
    """The implementation name ``impl="auto"`` runs ("pallas", "xla" or, for ``MOSAIC_AUTO_OPS`` at decode on a
    Hopper table, "mosaic"); see :func:`explain_impl`.

    >>> choose_impl("fp8_scaled_mm", 16, 4096, 4096, device_kind="cpu", compute_capability=None)
    'xla'
    """
    return explain_impl(op, m, k, n, device_kind=device_kind, compute_capability=compute_capability)[0]


def clear_cache() -> None:
    """Forget cached tables and decisions."""
    _load.cache_clear()
    _explain.cache_clear()


def describe_auto(op: str, k: int, n: int, *, device_kind: str | None = None, compute_capability: str | None = None,
                  decode_m: int = 1, prefill_m: int = 2048) -> str | None:
    """What ``impl="auto"`` runs for ``op`` with a [N, K] weight at decode and prefill M, and why, e.g.
    ``"decode pallas (card table), prefill xla (card table)"``; the current device unless given; None on CPU.

    >>> describe_auto("fp8_scaled_mm", 4096, 4096, device_kind="NVIDIA H200", compute_capability="9.0")
    'decode pallas (card table), prefill xla (card table)'
    """
    if device_kind is None:
        device_kind, compute_capability = current_device()
    if compute_capability is None:
        return None
    parts = []
    for label, m in (("decode", decode_m), ("prefill", prefill_m)):
        impl, source = explain_impl(op, m, k, n, device_kind=device_kind, compute_capability=compute_capability)
        parts.append(f"{label} {impl} ({source})")
    return ", ".join(parts)
