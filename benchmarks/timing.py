"""Device timing for benchmarks: many back-to-back calls after warm-up, median of several repeats.

Two ways, and they differ for short kernels:
- wall (``time_jax`` / ``time_torch``): the op is dispatched ``iters`` times back to back and synchronized once
  per repeat; per-call time = wall time / iters. That includes the host's per-call dispatch cost, which on the
  lent H100 VM is ~34 us for a trivial jitted op (2026-11-25): any kernel shorter than that measures the host.
- device (``time_jax_device`` / ``time_torch_graph``): ``calls`` calls are put into ONE jitted XLA program (JAX)
  or ONE captured CUDA graph (torch) and that is replayed; per-call time = wall time / calls. That is the
  kernels' time on the GPU back to back, as inside a jitted model step, which is what a kernel is judged by.
Inputs are rotated over several copies (``rotation_count``) so repeated calls do not just hit the L2 cache.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time


def time_jax(fn, arg_sets, *, warmup=5, iters=50, repeats=7):
    """Median seconds per call of ``fn(*args)`` cycling over ``arg_sets`` (a list of argument tuples)."""
    import jax

    for i in range(warmup):
        jax.block_until_ready(fn(*arg_sets[i % len(arg_sets)]))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for i in range(iters):
            out = fn(*arg_sets[i % len(arg_sets)])
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / iters)
    return statistics.median(samples)


def time_torch(fn, arg_sets, *, warmup=5, iters=50, repeats=7):
    """Median seconds per call of a torch CUDA function, timed with CUDA events."""
    import torch

    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    torch.cuda.synchronize()
    sets = itertools.cycle(arg_sets)
    return _event_median(lambda: fn(*next(sets)), iters, iters, repeats)


def _event_median(run_once, runs: int, calls: int, repeats: int):
    """Median seconds per call over ``repeats`` CUDA-event-timed samples of ``runs`` back-to-back ``run_once()``
    covering ``calls`` calls."""
    import torch

    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(runs):
            run_once()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples)


def rotation_count(bytes_per_set: int, l2_bytes: int = 50 * 2**20) -> int:
    """How many input copies to rotate so that the working set exceeds L2 (H100: 50 MB), at most 8."""
    return max(1, min(8, -(-2 * l2_bytes // max(bytes_per_set, 1))))


def _calls_for(seconds_per_call: float, target_s: float, max_calls: int) -> int:
    return int(min(max_calls, max(2, math.ceil(target_s / max(seconds_per_call, 1e-7)))))


def time_jax_device(fn, arg_sets, *, calls=None, repeats=5, inner=2, target_s=2e-3, max_calls=32):
    """Median seconds per call of ``fn(*args)`` with ``calls`` calls (cycling over ``arg_sets``) unrolled in one
    jitted program, so one host dispatch covers ``calls`` kernels. ``calls`` defaults to enough calls for
    ``target_s`` of work by a quick wall-clock estimate (at most ``max_calls``)."""
    import jax

    if calls is None:
        calls = _calls_for(time_jax(fn, arg_sets, warmup=2, iters=10, repeats=3), target_s, max_calls)
    sets = [arg_sets[i % len(arg_sets)] for i in range(calls)]
    batched = jax.jit(lambda sets: [fn(*s) for s in sets])
    return time_batched(batched, sets, calls, repeats=repeats, inner=inner)


def time_batched(compiled, args, calls, *, repeats=5, inner=2):
    """Median seconds per call of a jitted program ``compiled(args)`` that performs ``calls`` calls: one warm-up,
    then ``repeats`` samples of ``inner`` back-to-back dispatches each."""
    import jax

    jax.block_until_ready(compiled(args))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(inner):
            out = compiled(args)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / (inner * calls))
    return statistics.median(samples)


def time_torch_graph(fn, arg_sets, *, calls=None, repeats=5, inner=2, target_s=2e-3, max_calls=32):
    """Median seconds per call of a torch CUDA function: ``calls`` calls captured in one CUDA graph, replayed and
    timed with CUDA events (falls back to ``time_torch`` where capture fails)."""
    import torch

    if calls is None:
        calls = _calls_for(time_torch(fn, arg_sets, warmup=2, iters=10, repeats=3), target_s, max_calls)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for i in range(3):
            fn(*arg_sets[i % len(arg_sets)])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(*arg_sets[i % len(arg_sets)])
    except Exception:
        torch.cuda.synchronize()
        return time_torch(fn, arg_sets)
    graph.replay()
    torch.cuda.synchronize()
    return _event_median(graph.replay, inner, inner * calls, repeats)


def profile_kernels(fn, arg_sets, *, runs=2):
    """GPU kernel time per call from a profiler trace: ``fn`` is called on every input set in one jitted program,
    the program runs ``runs`` times under ``jax.profiler.trace`` and the durations of the kernels on the GPU's
    streams are summed. Returns (seconds per call, [(kernel name, us per call, launches per call)] of the top 6).
    Unlike wall-clock timing this excludes launch gaps and host time (on the lent VM a launch costs more than a
    decode kernel runs), so it is the kernels' own time."""
    import glob
    import gzip
    import json
    import shutil
    import tempfile

    import jax

    many = jax.jit(lambda sets: [fn(*s) for s in sets])
    jax.block_until_ready(many(arg_sets))
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
            entry = kernels.setdefault(e["name"][:60], [0.0, 0])
            entry[0] += e["dur"]
            entry[1] += 1
        calls = runs * len(arg_sets)
        total_us = sum(v[0] for v in kernels.values()) / calls
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:6]
        return total_us * 1e-6, [(name, round(v[0] / calls, 2), round(v[1] / calls, 2)) for name, v in top]
    finally:
        shutil.rmtree(d, ignore_errors=True)
