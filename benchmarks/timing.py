"""torch timing for the benchmarks' torch rows (the JAX rows use ``quark_jax.kernels.tuning.tuner.kernel_time``,
GPU kernel time from a profiler trace): ``time_torch_graph`` captures ``calls`` calls in one CUDA graph and times
its replay with CUDA events (per-call time = elapsed / calls), which leaves out host dispatch; ``time_torch``
(one dispatch per call, CUDA events) is its fallback where capture fails.
"""

from __future__ import annotations

import itertools
import math
import statistics


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


def _calls_for(seconds_per_call: float, target_s: float, max_calls: int) -> int:
    return int(min(max_calls, max(2, math.ceil(target_s / max(seconds_per_call, 1e-7)))))


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
