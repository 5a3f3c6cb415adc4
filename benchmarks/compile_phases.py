"""Where the first ``generate`` call's time goes, cold and warm (issue 14 item 2, session 10, helper mxcompile).

Writes a random 8B-shaped checkpoint (``bench_e2e.write_checkpoint``, default MXFP4 W4A4), then runs fresh Python
processes, each loading it and timing its first ``generate`` (prompt 128, 128 new tokens, as ``bench_e2e``):
for each variant, one with an empty persistent compilation cache ("cold") and one more on the cache the cold
one filled ("warm"). Variants:

* ``new``: the library's defaults (since session 10's measurements: no kernel warm-ups, no wait, no
  compiled-thunks option);
* ``base``: session 9's first call (warm-ups at the first ``generate``); ``aot``: warm-ups and cache entries with
  compiled thunks (``models.compile_cache.AOT_COMPILED_THUNKS``; not in jaxlib 0.11.2); ``off``: no warm-ups;
  ``compile``: warm-ups only once the decode compile runs > 1 s; ``par``: the defaults with XLA's parallel LLVM
  module compilation (``xla_gpu_enable_llvm_module_compilation_parallelism``) for the prefill and decode.

Per process, from JAX's own log records (``jax_log_compiles``; times from the start of the call): per program
(``prefill``, ``decode``, the warm-ups' ``_linear_call``) its tracing, MLIR lowering and XLA compile seconds and
when each ended (a cache hit's "compile" is the cache read + deserialization + load), persistent cache
hits / misses / write errors; each warm-up's XLA compile in the pool (start, end: the Mosaic kernel compile
inside it; at "generate" the warm-ups are lowered in the calling thread before it); XLA's
"(re)initializing LLVM" log lines (each is a switch of the LLVM options lock between XLA and Mosaic holders);
the first call and a second call (no compile) in seconds, and a hash of the generated tokens (a warm process must
produce the cold one's tokens). ``--trace VARIANT_PHASE,...`` also records a host profile of those processes'
first call (``jax.profiler``, perfetto JSON) and reports the XLA / Mosaic compile spans by total time (the
profile slows the call: read its times only as shares).

    python benchmarks/compile_phases.py --shape 8b --out compile_phases.json                 # GPU, ~2 min
    python benchmarks/compile_phases.py --shape tiny --scheme mxfp4 --variants new           # CPU smoke run
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_W = "quark_jax.nn.warmup."
_PAR = '"xla_gpu_enable_llvm_module_compilation_parallelism": true'
VARIANTS = {
    "new": [],
    "base": [_W + "DECODE_KERNEL_WARMUP=generate"],
    "aot": [_W + "DECODE_KERNEL_WARMUP=generate", "quark_jax.models.compile_cache.AOT_COMPILED_THUNKS=true"],
    "off": [_W + "DECODE_KERNEL_WARMUP=null"],  # no warm-ups (= new since session 10)
    "compile": [_W + "DECODE_KERNEL_WARMUP=compile"],  # warm-ups only if the decode compile runs > 1 s
    "par": ["quark_jax.models.generation.DECODE_COMPILER_OPTIONS={" + _PAR + "}",
            'quark_jax.models.generation.PREFILL_COMPILER_OPTIONS={"xla_gpu_enable_triton_gemm": false, ' + _PAR + "}"],
}
_RECORD = re.compile(r"Finished (tracing(?: \+ transforming)?|jaxpr to MLIR module conversion|XLA compilation of) "
                     r"(?:jit\()?([\w<>.-]+?)\)?(?: for (?:pjit|jit))? in ([0-9.e-]+) sec")
_PHASE = {"tracing": "trace_s", "tracing + transforming": "trace_s", "jaxpr to MLIR module conversion": "lower_s",
          "XLA compilation of": "compile_s"}
_ABSL_TIME = re.compile(r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+)")


def log(*a):
    print(*a, flush=True)


# --- the child process ------------------------------------------------------------------------------------------

def child(args) -> None:
    import logging

    from benchmarks import knobs

    knobs.apply_sets(args.set)
    import jax
    import numpy as np

    from benchmarks.bench_e2e import prompt
    from quark_jax.models import from_pretrained
    from quark_jax.nn import warmup

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "Finished" in msg or "cache" in msg.lower():
                records.append((record.created, msg[:300]))

    handler = Keep(level=logging.DEBUG)
    for name in ("jax", "py.warnings"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
    logging.getLogger("jax._src.compilation_cache").setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    jax.config.update("jax_log_compiles", True)

    warm_spans = []
    real_compile = warmup._compile

    def timed_compile(*a):  # (fn, args[, lowered]): "generate" lowers in the caller, the pool compiles
        t = time.time()
        real_compile(*a)
        warm_spans.append((t, time.time()))

    warmup._compile = timed_compile
    jax.devices()
    t0 = time.perf_counter()
    model = from_pretrained(args.ckpt, progress=False)
    jax.block_until_ready(jax.tree_util.tree_leaves(__import__("flax").nnx.state(model)))
    load_s = time.perf_counter() - t0
    ids = prompt(1, args.prompt, model.config.vocab_size)
    trace_dir = None
    if args.child_trace:
        trace_dir = tempfile.mkdtemp(prefix="compile_phases_trace_")
        opts = jax.profiler.ProfileOptions()
        opts.python_tracer_level = 0  # C++ spans only (XLA, Mosaic); Python frames would fill the buffer
        opts.host_tracer_level = 2
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True, profiler_options=opts)
    start = time.time()
    t0 = time.perf_counter()
    out = np.asarray(model.generate(ids, args.new_tokens, max_cache_len=args.prompt + args.new_tokens))
    first = time.perf_counter() - t0
    if trace_dir:
        jax.profiler.stop_trace()
    t0 = time.perf_counter()
    np.asarray(model.generate(ids, args.new_tokens, max_cache_len=args.prompt + args.new_tokens))
    second = time.perf_counter() - t0

    programs: dict = {}
    events = []
    for created, msg in records:
        rel = round(created - start, 3)
        m = _RECORD.search(msg)
        if m and rel > -0.5:
            kind, name, secs = m.group(1), m.group(2), float(m.group(3))
            p = programs.setdefault(name, {})
            key = _PHASE[kind]
            p[key] = round(p.get(key, 0.0) + secs, 3)
            p[key.replace("_s", "_end_at")] = rel
            p["count_" + key[:-2]] = p.get("count_" + key[:-2], 0) + 1
        elif rel > -0.5 and ("error" in msg.lower() or (
                any(n in msg for n in ("prefill", "decode", "_linear_call")) and "Not writing" not in msg)):
            events.append((rel, msg[:240]))
    result = dict(
        load_s=round(load_s, 3), first_call_s=round(first, 3), second_call_s=round(second, 3),
        start_epoch=start, tokens_sha=hashlib.sha256(out.tobytes()).hexdigest()[:16],
        programs={k: v for k, v in programs.items() if k in ("prefill", "decode", "_linear_call")
                  or v.get("compile_s", 0) > 0.2},
        warmups=[(round(a - start, 3), round(b - start, 3)) for a, b in warm_spans],
        cache_events=events[:40],
        options=dict(aot=__import__("quark_jax.models.compile_cache", fromlist=["x"]).cache_compiler_options(),
                     warmup_point=warmup.DECODE_KERNEL_WARMUP))
    if trace_dir:
        result["profile"] = summarize_trace(trace_dir, start)
    print("RESULT " + json.dumps(result), flush=True)


def summarize_trace(trace_dir: str, start: float) -> dict:
    """Span names by total time (top 25), and the Mosaic ``Compile`` / XLA load spans one by one (start, seconds),
    from the perfetto JSON ``jax.profiler`` wrote."""
    files = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"))
    if not files:
        return {"error": "no perfetto_trace.json.gz"}
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    ev = [e for e in (data["traceEvents"] if isinstance(data, dict) else data) if e.get("ph") == "X"]
    if not ev:
        return {"error": "no complete events"}
    t_min = min(e["ts"] for e in ev)
    total: dict = {}
    for e in ev:
        total[e["name"]] = total.get(e["name"], 0.0) + e.get("dur", 0) / 1e6
    top = sorted(total.items(), key=lambda kv: -kv[1])[:25]
    watch = ("Compile", "LoadExecutableFromAotResult", "CreateGpuExecutable", "ResultFromProto",
             "backend_compile_and_load")  # "Compile": jaxlib's Mosaic GPU kernel compile
    prefixes = ("GpuCompiler", "NVPTXCompiler", "ThunkEmitter", "Load", "Deserialize", "HLO passes", "Compiling IR",
                "PjRtStreamExecutor", "StreamExecutorGpuClient", "Triton", "ptxas", "Autotun")
    spans = [(e["name"][:80], round((e["ts"] - t_min) / 1e6, 3), round(e.get("dur", 0) / 1e6, 3)) for e in ev
             if e["name"] in watch or e["name"].startswith(prefixes)]
    spans.sort(key=lambda s: -s[2])
    mosaic = sorted(s[1:] for s in spans if s[0] == "Compile")
    return {"top_total_s": [(n[:80], round(s, 3)) for n, s in top], "spans": spans[:40],
            "mosaic_compiles": {"count": len(mosaic), "start_and_s": mosaic[:40]}, "events": len(ev),
            "note": "times from the first recorded event (the profile started just before the call)"}


# --- the parent -------------------------------------------------------------------------------------------------

def llvm_switches(stderr: str, start_epoch: float) -> list:
    """Seconds (from the call's start) of XLA's "(re)initializing LLVM" log lines in a child's stderr."""
    lt = time.localtime(start_epoch)
    midnight = start_epoch - (lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (start_epoch % 1))
    out = []
    for line in stderr.splitlines():
        if "initializing LLVM" not in line:
            continue
        m = _ABSL_TIME.match(line)
        if m:
            out.append(round(midnight + int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
                             - start_epoch, 3))
        else:
            out.append(None)
    return out


def run_child(ckpt: Path, cache: Path, sets: list, args, trace: bool, timeout: float) -> dict:
    env = dict(os.environ, QUARK_JAX_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="0", PYTHONPATH=str(ROOT))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--ckpt", str(ckpt), "--prompt",
           str(args.prompt), "--new-tokens", str(args.new_tokens)] + [a for s in sets for a in ("--set", s)]
    if trace:
        cmd.append("--child-trace")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "process_s": time.perf_counter() - t0}
    out = {"process_s": round(time.perf_counter() - t0, 2)}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    if "start_epoch" in out:
        sw = llvm_switches(p.stderr, out["start_epoch"])
        out["llvm_option_switches"] = {"count": len(sw), "at_s": sw[:60]}
    if p.returncode or "first_call_s" not in out:
        out["error"] = (p.stderr or p.stdout)[-2000:]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8b")
    ap.add_argument("--scheme", default="mxfp4")
    ap.add_argument("--variants", default="new,base", help=f"comma list of {sorted(VARIANTS)}, run in this order")
    ap.add_argument("--trace", default="", help="VARIANT_PHASE list to profile, e.g. base_cold,base_warm")
    ap.add_argument("--set", action="append", default=[], metavar="module.ATTR=value",
                    help="passed to every process (benchmarks/knobs.py), before the variant's own")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--budget", type=float, default=140.0, help="seconds; a process that would start later "
                    "than budget - 10 s is skipped, each is cut at what is left")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return {}
    from benchmarks.bench_e2e import model_config  # noqa: F401  (checks the shape name early)

    if args.shape == "tiny":
        args.prompt, args.new_tokens = min(args.prompt, 16), min(args.new_tokens, 8)
    t_start = time.perf_counter()
    base = Path(args.dir or tempfile.mkdtemp(prefix="compile_phases_"))
    ckpt = base / f"{args.shape}_{args.scheme}"
    results = {"shape": args.shape, "scheme": args.scheme, "set": args.set, "date": time.strftime("%Y-%m-%d %H:%M"),
               "runs": {}}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))

    write = (f"from benchmarks.bench_e2e import write_checkpoint; from pathlib import Path; import json; "
             f"print('BYTES', write_checkpoint(Path({str(ckpt)!r}), {args.shape!r}, {args.scheme!r}, "
             f"max_positions=max(256, {args.prompt + args.new_tokens})))")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", write], capture_output=True, text=True, cwd=str(ROOT),
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if p.returncode:
        results["error"] = "writing the checkpoint: " + p.stderr[-1500:]
        save()
        log(results["error"])
        return results
    results["write_s"] = round(time.perf_counter() - t0, 2)
    log(f"wrote {ckpt} in {results['write_s']} s")
    trace = set(filter(None, args.trace.split(",")))
    try:
        for variant in filter(None, args.variants.split(",")):
            cache = base / f"cache_{variant}"
            for phase in ("cold", "warm"):
                left = args.budget - (time.perf_counter() - t_start)
                if left < 10:
                    results["runs"][f"{variant}_{phase}"] = {"skipped": "budget"}
                    log(f"{variant}_{phase}: skipped (budget)")
                    continue
                r = run_child(ckpt, cache, args.set + VARIANTS[variant], args, f"{variant}_{phase}" in trace,
                              left)
                results["runs"][f"{variant}_{phase}"] = r
                save()
                brief = {k: r.get(k) for k in ("first_call_s", "second_call_s", "load_s", "tokens_sha", "error")}
                brief["programs"] = {n: {k: v for k, v in p.items() if k.endswith(("_s", "end_at"))}
                                     for n, p in r.get("programs", {}).items()}
                brief["warmups"] = r.get("warmups")
                brief["llvm_switches"] = r.get("llvm_option_switches", {}).get("count")
                log(f"{variant}_{phase}: " + json.dumps(brief)[:1500])
    finally:
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
    runs = results["runs"]
    shas = {k: v.get("tokens_sha") for k, v in runs.items() if v.get("tokens_sha")}
    results["same_tokens"] = len(set(shas.values())) <= 1
    log(f"same tokens in every process: {results['same_tokens']} {shas}")
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    return results


if __name__ == "__main__":
    main()
