"""GEMM benchmark (run on a GPU): each op's entry (``impl="pallas"``, ``"xla"``, and ``"auto"``) timed by the
package tuner (``quark_jax.kernels.tuning.tuner``), beside each op's extra rows from ``benchmarks/gemm_<op>.py``
(XLA bf16 baseline, torch, ...). ``--ops dense`` (the float decode GEMM ``kernels.dense_mm``, not a tuned op: no
table is written for it) times ``benchmarks/gemm_dense.py``'s rows instead (default shapes: the 8B decode shapes).

Usage (from the repo root, on the device):
    PYTHONPATH=. python benchmarks/bench_gemm.py [--ops fp8,int8,mxfp4,int4,fp8block,mxfp6,dense] [--m 1,16,64,256,2048]
        [--shapes 4096x14336,14336x4096,4096x4096,8192x8192] [--json OUT.json] [--write-table DIR]
        [--check-auto] [--no-extras] [--deadline SECONDS] [--sweep] [--rows NAME,NAME,...]

``--write-table DIR`` makes the run a tuning run: each point's decision goes into ``DIR/<device key>.json`` (the
user table ``auto`` reads first, as ``quark-jax tune`` writes it) before ``auto`` is timed. ``--check-auto``
times ``auto`` and exits 1 if it is more than 10% slower than the fastest of pallas / xla at any point, or runs
the MXFP4 emulation where the Pallas kernel ran. ``--sweep`` adds the op module's ``sweep_cases`` rows (if it has
them); ``--rows`` keeps only the named extra rows (the baseline row always stays; the entry's rows are the tuner's).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_jax.kernels import tuning  # noqa: E402
from quark_jax.kernels.tuning import tuner  # noqa: E402

OPS = {"fp8": "fp8_scaled_mm", "int8": "int8_scaled_mm", "mxfp4": "mxfp4_mm", "int4": "int4_mm",
       "fp8block": "fp8_block_mm", "mxfp6": "mxfp6_mm"}
SHORT = {v: k for k, v in OPS.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case(tuner.Case):
    """An extra benchmark row: a tuner case with its work (for TFLOP/s, GB/s) and framework."""

    flops: float  # useful floating-point (or integer) operations per call
    bytes: float  # bytes a call must move at least
    framework: str = "jax"  # "jax" (kernel time) or "torch" (CUDA-graph replay)
    baseline: bool = False  # the row the ratios are measured against


def work(op: str, m: int, k: int, n: int) -> tuple[float, float]:
    """(flops, minimum bytes) of one call of ``op``'s entry (bf16 output)."""
    w = {"mxfp4_mm": n * k // 2 + n * k // 32, "int4_mm": n * k // 2 + 4 * n * (k // 128),
         "mxfp6_mm": 3 * n * k // 4 + n * k // 32}.get(op, n * k)
    x = 2 * m * k if op in ("mxfp4_mm", "int4_mm", "mxfp6_mm") else m * k
    return 2.0 * m * n * k, float(w + x + 2 * m * n)


def timer(case) -> float:
    if getattr(case, "framework", "jax") == "torch":
        from timing import time_torch_graph

        return time_torch_graph(case.fn, case.arg_sets)
    return tuner.kernel_time(case.fn, case.arg_sets)


def with_metrics(rows: list[dict], extras: dict) -> list[dict]:
    """Rows with TFLOP/s, GB/s and the ratio to the point's baseline row (``extras``: (op, m, k, n, name) ->
    (flops, bytes, baseline) of the extra rows; entry rows use :func:`work`)."""
    point = lambda r: (r["op"], r["m"], r["k"], r["n"])  # noqa: E731
    base = {point(r): r["seconds"] for r in rows if extras.get((*point(r), r["name"]), (0, 0, False))[2]}
    out = []
    for r in rows:
        flops, nbytes, _ = extras.get((*point(r), r["name"])) or (*work(*point(r)), False)
        t, b = r["seconds"], base.get(point(r))
        out.append(dict(r, tflops=flops / t / 1e12, gbps=nbytes / t / 1e9, vs_baseline=b / t if b else None))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default="fp8,int8,mxfp4")
    p.add_argument("--m", default="1,16,64,256,2048")
    p.add_argument("--shapes", default=None, help="KxN,... (default: the standard shapes; dense: the 8B decode ones)")
    p.add_argument("--json", default=None)
    p.add_argument("--write-table", default=None, metavar="DIR")
    p.add_argument("--check-auto", action="store_true")
    p.add_argument("--no-extras", action="store_true", help="time only the entry's implementations")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new point starts")
    p.add_argument("--sweep", action="store_true", help="add the op module's sweep_cases rows")
    p.add_argument("--rows", default=None, help="comma-separated extra row names to keep (baseline always kept)")
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.deadline if a.deadline else None
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")] if a.shapes else None
    ops = [OPS[o] for o in a.ops.split(",") if o != "dense"]
    if "dense" in a.ops.split(","):
        return dense_main(a, shapes, deadline)
    shapes = shapes or list(tuner.STANDARD_SHAPES)
    pts = tuner.points([(op, k, n) for op in ops for k, n in shapes], [int(v) for v in a.m.split(",")])
    if a.write_table:
        os.environ["QUARK_JAX_TUNING_DIR"] = a.write_table
    kind, _ = tuning.current_device()
    path = tuner.user_table_path(kind) if a.write_table else Path(tempfile.mkdtemp()) / "unused.json"
    extras = {}

    def extra_cases(point, sets):
        if a.no_extras:
            return []
        module = importlib.import_module(f"gemm_{SHORT[point.op]}")
        cases = module.cases(point, sets, Case)
        if a.sweep and hasattr(module, "sweep_cases"):
            cases += module.sweep_cases(point, sets, Case)
        if a.rows:
            keep = set(a.rows.split(","))
            cases = [c for c in cases if c.baseline or c.name in keep]
        for c in cases:
            extras[(point.op, point.m, point.k, point.n, c.name)] = (c.flops, c.bytes, c.baseline)
        return cases

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def save(table, rows):
        if a.json:
            Path(a.json).write_text(json.dumps(dict(device=kind, date=stamp, timing="kernel",
                                                    rows=with_metrics(rows, extras), table=tuner.compact(table)),
                                               indent=1))

    table, rows = tuner.tune(pts, path=path, check_auto=a.check_auto or bool(a.write_table), timer=timer,
                             extra_cases=extra_cases, deadline=deadline, on_point=save,
                             source=f"benchmarks/bench_gemm.py, {stamp}")
    save(table, rows)
    rows = with_metrics(rows, extras)
    misses = tuner.auto_misses(rows)
    for r in misses:
        print(f"auto miss: {r['op']} M={r['m']} K={r['k']} N={r['n']}: auto={r.get('auto_impl')} "
              f"{r['seconds'] * 1e6:.1f} us, fastest {r['fastest'] * 1e6:.1f} us")
    print(f"device: {kind}; date: {stamp}; points: {len({(r['op'], r['m'], r['k'], r['n']) for r in rows})}; "
          f"auto misses: {len(misses)}; table: {path if a.write_table else 'not written'}")
    return 1 if a.check_auto and misses else 0


def dense_main(a, shapes, deadline) -> int:
    """``--ops dense``: ``gemm_dense``'s rows at every M and shape (other ops in ``--ops`` are left out)."""
    import gemm_dense

    kind, _ = tuning.current_device()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows, extras = gemm_dense.run([int(v) for v in a.m.split(",")], shapes or gemm_dense.SHAPES, Case, timer,
                                  sweep=a.sweep, deadline=deadline)
    rows = with_metrics(rows, extras)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(device=kind, date=stamp, timing="kernel", rows=rows), indent=1))
    for point in sorted({(r["m"], r["k"], r["n"]) for r in rows}):
        ok = [r for r in rows if (r["m"], r["k"], r["n"]) == point and r["seconds"] == r["seconds"]]
        best = min(ok, key=lambda r: r["seconds"]) if ok else None
        if best:
            print(f"M={point[0]} {point[1]}x{point[2]}: fastest {best['name']} {best['seconds'] * 1e6:.1f} us "
                  f"({best['gbps']:.0f} GB/s)")
    print(f"device: {kind}; date: {stamp}; dense rows: {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
