"""GEMM benchmark (run on a GPU machine): every scheme's kernels against XLA and torch, side by side, one run.

Usage (from the repo root, on the device):
    PYTHONPATH=. python benchmarks/bench_gemm.py [--ops fp8,int8,mxfp4] [--m 1,16,64,256,2048,8192]
        [--shapes 4096x14336,14336x4096,4096x4096,8192x8192] [--json OUT.json] [--write-table]
        [--timing kernel|device|wall]

Each op module (``benchmarks/gemm_<op>.py``) provides ``cases(m, k, n)`` -> list of ``Case``; this driver times
them, prints one table per op (median time, TFLOP/s, effective GB/s, ratio to the op's baseline) and optionally
writes the ``impl="auto"`` table for this device (``quark_jax/kernels/tuning/<device>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from timing import profile_kernels, time_jax, time_jax_device, time_torch, time_torch_graph  # noqa: E402


def _kernel_time(fn, arg_sets, *, calls):
    """GPU kernel time per call from a profiler trace, over ``calls`` (<= 8) calls cycling the input sets."""
    calls = max(2, min(8, calls))
    return profile_kernels(fn, [arg_sets[i % len(arg_sets)] for i in range(calls)])[0]


TIMERS = {
    "kernel": {"jax": _kernel_time, "torch": time_torch_graph},
    "device": {"jax": time_jax_device, "torch": time_torch_graph},
    "wall": {"jax": time_jax, "torch": time_torch},
}


@dataclasses.dataclass
class Case:
    """One timed implementation: ``fn(*args)`` for each args in ``arg_sets``; framework "jax" or "torch"."""

    name: str
    fn: object
    arg_sets: list
    flops: float
    bytes: float
    framework: str = "jax"
    baseline: bool = False  # the row ratios are measured against
    auto_candidate: str | None = None  # "pallas" or "xla": competes for the impl="auto" table


def device_calls(case, target_s=2e-3):
    """Calls per timed program (device timing): enough for ~``target_s`` of work by the case's own floor
    (bytes at 3.0 TB/s, flops at 1.5 PFLOP/s), 2 to 32."""
    floor = max(case.bytes / 3.0e12, case.flops / 1.5e15, 1e-7)
    return int(min(32, max(2, -(-target_s // floor))))


def run(ops, ms, shapes, *, iters=50, timing="device", on_progress=None):
    """Times every case; ``on_progress(device, rows)`` is called after each (op, shape, M) so a run cut short
    still leaves its rows behind."""
    import jax

    device = jax.devices()[0].device_kind
    rows = []
    for op in ops:
        mod = importlib.import_module(f"gemm_{op}")
        for k, n in shapes:
            for m in ms:
                try:
                    cases = mod.cases(m, k, n)
                except Exception as e:  # a case that cannot be built is reported, not hidden
                    print(f"[{op} m={m} k={k} n={n}] could not build cases: {e!r}", flush=True)
                    continue
                results = []
                for c in cases:
                    try:
                        timer = TIMERS[timing][c.framework]
                        t = (timer(c.fn, c.arg_sets, iters=iters) if timing == "wall"
                             else timer(c.fn, c.arg_sets, calls=device_calls(c)))
                    except Exception as e:
                        print(f"[{op} m={m} k={k} n={n}] {c.name} failed: {e!r}", flush=True)
                        t = float("nan")
                    results.append((c, t))
                base = next((t for c, t in results if c.baseline), float("nan"))
                for c, t in results:
                    rows.append(dict(op=op, m=m, k=k, n=n, impl=c.name, seconds=t, tflops=c.flops / t / 1e12,
                                     gbps=c.bytes / t / 1e9, vs_baseline=base / t, auto=c.auto_candidate,
                                     timing=timing))
                print_rows(rows[-len(results):])
                if on_progress is not None:
                    on_progress(device, rows)
    return device, rows


def print_rows(rows):
    for r in rows:
        print(f"{r['op']:>6} M={r['m']:<5} K={r['k']:<6} N={r['n']:<6} {r['impl']:<28} {r['seconds'] * 1e6:>9.1f} us "
              f"{r['tflops']:>8.1f} TFLOP/s {r['gbps']:>8.1f} GB/s  x{r['vs_baseline']:.2f}", flush=True)


def auto_table(rows, margin=0.03):
    """op -> shape class -> the faster of the "pallas" / "xla" candidates (majority over the run's rows; a tie goes
    to the faster by the geometric mean of the time ratios), plus
    ``"<class>@<K>x<N>"`` exceptions for weight shapes where the class's pick loses by more than ``margin`` in most
    of that class's rows."""
    from quark_jax.kernels._dispatch import shape_class

    times = {}
    for r in rows:
        if r["auto"] is None or r["seconds"] != r["seconds"]:
            continue
        key = (OP_NAMES.get(r["op"], r["op"]), shape_class(r["m"]), r["k"], r["n"], r["m"])
        times.setdefault(key, {})[r["auto"]] = r["seconds"]
    pairs = {key: t for key, t in times.items() if "pallas" in t and "xla" in t}
    table = {}
    for (op, cls, *_), t in pairs.items():
        votes = table.setdefault(op, {}).setdefault(cls, [0, 0, 0.0])
        votes[0 if t["pallas"] < t["xla"] else 1] += 1
        votes[2] += math.log(t["xla"] / t["pallas"])  # a tied vote goes to the faster by geometric mean

    def pick(p, x, log_ratio):
        return "pallas" if p > x or (p == x and log_ratio > 0) else "xla"

    table = {op: {cls: pick(*v) for cls, v in c.items()} for op, c in table.items()}
    per_shape = {}
    for (op, cls, k, n, _m), t in pairs.items():
        pick, other = table[op][cls], ("xla" if table[op][cls] == "pallas" else "pallas")
        loses = t[pick] > t[other] * (1 + margin)
        v = per_shape.setdefault((op, cls, k, n), [0, 0])
        v[0 if loses else 1] += 1
    for (op, cls, k, n), (lose, win) in per_shape.items():
        if lose > win:
            table[op][f"{cls}@{k}x{n}"] = "xla" if table[op][cls] == "pallas" else "pallas"
    return table


OP_NAMES = {"fp8": "fp8_scaled_mm", "int8": "int8_scaled_mm", "mxfp4": "mxfp4_mm"}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="fp8,int8,mxfp4")
    p.add_argument("--m", default="1,16,64,256,2048,8192")
    p.add_argument("--shapes", default="4096x14336,14336x4096,4096x4096,8192x8192")
    p.add_argument("--iters", type=int, default=50, help="calls per repeat (wall timing only)")
    p.add_argument("--timing", choices=("kernel", "device", "wall"), default="kernel",
                   help="kernel: sum of GPU kernel durations per call from a profiler trace (torch: CUDA-graph "
                        "replay); device: calls batched in one jitted program / CUDA graph (includes the launch "
                        "gaps, 10-15 us per kernel on the lent VM); wall: one dispatch per call (includes the "
                        "host's ~34 us per-call cost on the lent VM)")
    p.add_argument("--json", default=None)
    p.add_argument("--write-table", action="store_true")
    a = p.parse_args(argv)
    ms = [int(v) for v in a.m.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def save(device, rows):
        if a.json:
            Path(a.json).write_text(json.dumps(dict(device=device, date=stamp, timing=a.timing, rows=rows), indent=1))

    device, rows = run(a.ops.split(","), ms, shapes, iters=a.iters, timing=a.timing, on_progress=save)
    save(device, rows)
    if a.write_table:
        from quark_jax.kernels._dispatch import TUNING_DIR, device_key

        path = TUNING_DIR / f"{device_key()}.json"
        table = json.loads(path.read_text()) if path.exists() else {}
        table.update(auto_table(rows))
        path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}: {table}")
    print(f"device: {device}; date: {stamp}; timing: {a.timing}")


if __name__ == "__main__":
    main()
