"""The tuner: time each op's candidate implementations on this GPU and write the ``impl="auto"`` table.

``quark-jax tune`` and ``benchmarks/bench_gemm.py`` both run :func:`tune`; the packaged tables
(``quark_jax/kernels/tuning/*.json``) are its output. For each point (op, M, K, N) it builds the operands the
schemes pass (weights [N, K] in several copies so that the working set exceeds L2), times ``impl="pallas"`` and
``impl="xla"`` (and, for ``mxfp4_mm`` at M <= 16 on sm90+, ``impl="mosaic"``: :func:`candidates`) through the op's
entry, records the faster under ``"<bucket>@<K>x<N>"`` and, per M bucket, the
majority over the tuned weight shapes under ``"<bucket>"``; with ``check_auto`` it then times ``impl="auto"``
as the written table decides.

Timing (:func:`kernel_time`): on a GPU, the summed durations of the GPU kernels per call from a
``jax.profiler`` trace of one jitted program that calls the op on every operand copy (scaling, reduction and
activation-quantization passes included; host and launch gaps excluded). Off a GPU, wall-clock time of the
same program (interpret mode: only good for testing the tuner).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from quark_jax.kernels import tiling, tuning

STANDARD_SHAPES = ((4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192))  # (K, N) of the benchmark weights
DECODE_MS = (1, 16)
MEDIUM_MS = (64, 256)
PREFILL_MS = (2048,)
DEFAULT_MS = DECODE_MS + MEDIUM_MS + PREFILL_MS
CANDIDATES = ("pallas", "xla")  # every op, every M
MOSAIC_MIN_CC = (9, 0)  # the Mosaic GPU decode kernel: Hopper's TMA + wgmma


def candidates(op: str, m: int, compute_capability: str | None) -> tuple[str, ...]:
    """The implementations timed at a point: ``CANDIDATES``, plus ``"mosaic"`` for the ops of
    ``tuning.MOSAIC_AUTO_OPS`` at M <= ``tuning.MOSAIC_MAX_M`` on sm90+.

    >>> candidates("mxfp4_mm", 1, "9.0"), candidates("mxfp4_mm", 64, "9.0"), candidates("mxfp4_mm", 1, "8.0")
    (('pallas', 'xla', 'mosaic'), ('pallas', 'xla'), ('pallas', 'xla'))
    """
    cc = tuning.capability(compute_capability)
    if op in tuning.MOSAIC_AUTO_OPS and m <= tuning.MOSAIC_MAX_M and cc is not None and cc >= MOSAIC_MIN_CC:
        return CANDIDATES + ("mosaic",)
    return CANDIDATES
L2_BYTES = 50 * 2**20  # H100 / H200


@dataclasses.dataclass(frozen=True, kw_only=True)
class Point:
    """One tuned problem: ``op`` at x [m, k] times weight [n, k]."""

    op: str  # kernel entry name, one of tuning.OPS
    m: int  # rows of x
    k: int  # contraction size
    n: int  # output features (weight rows)

    def __post_init__(self):
        if self.op not in tuning.OPS:
            raise ValueError(f"Point.op: expected one of {tuning.OPS}, got {self.op!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case:
    """A timed callable: ``fn(*args)`` for each ``args`` of ``arg_sets``; ``impl`` the entry's impl it runs."""

    name: str  # row name ("pallas", "xla", "auto", or a benchmark's extra row)
    fn: Callable  # jitted callable
    arg_sets: list  # operand tuples, distinct weights per tuple
    impl: str | None = None  # "pallas" / "xla" / "auto" for entry rows; None for extra rows


def points(shapes: Iterable[tuple[str, int, int]], ms: Iterable[int] = DEFAULT_MS) -> list[Point]:
    """Points for (op, K, N) weight shapes at each M, ordered by M, then op and shape (decode first).

    >>> [(p.op, p.m) for p in points([("mxfp4_mm", 64, 32)], ms=(1, 2048))]
    [('mxfp4_mm', 1), ('mxfp4_mm', 2048)]
    """
    shapes = sorted(set(shapes))
    return [Point(op=op, m=m, k=k, n=n) for m in ms for op, k, n in shapes]


def standard_points(ms: Iterable[int] = DEFAULT_MS, ops: Iterable[str] = tuning.OPS) -> list[Point]:
    """Every op at the standard benchmark weight shapes (``STANDARD_SHAPES``)."""
    return points([(op, k, n) for op in ops for k, n in STANDARD_SHAPES], ms)


def copies_for(weight_bytes: int) -> int:
    """Operand copies so that the weights of one timed program exceed twice the L2 (2 to 8).

    >>> copies_for(58 * 2**20), copies_for(9 * 2**20)
    (2, 8)
    """
    return max(2, min(8, -(-2 * L2_BYTES // max(weight_bytes, 1))))


def operands(op: str, m: int, k: int, n: int, *, copies: int | None = None, seed: int = 0) -> list[tuple]:
    """Operand tuples for ``op``'s entry as its scheme passes them, one per weight copy:

    - fp8_scaled_mm: (x_q [M, K] e4m3fn per-token quantized, w_q [N, K], x_scale [M, 1], w_scale [N], bias bf16);
    - int8_scaled_mm: (x_q int8, w_q int8, x_scale (), w_scale [N], bias bf16, azp_adj int32 [N]);
    - mxfp4_mm: (x bf16 [M, K], w_packed uint8 [N, K/2], w_scales uint8 [N, K/32]);
    - int4_mm: (x bf16 [M, K], w_nk uint8 [N, K/2], w_scales f32 [K/128, N]) (int4, group 128: the repacked
      layout ``QuarkW4A16Int4`` stores and ``kernels.int4_mm_nk`` takes);
    - fp8_block_mm: (x_q e4m3fn [M, K], w_q [N, K], x_scale f32 [M, K/128], w_scale f32 [N/128, K/128]);
    - mxfp6_mm: (x bf16 [M, K], w_packed uint8 [N, 3K/4], w_scales uint8 [N, K/32]) (fp6_e2m3).
    """
    import jax
    import jax.numpy as jnp

    from quark_jax import quant

    key = jax.random.key(seed * 1_000_003 + m * 7 + k * 3 + n)
    kx, kw, ks, kb = jax.random.split(key, 4)
    w_bytes = {"fp8_scaled_mm": n * k, "int8_scaled_mm": n * k, "mxfp4_mm": n * k // 2 + n * k // 32,
               "int4_mm": n * k // 2 + n * k // 32, "fp8_block_mm": n * k,
               "mxfp6_mm": 3 * n * k // 4 + n * k // 32}[op]
    copies = copies or copies_for(w_bytes)
    wkeys = [jax.random.fold_in(kw, i) for i in range(copies)]
    if op == "fp8_scaled_mm":
        xq, xs = quant.scaled_fp8_quant(jax.random.normal(kx, (m, k), jnp.float32) * 2.0, per_token=True)
        ws = jax.random.uniform(ks, (n,), jnp.float32, 1e-3, 1e-2)
        b = jax.random.normal(kb, (n,), jnp.float32).astype(jnp.bfloat16)
        make = jax.jit(lambda kk: jnp.clip(jax.random.normal(kk, (n, k), jnp.float32) * 100.0, -448, 448)
                       .astype(jnp.float8_e4m3fn))
        return [(xq, make(kk), xs, ws, b) for kk in wkeys]
    if op == "int8_scaled_mm":
        x = jax.random.randint(kx, (m, k), -128, 128, jnp.int32).astype(jnp.int8)
        ws = jax.random.uniform(ks, (n,), jnp.float32, 1e-3, 1e-2)
        b = jax.random.normal(kb, (n,), jnp.float32).astype(jnp.bfloat16)
        make = jax.jit(lambda kk: jax.random.randint(kk, (n, k), -128, 128, jnp.int32).astype(jnp.int8))
        out = []
        for kk in wkeys:
            w = make(kk)
            out.append((x, w, jnp.float32(0.02), ws, b, jnp.sum(w.astype(jnp.int32), axis=1) * jnp.int32(-7)))
        return out
    if op == "mxfp4_mm":
        x = jax.random.normal(kx, (m, k), jnp.bfloat16)
        make = jax.jit(lambda kk: quant.quantize_mxfp4(jax.random.normal(kk, (n, k), jnp.float32) * 0.02))
        return [(x, *make(kk)) for kk in wkeys]
    if op == "int4_mm":
        from quark_jax import formats, kernels

        x = jax.random.normal(kx, (m, k), jnp.bfloat16)
        g = k // 128
        make = jax.jit(lambda kk: (kernels.int4_repack(formats.pack_int4(jax.random.randint(kk, (k, n), -8, 8),
                                                                         "reorder"), group_size=128)[0],
                                   jax.random.uniform(jax.random.fold_in(kk, 1), (g, n), jnp.float32, 1e-3, 1e-2)))
        return [(x, *make(kk)) for kk in wkeys]
    if op == "mxfp6_mm":
        x = jax.random.normal(kx, (m, k), jnp.bfloat16)
        make = jax.jit(lambda kk: quant.quantize_mx(jax.random.normal(kk, (n, k), jnp.float32) * 0.02, "fp6_e2m3"))
        return [(x, *make(kk)) for kk in wkeys]
    if op == "fp8_block_mm":
        xq, xs = quant.per_token_group_quant_fp8(jax.random.normal(kx, (m, k), jnp.float32) * 2.0, 128)
        make = jax.jit(lambda kk: quant.quantize_fp8_per_block(jax.random.normal(kk, (n, k), jnp.float32) * 0.02,
                                                                (128, 128)))
        out = []
        for kk in wkeys:
            wq, ws = make(kk)
            out.append((xq, wq, xs, ws))
        return out
    raise ValueError(f"op: expected one of {tuning.OPS}, got {op!r}")


def entry(op: str, impl: str) -> Callable:
    """The jitted entry ``op`` with ``impl`` fixed, taking :func:`operands`' tuples (bf16 output). ``mxfp4_mm``
    also takes an optional 4th operand, the scales as [K/32, N], and then runs the folded decode where the Mosaic
    kernel runs (what the MXFP4 schemes store and decide at load; :func:`mxfp4_load_time_sets` checks the bytes)."""
    import jax
    import jax.numpy as jnp

    from quark_jax import kernels

    if op == "fp8_scaled_mm":
        fn = functools.partial(kernels.fp8_scaled_mm, out_dtype=jnp.bfloat16, impl=impl)
    elif op == "int8_scaled_mm":
        def fn(x, w, xs, ws, b, adj):
            return kernels.int8_scaled_mm(x, w, xs, ws, b, azp_adj=adj, out_dtype=jnp.bfloat16, impl=impl)
    elif op == "mxfp4_mm":
        def fn(x, w, s, s_kn=None):  # s_kn: the scales as [K/32, N], given where their bytes allow the fold
            return kernels.mxfp4_mm(x, w, s, quantize_input=True, impl=impl, scales_kn=s_kn, fold=s_kn is not None)
    elif op == "int4_mm":
        def fn(x, w, s):
            return kernels.int4_mm_nk(x, w, s, group_size=128, signed=True, impl=impl)
    elif op == "mxfp6_mm":
        fn = functools.partial(kernels.mxfp6_mm, element="fp6_e2m3", impl=impl)
    elif op == "fp8_block_mm":
        fn = functools.partial(kernels.fp8_block_mm, block=(128, 128), out_dtype=jnp.bfloat16, impl=impl)
    else:
        raise ValueError(f"op: expected one of {tuning.OPS}, got {op!r}")
    return jax.jit(fn)


def kernel_time(fn: Callable, arg_sets: list) -> float:
    """Seconds per call of ``fn`` over ``arg_sets`` (see the module docstring: GPU kernel time on a GPU)."""
    import jax

    many = jax.jit(lambda sets: [fn(*s) for s in sets])
    jax.block_until_ready(many(arg_sets))
    if jax.default_backend() != "gpu":
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(many(arg_sets))
            samples.append((time.perf_counter() - t0) / len(arg_sets))
        return statistics.median(samples)
    return profile_kernels(many, arg_sets)[0]


def profile_kernels(many: Callable, arg_sets: list, *, runs: int = 2):
    """GPU kernel time per call of a jitted ``many(arg_sets)`` that makes one call per set, from a profiler
    trace of ``runs`` runs. Returns (seconds per call, [(kernel name, us per call, launches per call)] top 6)."""
    import glob
    import gzip
    import shutil
    import tempfile

    import jax

    d = tempfile.mkdtemp()
    try:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(runs):
                jax.block_until_ready(many(arg_sets))
        paths = (glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
                 + glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True))
        events = json.load(gzip.open(paths[0]))
        events = events["traceEvents"] if isinstance(events, dict) else events
        pname = {e["pid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
        tname = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "thread_name"}
        kernels = {}
        for e in events:
            if e.get("ph") != "X" or "GPU" not in pname.get(e["pid"], ""):
                continue
            if "Stream" not in tname.get((e["pid"], e.get("tid")), ""):
                continue
            acc = kernels.setdefault(e["name"][:60], [0.0, 0])
            acc[0] += e["dur"]
            acc[1] += 1
        calls = runs * len(arg_sets)
        total_us = sum(v[0] for v in kernels.values()) / calls
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:6]
        return total_us * 1e-6, [(name, round(v[0] / calls, 2), round(v[1] / calls, 2)) for name, v in top]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def decide(times: dict[str, float]) -> str | None:
    """The fastest candidate of ``times`` (impl -> seconds; NaN = failed), None if none ran.

    >>> decide({"pallas": 1.0, "xla": 0.9}), decide({"pallas": float("nan")})
    ('xla', None)
    """
    ok = {i: t for i, t in times.items() if i in tuning.AUTO_IMPLS and t == t}
    return min(ok, key=ok.get) if ok else None


def empty_table(device_kind: str, compute_capability: str | None, source: str) -> dict:
    return {"device_kind": device_kind, "compute_capability": compute_capability,
            "date": datetime.date.today().isoformat(), "source": source, "impl": {}}


def record(table: dict, point: Point, winner: str) -> None:
    """Put ``winner`` for ``point`` into ``table`` (exact-shape key), then re-derive the bucket's general entry:
    the majority over the table's exact entries of that op and bucket (a tie keeps the existing entry, or the
    decision just made).

    >>> t = {}
    >>> record(t, Point(op="mxfp4_mm", m=1, k=64, n=32), "pallas"); t["impl"]
    {'mxfp4_mm': {'1@64x32': 'pallas', '1': 'pallas'}}
    """
    entries = table.setdefault("impl", {}).setdefault(point.op, {})
    bucket = tiling.m_bucket(point.m)
    entries[tiling.table_key(bucket, point.k, point.n)] = winner
    votes = [v for key, v in entries.items() if key.startswith(bucket + "@")]
    counts = {i: votes.count(i) for i in tuning.AUTO_IMPLS}
    best = max(counts.values())
    leaders = [i for i in tuning.AUTO_IMPLS if counts[i] == best]
    entries[bucket] = entries.get(bucket) if entries.get(bucket) in leaders else (
        winner if winner in leaders else leaders[0])


def compact(table: dict) -> dict:
    """A copy without exact-shape entries that say the same as the entry the lookup would find without them.

    >>> compact({"impl": {"mxfp4_mm": {"1@64x32": "pallas", "1": "pallas", "1@96x32": "xla"}}})["impl"]
    {'mxfp4_mm': {'1': 'pallas', '1@96x32': 'xla'}}
    """
    out = json.loads(json.dumps(table))
    for op, entries in out.get("impl", {}).items():
        general = {key: v for key, v in entries.items() if "@" not in key}
        for key in [key for key in entries if "@" in key]:
            bucket, shape = key.split("@")
            k, n = (int(s) for s in shape.split("x"))
            m = tiling.M_BUCKETS[tiling.BUCKETS.index(bucket)] if bucket != "max" else tiling.M_BUCKETS[-1] + 1
            if tiling.lookup(general, m, k, n)[0] == entries[key]:
                del entries[key]
        out["impl"][op] = dict(sorted(entries.items(), key=lambda kv: _key_order(kv[0])))
    return out


def _key_order(key: str):
    bucket, _, shape = key.partition("@")
    return tiling.BUCKETS.index(bucket), shape


def write_table(path: Path, table: dict) -> None:
    """Write ``table`` (validated) as JSON, atomically."""
    tuning.validate_table(table, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
    tuning.clear_cache()


def user_table_path(device_kind: str) -> Path:
    """Where the user table for ``device_kind`` lives (``tuning.user_dir()``)."""
    return tuning.user_dir() / f"{tuning.device_key(device_kind)}.json"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "#" * filled + "-" * (width - filled)


def tune(pts: list[Point], *, path: Path | None = None, check_auto: bool = False, timer: Callable | None = None,
         extra_cases: Callable | None = None, deadline: float | None = None, on_point: Callable | None = None,
         log=sys.stderr,
         source: str = "quark_jax.kernels.tuning.tuner") -> tuple[dict, list[dict]]:
    """Time the candidates at every point, record the decisions and return ``(table, rows)``.

    Args:
      pts: the points (:func:`points`, :func:`standard_points`).
      path: the table to update and rewrite after every point (default: this card's user table); an existing
        table there is extended, not replaced.
      check_auto: after recording a point, time ``impl="auto"`` too (a row named "auto", with the impl and the
        table source it resolved to).
      timer: ``timer(case) -> seconds`` (default :func:`kernel_time` on the case's function and operands).
      extra_cases: ``extra_cases(point, arg_sets) -> [Case]``, more rows timed at each point (benchmarks).
      deadline: a ``time.monotonic()`` value after which no new point starts (the table so far is kept).
      on_point: ``on_point(table, rows)`` after every point (e.g. to save rows as they come).
      log: where the progress bar goes (None: silent).

    Rows: dicts with op, m, k, n, name, impl, seconds (NaN where the case failed, with its error), and for
    "auto" rows ``auto_impl`` and ``auto_source``.
    """
    kind, cc = tuning.current_device()
    path = Path(path) if path is not None else user_table_path(kind)
    table = json.loads(path.read_text()) if path.exists() else empty_table(kind, cc, source)
    table.update(device_kind=kind, compute_capability=cc, date=datetime.date.today().isoformat())
    timer = timer or (lambda case: kernel_time(case.fn, case.arg_sets))
    rows = []
    for i, p in enumerate(pts):
        if deadline is not None and time.monotonic() > deadline:
            _say(log, f"deadline reached: {len(pts) - i} of {len(pts)} points not tuned")
            break
        sets = operands(p.op, p.m, p.k, p.n)
        cands = candidates(p.op, p.m, cc)
        # the Mosaic kernel (and auto, which may run it) on what the MXFP4 schemes store at load
        kn_sets = mxfp4_load_time_sets(sets) if "mosaic" in cands else sets
        cases = [Case(name=impl, fn=entry(p.op, impl), arg_sets=kn_sets if impl == "mosaic" else sets, impl=impl)
                 for impl in cands]
        if extra_cases is not None:
            cases += extra_cases(p, sets)
        times = {}
        for case in cases:
            rows.append(_timed(p, case, timer, log))
            times[case.name] = rows[-1]["seconds"]
        winner = decide(times)
        if winner is not None:
            record(table, p, winner)
            write_table(path, table)
        msg = ", ".join(f"{c.name} {times[c.name] * 1e6:.1f} us" for c in cases)
        if check_auto:
            impl, src = tuning.explain_impl(p.op, p.m, p.k, p.n, device_kind=kind, compute_capability=cc)
            row = _timed(p, Case(name="auto", fn=entry(p.op, "auto"), arg_sets=kn_sets, impl="auto"), timer, log)
            row.update(auto_impl=impl, auto_source=src)
            rows.append(row)
            msg += f"; auto = {impl} ({src}) {row['seconds'] * 1e6:.1f} us"
        if on_point is not None:
            on_point(table, rows)
        _say(log, f"[{_bar(i + 1, len(pts))}] {i + 1}/{len(pts)} {p.op} M={p.m} K={p.k} N={p.n}: {msg} -> {winner}")
    return table, rows


def mxfp4_load_time_sets(sets: list) -> list:
    """``mxfp4_mm`` operand tuples (x, w_packed, w_scales) with the scales' [K/32, N] copy appended, as the MXFP4
    schemes store it where the Mosaic kernel may run, when every scale byte allows the folded decode (the
    schemes' load-time check); other tuples (other ops, or bytes above ``FOLD_MAX_SCALE_BYTE``) unchanged."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from quark_jax.kernels.mxfp4_mm.decode import FOLD_MAX_SCALE_BYTE

    out = []
    for t in sets:
        if len(t) == 3 and getattr(t[2], "dtype", None) == np.uint8 and \
                int(jax.device_get(jnp.max(t[2]))) <= FOLD_MAX_SCALE_BYTE:
            t = (*t, jax.block_until_ready(jax.jit(jnp.transpose)(t[2])))
        out.append(t)
    return out


def _timed(p: Point, case: Case, timer: Callable, log) -> dict:
    row = dict(op=p.op, m=p.m, k=p.k, n=p.n, name=case.name, impl=case.impl)
    try:
        row["seconds"] = float(timer(case))
    except Exception as e:  # a candidate that fails to compile or run loses; the error is kept
        row.update(seconds=math.nan, error=repr(e)[:300])
        _say(log, f"  {p.op} M={p.m} K={p.k} N={p.n} {case.name} failed: {e!r}"[:400])
    return row


def _say(log, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)


def auto_misses(rows: list[dict], *, slack: float = 0.10) -> list[dict]:
    """The "auto" rows slower than ``(1 + slack)`` times the fastest candidate at their point, or that run the
    XLA emulation for mxfp4_mm where the Pallas kernel ran. Each miss: the auto row plus ``fastest`` (seconds).

    >>> rows = [dict(op="fp8_scaled_mm", m=1, k=64, n=64, name=n, impl=n, seconds=t)
    ...         for n, t in (("pallas", 1.0), ("xla", 2.0), ("auto", 1.2))]
    >>> [r["seconds"] for r in auto_misses(rows)]
    [1.2]
    """
    by_point = {}
    for r in rows:
        by_point.setdefault((r["op"], r["m"], r["k"], r["n"]), []).append(r)
    misses = []
    for (op, *_), rs in by_point.items():
        cand = [r["seconds"] for r in rs if r["name"] in tuning.AUTO_IMPLS and r["seconds"] == r["seconds"]]
        for r in rs:
            if r["name"] != "auto" or not cand:
                continue
            fastest = min(cand)
            pallas_ran = any(x["name"] == "pallas" and x["seconds"] == x["seconds"] for x in rs)
            emulation = op == "mxfp4_mm" and r.get("auto_impl", "pallas") == "xla" and pallas_ran
            if not r["seconds"] <= (1 + slack) * fastest or emulation:
                misses.append(dict(r, fastest=fastest))
    return misses
