"""Device timing for benchmarks: many back-to-back calls after warm-up, median of several repeats.

JAX: a jitted function is called ``iters`` times back to back and synchronized once (block_until_ready) per
repeat; the per-call time is the repeat's wall time / iters, reported as the median over repeats. Inputs are
rotated over ``rotate`` copies so repeated calls do not just hit the L2 cache. torch: CUDA events likewise.
"""

from __future__ import annotations

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
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(iters):
            fn(*arg_sets[i % len(arg_sets)])
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(samples)


def rotation_count(bytes_per_set: int, l2_bytes: int = 50 * 2**20) -> int:
    """How many input copies to rotate so that the working set exceeds L2 (H100: 50 MB), at most 8."""
    return max(1, min(8, -(-2 * l2_bytes // max(bytes_per_set, 1))))
