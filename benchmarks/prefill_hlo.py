"""What each heavy kernel of a prefill is: the 8B-shaped model built in memory (``decode_fusion.build``), the
prefill program compiled, profiled once, and each of the top kernels by GPU time matched to its fusion in the
optimized HLO (the fused computation's text, shortened), so that a profile line like ``loop_multiply_fusion_31``
says which ops it runs.

    PYTHONPATH=. python benchmarks/prefill_hlo.py --scheme fp8 --prompt 2048 --out $OUT/prefill_fp8.json
    (add ``--fp8-epilogue cublaslt --clamp-first 1`` to run the FP8 GEMM epilogue / quantize-clamp switches on)

Writes JSON: per top kernel its total us, launches, and the HLO of its fusion (first ``--chars`` characters); the
whole optimized HLO text goes to ``--hlo`` when given.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def fusion_bodies(hlo: str) -> dict:
    """name -> text of each fusion instruction's called computation in optimized HLO text."""
    comps, cur, lines = {}, None, []
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if m:
            cur, lines = m.group(1), [line]
            continue
        if cur is not None:
            lines.append(line)
            if line.startswith("}"):
                comps[cur] = "\n".join(lines)
                cur = None
    out = {}
    for m in re.finditer(r"%?([\w.\-]+) = [^\n]*? fusion\([^\n]*?calls=%?([\w.\-]+)", hlo):
        out[m.group(1)] = comps.get(m.group(2), "")
    for m in re.finditer(r"%?([\w.\-]+) = [^\n]*? custom-call\([^\n]*", hlo):
        out.setdefault(m.group(1), m.group(0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheme", default="fp8", choices=("bf16", "fp8", "int8"))
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--shape", default="8b", choices=("8b", "tiny"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--chars", type=int, default=1500)
    ap.add_argument("--hlo", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fp8-epilogue", default=None, choices=("separate", "cublaslt"),
                    help="kernels.fp8_scaled_mm.xla.EPILOGUE for this run (default: the library's)")
    ap.add_argument("--clamp-first", default=None, choices=("0", "1"),
                    help="quant.fp8.CLAMP_FIRST for this run (default: the library's)")
    a = ap.parse_args(argv)
    from quark_jax.kernels.fp8_scaled_mm import xla as fp8_xla
    from quark_jax.quant import fp8 as fp8_quant

    if a.fp8_epilogue is not None:  # read when the prefill is traced, so set before anything is built
        fp8_xla.EPILOGUE = a.fp8_epilogue
    if a.clamp_first is not None:
        fp8_quant.CLAMP_FIRST = a.clamp_first == "1"

    import jax
    from flax import nnx

    from decode_fusion import _args_for, build
    from profile_decode import _gpu_events
    from quark_jax.models import generation as g

    t0 = time.perf_counter()
    model = build(a.shape, a.scheme, abstract=False, max_positions=a.prompt + 256)
    print(f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    graphdef, pre, _ = _args_for(model, batch=1, prompt=a.prompt, cache_len=a.prompt + 128, chunk=8)
    t0 = time.perf_counter()
    treedef = jax.tree_util.tree_structure(nnx.split(model)[1])  # the programs take the state as flat leaves
    compiled = g._Programs(graphdef, treedef).prefill.lower(*pre).compile()
    print(f"prefill compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    hlo = compiled.as_text()
    if a.hlo:  # gzip: the 8B prefill's optimized HLO is tens of MB
        import gzip
        with gzip.open(a.hlo if a.hlo.endswith(".gz") else a.hlo + ".gz", "wt") as f:
            f.write(hlo)
    bodies = fusion_bodies(hlo)
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, size=(1, a.prompt), dtype=np.int32)
    kw = dict(max_cache_len=a.prompt + 128)
    np.asarray(model.generate(ids, 1, **kw))
    t0 = time.perf_counter()
    np.asarray(model.generate(ids, 1, **kw))
    wall = time.perf_counter() - t0
    d = tempfile.mkdtemp(prefix="prefill_hlo_")
    try:
        with jax.profiler.trace(d):
            np.asarray(model.generate(ids, 1, **kw))
        events = _gpu_events(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    per: dict = {}
    for _, dur, name in events:
        t = per.setdefault(name, [0.0, 0])
        t[0] += dur
        t[1] += 1
    top = sorted(per.items(), key=lambda kv: -kv[1][0])[: a.top]
    rows = []
    for name, (us, n) in top:
        # the profiler names a kernel after its HLO instruction with "." turned into "_" (fusion.31 -> fusion_31)
        dotted = re.sub(r"_(\d+)$", r".\1", name)
        body = bodies.get(name) or bodies.get(dotted) or bodies.get(re.sub(r"__\d+$", "", name)) or ""
        rows.append({"kernel": name, "us": round(us, 1), "launches": n, "hlo": body[: a.chars]})
        print(f"{us:10.1f} us {n:4d}x {name}", flush=True)
    out = {"scheme": a.scheme, "prompt": a.prompt, "fp8_epilogue": fp8_xla.EPILOGUE,
           "clamp_first": fp8_quant.CLAMP_FIRST, "device": jax.devices()[0].device_kind, "wall_ms": wall * 1e3,
           "busy_us": sum(d for _, d, _ in events), "kernels": len(events), "top": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "top"}), flush=True)


if __name__ == "__main__":
    main()
