"""Profile decode steps of a quark_jax model from a ``jax.profiler`` trace: kernels launched per step, GPU busy
time, the gaps between kernels, and time per op class (GEMM, attention, norm/elementwise fusions, copies, ...).

    python benchmarks/profile_decode.py CHECKPOINT_DIR --batch 1 --prompt 128 --steps 8 [--out profile.json]

:func:`profile_decode` works on a loaded model (``bench_e2e --profile`` calls it). It runs ``generate`` with a
chunk of ``steps`` decode steps under the profiler (after a compile run) and reads the trace's GPU-stream events
inside the decode program (the prefill is excluded by time: only kernels after the first decode kernel count).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASSES = (  # (class, regex over the kernel name), first match wins
    ("attention_fused", r"(?i)sdpa|flash|fmha|fprop|cudnn"),
    ("gemm_pallas", r"(?i)mxfp4|scaled_mm|pallas|triton_.*(dot|mm)|_matmul_kernel|mosaic"),
    ("gemm_cublas", r"(?i)gemm|gemv|cutlass|sm90_xmma|cublas|nvjet|splitk|dot"),
    ("sort_sample", r"(?i)sort|topk|radix|argmax|threefry|random"),
    ("copy_memset", r"(?i)memcpy|memset|copy|dynamic_update_slice"),
    ("reduce_fusion", r"(?i)reduce|softmax|norm"),
    ("fusion", r"(?i)fusion|loop_|input_|concatenate|convert|multiply|add|select"),
)


def classify(name: str) -> str:
    for cls, rx in CLASSES:
        if re.search(rx, name):
            return cls
    return "other"


def _gpu_events(trace_dir: str):
    paths = (glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
             + glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True))
    events = json.load(gzip.open(paths[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    pname = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    tname = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    out = []
    for e in events:
        if e.get("ph") != "X" or "GPU" not in pname.get(e["pid"], "") and "/device" not in pname.get(e["pid"], ""):
            continue
        if "Stream" not in tname.get((e["pid"], e.get("tid")), "") and "stream" not in tname.get(
                (e["pid"], e.get("tid")), "").lower():
            continue
        out.append((float(e["ts"]), float(e["dur"]), e["name"]))
    return sorted(out)


def summarize(kernels, steps: int) -> dict:
    """Per-step figures from sorted (start us, duration us, name) GPU events of ``steps`` decode steps."""
    if not kernels:
        return {"error": "no GPU kernel events in the trace"}
    start, end = kernels[0][0], max(t + d for t, d, _ in kernels)
    busy = sum(d for _, d, _ in kernels)
    gaps, last_end = [], kernels[0][0]
    for t, d, _ in kernels:
        if t > last_end:
            gaps.append(t - last_end)
        last_end = max(last_end, t + d)
    by_class, by_name = {}, {}
    for _, d, n in kernels:
        c = by_class.setdefault(classify(n), [0.0, 0])
        c[0] += d
        c[1] += 1
        k = by_name.setdefault(n[:80], [0.0, 0])
        k[0] += d
        k[1] += 1
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:15]
    return {
        "steps": steps,
        "kernels_per_step": len(kernels) / steps,
        "span_us_per_step": (end - start) / steps,
        "busy_us_per_step": busy / steps,
        "gap_us_per_step": sum(gaps) / steps,
        "gaps_over_5us_per_step": sum(1 for g in gaps if g > 5) / steps,
        "by_class": {c: {"us_per_step": v[0] / steps, "kernels_per_step": v[1] / steps}
                     for c, v in sorted(by_class.items(), key=lambda kv: -kv[1][0])},
        "top": [(n, round(v[0] / steps, 2), round(v[1] / steps, 2)) for n, v in top],
    }


def profile_decode(model, *, batch: int = 1, prompt_len: int = 128, max_cache_len: int | None = None,
                   steps: int = 8, chunk_size: int | None = None, trace_dir: str | None = None) -> dict:
    """Profile ``steps`` decode steps of ``model`` (in chunks of ``chunk_size``, default one chunk) and summarize
    them per step."""
    import jax

    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, size=(batch, prompt_len), dtype=np.int32)
    n = steps + 1  # the first token comes from the prefill
    kw = dict(max_cache_len=max_cache_len or prompt_len + 128, chunk_size=chunk_size or steps)
    np.asarray(model.generate(ids, n, **kw))  # compile
    prefill_only = np.asarray(model.generate(ids, 1, **kw))  # compile the prefill-only path too
    del prefill_only
    d = trace_dir or tempfile.mkdtemp(prefix="profile_decode_")
    try:
        # two traces would need two sessions; instead: the prefill alone, then prefill + decode, in one trace,
        # separated by a marker sleep so the decode kernels are the ones after the gap
        with jax.profiler.trace(d, create_perfetto_trace=True):
            np.asarray(model.generate(ids, 1, **kw))
            marker = _sleep_marker()
            np.asarray(model.generate(ids, n, **kw))
        events = _gpu_events(d)
    finally:
        if trace_dir is None:
            shutil.rmtree(d, ignore_errors=True)
    # the events after the marker gap: prefill (same kernel count as the prefill-only run) then the decode chunk
    cut = _after_largest_gap(events)
    second = events[cut:]
    n_prefill = cut  # the first run was the prefill alone
    decode = second[n_prefill:]
    out = summarize(decode, steps)
    out.update(prefill_kernels=n_prefill, marker_s=marker, batch=batch, prompt_len=prompt_len)
    return out


def profile_prefill(model, *, batch: int = 1, prompt_len: int = 2048, max_cache_len: int | None = None) -> dict:
    """Profile one prefill (``generate`` of one token, compiled first) and summarize its kernels."""
    import jax

    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, size=(batch, prompt_len), dtype=np.int32)
    kw = dict(max_cache_len=max_cache_len or prompt_len + 128)
    np.asarray(model.generate(ids, 1, **kw))
    d = tempfile.mkdtemp(prefix="profile_prefill_")
    try:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            np.asarray(model.generate(ids, 1, **kw))
        events = _gpu_events(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = summarize(events, 1)
    out.update(batch=batch, prompt_len=prompt_len)
    return out


def _sleep_marker() -> float:
    import time

    time.sleep(0.05)
    return 0.05


def _after_largest_gap(events) -> int:
    best, idx, last_end = -1.0, 0, None
    for i, (t, d, _) in enumerate(events):
        if last_end is not None and t - last_end > best:
            best, idx = t - last_end, i
        last_end = t + d if last_end is None else max(last_end, t + d)
    return idx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from quark_jax.models import from_pretrained

    model = from_pretrained(args.checkpoint)
    res = profile_decode(model, batch=args.batch, prompt_len=args.prompt, steps=args.steps)
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
