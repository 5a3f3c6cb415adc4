"""MXFP4 results table (issue 7) in device time, in one device call: (A) pick the Pallas config of each shape class
from a few candidates, (B) time every shape against XLA bf16 dense, the XLA emulation and jax.nn.scaled_matmul,
and write the ``impl="auto"`` entries.

Usage (repo root, on the device): PYTHONPATH=. python benchmarks/table_mxfp4.py --out DIR [--budget-s 270]

Why device time: on the lent machine a jitted call costs ~15-90 us of host time beyond its kernels (measured: XLA
bf16 M=16 45.8 us of kernels, 61 us wall per call even with calls queued back to back), which would hide a 20 us
kernel. Each case runs twice on a few distinct input sets (working set > 50 MB L2) inside a profiler trace; its
time is the sum of the GPU kernels inside its annotation window divided by the number of GEMMs. Wall time per call
(host included) is reported beside it for the Pallas and dense rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import glob
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from quark_jax import quant  # noqa: E402
from quark_jax.kernels._dispatch import shape_class  # noqa: E402
from quark_jax.kernels.mxfp4_mm import configs  # noqa: E402
from quark_jax.kernels.mxfp4_mm.pallas_triton import mxfp4_mm_pallas  # noqa: E402
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla  # noqa: E402
from gemm_mxfp4 import make_data  # noqa: E402

C = configs.Config
MS = (1, 16, 64, 256, 2048, 8192)
SHAPES = ((4096, 14336), (8192, 8192), (14336, 4096), (4096, 4096))
T0 = time.time()


def dense(x, w):
    return lax.dot_general(x, w, (((1,), (1,)), ((), ())))  # bf16 out, f32 accumulation (one cuBLAS call)


def scaled_mm(xv, xs, wv, ws):
    return jax.nn.scaled_matmul(xv, wv, xs, ws, preferred_element_type=jnp.bfloat16)


def sm_operands(packed, scales):
    ones = jnp.full(scales.shape, 127, jnp.uint8)
    vals = quant.dequantize_mxfp4(packed, ones, jnp.float32).astype(jnp.float4_e2m1fn)
    return vals[None], lax.bitcast_convert_type(scales, jnp.float8_e8m0fnu)[None]


def n_sets(bytes_per_set: int) -> int:
    return int(max(1, min(12, -(-100 * 2**20 // bytes_per_set))))


class DeviceTimer:
    """Collects jitted cases (compiled on add), then runs them all inside one profiler trace."""

    def __init__(self):
        self.jobs = []

    def add(self, key, fn, sets):
        many = jax.jit(lambda s: [fn(*a) for a in s])
        t0 = time.perf_counter()
        jax.block_until_ready(many(sets))  # compile + warm up
        build = time.perf_counter() - t0
        self.jobs.append((key, many, sets))
        return build

    def run(self, wall_keys=()):
        d = tempfile.mkdtemp()
        out, wall = {}, {}
        try:
            with jax.profiler.trace(d, create_perfetto_trace=True):
                for key, many, sets in self.jobs:
                    with jax.profiler.TraceAnnotation(f"case#{key}"):
                        for _ in range(2):
                            jax.block_until_ready(many(sets))
            for key, many, sets in self.jobs:
                if key in wall_keys:
                    t0 = time.perf_counter()
                    outs = [many(sets) for _ in range(3)]
                    jax.block_until_ready(outs)
                    wall[key] = (time.perf_counter() - t0) / (3 * len(sets))
            path = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
            path = path or glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
            ev = json.load(gzip.open(path[0]))
            ev = ev["traceEvents"] if isinstance(ev, dict) else ev
            pname = {e["pid"]: e["args"]["name"] for e in ev if e.get("ph") == "M" and e.get("name") == "process_name"}
            tname = {(e["pid"], e.get("tid")): e["args"]["name"] for e in ev
                     if e.get("ph") == "M" and e.get("name") == "thread_name"}
            windows = {e["name"][5:]: (e["ts"], e["ts"] + e["dur"]) for e in ev
                       if e.get("ph") == "X" and str(e.get("name", "")).startswith("case#")}
            kernels = sorted((e["ts"], e["dur"], e["name"]) for e in ev if e.get("ph") == "X"
                             and "GPU" in pname.get(e["pid"], "") and "Stream" in tname.get((e["pid"], e.get("tid")),
                                                                                             ""))
            for key, many, sets in self.jobs:
                lo, hi = windows[str(key)]
                ks = [(dur, name) for ts, dur, name in kernels if lo <= ts <= hi]
                names = {}
                for dur, name in ks:
                    names[name[:40]] = names.get(name[:40], 0.0) + dur / (2 * len(sets))
                out[key] = (sum(dur for dur, _ in ks) * 1e-6 / (2 * len(sets)), names)
        finally:
            shutil.rmtree(d, ignore_errors=True)
            self.jobs = []
        return out, wall


def cfg_name(c):
    d = {"asm": "a", "asm_scaled": "as", "jnp": "j"}[c.decode]
    return (f"{c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} w{c.num_warps} st{c.num_stages} {d}{c.pack} "
            f"{'W' if c.w_major else 'X'} g{c.group_m}")


# ------------------------------------------------------------------------------------------------ phase A
CANDIDATES = {
    "decode": [C(block_m=16, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=6),
               C(block_m=16, block_n=64, block_k=256, split_k=2, num_warps=4, num_stages=3),
               C(block_m=16, block_n=64, block_k=256, split_k=2, num_warps=4, num_stages=4),
               C(block_m=16, block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=4),
               C(block_m=16, block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=3),
               C(block_m=16, block_n=64, block_k=512, split_k=1, num_warps=4, num_stages=3),
               C(block_m=16, block_n=32, block_k=256, split_k=1, num_warps=2, num_stages=6),
               C(block_m=16, block_n=32, block_k=512, split_k=2, num_warps=2, num_stages=4),
               C(block_m=16, block_n=128, block_k=256, split_k=4, num_warps=8, num_stages=4),
               C(block_m=16, block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=3),
               C(block_m=16, block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=6)],
    "small": [C(block_m=64, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=4),
              C(block_m=64, block_n=64, block_k=256, split_k=1, num_warps=4, num_stages=3),
              C(block_m=64, block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=4),
              C(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=3, w_major=False, pack=4)],
    "medium": [C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3),
               C(block_m=128, block_n=128, block_k=128, num_warps=4, num_stages=3),
               C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3, decode="asm_scaled", group_m=4),
               C(block_m=128, block_n=64, block_k=256, num_warps=4, num_stages=3)],
    "prefill": [C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3),
                C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3, group_m=4),
                C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3, decode="asm_scaled", group_m=4),
                C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3, decode="asm_scaled"),
                C(block_m=512, block_n=64, block_k=128, num_warps=8, num_stages=3)],
}
PICK_MS = {"decode": (16, 1), "small": (64,), "medium": (256,), "prefill": (2048,)}


def phase_a(log):
    k, n = 4096, 14336
    chosen = {}
    timer = DeviceTimer()
    data = {}
    for cls, ms in PICK_MS.items():
        for m in ms:
            xs, ws = make_data(m, k, n, 3, seed=m)
            data[m] = [(x, p, s) for x, (p, s) in zip(xs, ws)]
            for i, cfg in enumerate(CANDIDATES[cls]):
                cfg = configs.fit(cfg, m, k, n)
                fn = functools.partial(mxfp4_mm_pallas, quantize_input=True, config=cfg)
                try:
                    timer.add((cls, m, i), lambda x, p, s, fn=fn: fn(x, p, s), data[m])
                except Exception as e:
                    log(dict(phase="A", cls=cls, m=m, cfg=cfg_name(cfg), error=repr(e)[:200]))
    times, _ = timer.run()
    for cls, ms in PICK_MS.items():
        score = {}
        for (c, m, i), (t, names) in times.items():
            if c != cls:
                continue
            score[i] = score.get(i, 0.0) + t
            log(dict(phase="A", cls=cls, m=m, cfg=cfg_name(CANDIDATES[cls][i]), us=round(t * 1e6, 2),
                     kernels={k_: round(v, 2) for k_, v in names.items()}))
        best = min(score, key=score.get)
        chosen[cls] = CANDIDATES[cls][best]
        log(dict(phase="A", cls=cls, chosen=cfg_name(chosen[cls])))
    return chosen


# ------------------------------------------------------------------------------------------------ phase B
def phase_b(chosen, log, budget_s):
    rows = []
    for k, n in SHAPES:
        if time.time() - T0 > budget_s:
            log(dict(phase="B", skipped=(k, n), reason="time budget"))
            continue
        timer = DeviceTimer()
        meta = {}
        wb = n * k // 2 + n * k // 32
        for m in MS:
            if time.time() - T0 > budget_s:
                break
            sets = n_sets(wb)
            dsets = n_sets(2 * n * k)
            xs, ws = make_data(m, k, n, max(sets, dsets), seed=m + k)
            mx = [(x, p, s) for x, (p, s) in zip(xs[:sets], ws[:sets])]
            cfg = configs.fit(chosen[shape_class(m)], m, k, n, target_programs=224)
            flops = 2.0 * m * n * k
            act = 2 * m * k + 2 * m * n
            cases = [("xla_bf16_dense", dense,
                      [(x, quant.dequantize_mxfp4(p, s, jnp.bfloat16)) for x, (p, s) in zip(xs[:dsets], ws)],
                      2 * n * k + act, None),
                     ("xla_emulation_w4a4", functools.partial(mxfp4_mm_xla, quantize_input=True), mx, wb + act,
                      "xla"),
                     ("pallas_w4a4", functools.partial(mxfp4_mm_pallas, quantize_input=True, config=cfg), mx,
                      wb + act, "pallas")]
            if m <= 16:
                cases.append(("pallas_w4a16", functools.partial(mxfp4_mm_pallas, quantize_input=False, config=cfg),
                              mx, wb + act, None))
            try:
                quantize = jax.jit(quant.quantize_mxfp4)
                sm = []
                for x, p, s in mx:
                    xp, xsc = quantize(x)
                    sm.append((*sm_operands(xp, xsc), *sm_operands(p, s)))
                cases.append(("jax_nn_scaled_matmul", scaled_mm, sm, wb + act, None))
            except Exception as e:
                log(dict(phase="B", m=m, k=k, n=n, impl="jax_nn_scaled_matmul", error=repr(e)[:200]))
            for name, fn, args, nbytes, auto in cases:
                try:
                    build = timer.add((m, name), lambda *a, fn=fn: fn(*a), args)
                    meta[(m, name)] = (flops, nbytes, auto, cfg_name(cfg) if "pallas" in name else "", build)
                except Exception as e:
                    log(dict(phase="B", m=m, k=k, n=n, impl=name, error=repr(e)[:200]))
        wall_keys = {key for key in meta if key[1] in ("xla_bf16_dense", "pallas_w4a4")}
        times, wall = timer.run(wall_keys)
        for m in MS:
            base = times.get((m, "xla_bf16_dense"), (float("nan"),))[0]
            for (mm, name), (t, names) in times.items():
                if mm != m:
                    continue
                flops, nbytes, auto, cfgn, build = meta[(mm, name)]
                t = t or float("nan")  # no GPU kernels seen (a CPU run): reported as nan
                row = dict(op="mxfp4", m=m, k=k, n=n, impl=name, seconds=t, tflops=flops / t / 1e12,
                           gbps=nbytes / t / 1e9, vs_baseline=base / t, auto=auto, config=cfgn,
                           wall_us=round(wall[(mm, name)] * 1e6, 1) if (mm, name) in wall else None,
                           kernels={k_: round(v, 2) for k_, v in names.items()}, build_s=round(build, 1))
                rows.append(row)
                log(row)
    return rows


def markdown(rows, device, stamp):
    lines = [f"Device time per GEMM (profiler), {device}, {stamp}. x bf16 [M, K]; weights [N, K]; "
             "MXFP4 = 4.25 bits/param. `x` = speed-up over XLA bf16 dense.", "",
             "| M | K | N | bf16 dense | XLA emulation W4A4 | jax.nn.scaled_matmul | Pallas W4A4 | Pallas W4A16 | "
             "Pallas config |", "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault((r["k"], r["n"], r["m"]), {})[r["impl"]] = r

    def cell(d, key):
        r = d.get(key)
        if not r:
            return "-"
        return f"{r['seconds'] * 1e6:.1f} us (x{r['vs_baseline']:.2f})"

    for (k, n, m), d in sorted(by.items()):
        cfg = d.get("pallas_w4a4", {}).get("config", "")
        lines.append(f"| {m} | {k} | {n} | {cell(d, 'xla_bf16_dense')} | {cell(d, 'xla_emulation_w4a4')} | "
                     f"{cell(d, 'jax_nn_scaled_matmul')} | {cell(d, 'pallas_w4a4')} | {cell(d, 'pallas_w4a16')} | "
                     f"`{cfg}` |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--budget-s", type=float, default=270)
    p.add_argument("--skip-a", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    device = jax.devices()[0].device_kind
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    logf = open(out / "table_log.jsonl", "w")

    def log(d):
        d = {k: v for k, v in d.items()}
        d["t"] = round(time.time() - T0, 1)
        line = json.dumps(d, default=str)
        logf.write(line + "\n")
        logf.flush()
        short = {k: v for k, v in d.items() if k not in ("kernels",)}
        print(json.dumps(short, default=str)[:260], flush=True)

    print(f"device: {device}; jax {jax.__version__}; {stamp}", flush=True)
    chosen = dict(configs.DEFAULTS) if a.skip_a else phase_a(log)
    (out / "chosen.json").write_text(json.dumps({k: dataclasses.asdict(v) for k, v in chosen.items()}, indent=1))
    rows = []
    try:
        rows = phase_b(chosen, log, a.budget_s)
    finally:
        (out / "table.json").write_text(json.dumps(dict(device=device, date=stamp, rows=rows), indent=1,
                                                   default=str))
        from bench_gemm import auto_table

        table = auto_table(rows)
        (out / "auto_table.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        md = markdown(rows, device, stamp)
        (out / "table.md").write_text(md + "\n")
        print(md)
        print("auto:", table, flush=True)


if __name__ == "__main__":
    main()
