"""One device run for the INT8 kernel: correctness + config sweep, then the full benchmark with the tuned configs.

Usage (device, repo root): PYTHONPATH=. python benchmarks/int8_device_run.py --out DIR [--sweep-s 125]

1. ``int8_sweep``: GPU correctness of every kernel family, then candidate configs timed against XLA int8 / bf16
   on the sweep shapes (decode, medium, prefill), stopping new shapes after ``--sweep-s`` seconds.
2. The fastest correct config per swept shape becomes the tuned entry for its (M bucket, K, N); the benchmark's
   other (K, N) take the winner of the swept shape with the nearest N (``block_config.transfer``). Written to
   DIR/tuned_configs.json (to be committed into block_config.TUNED) and used in-process.
3. A provisional ``impl="auto"`` table from the sweep (so the benchmark's ``auto`` row dispatches through a table),
   then ``bench_gemm.py --ops int8 --write-table`` over all shapes, with every case compiled up front in parallel
   threads. The final table (from the full benchmark) and its JSON land in DIR.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402

import bench_gemm  # noqa: E402
import gemm_int8  # noqa: E402
import int8_sweep as sw  # noqa: E402

from quark_jax.kernels import _dispatch  # noqa: E402
from quark_jax.kernels.int8_scaled_mm import block_config  # noqa: E402

BENCH_M = (1, 16, 64, 256, 2048, 8192)
BENCH_KN = ((4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192))


def winners(results):
    """(m, k, n) -> (best correct pallas row, xla_int8 us) from the sweep rows."""
    best = {}
    for r in results:
        if r.get("kind") != "sweep" or r["name"] == "xla_int8" or not r.get("ok"):
            continue
        key = (r["m"], r["k"], r["n"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    return best


def tuned_table(best, cfg_by_name):
    """(bucket, k, n) -> (Config, source shape) for every benchmark shape."""
    table = {}
    for (m, k, n), row in best.items():
        table[(block_config.m_bucket(m), k, n)] = (cfg_by_name[row["name"]], (m, k, n))
    for bucket in sorted({block_config.m_bucket(m) for m in BENCH_M}):
        sources = [(key, v) for key, v in table.items() if key[0] == bucket and v[1][1:] == key[1:]]
        if not sources:
            continue
        for k, n in BENCH_KN:
            if (bucket, k, n) in table:
                continue
            (_, sk, sn), (cfg, src) = min(sources, key=lambda s: (abs(math.log(s[0][2] / n)),
                                                                   abs(math.log(s[0][1] / k))))
            table[(bucket, k, n)] = (block_config.transfer(cfg, src, (bucket, k, n)), src)
    return table


def provisional_auto(best):
    votes = {}
    for (m, k, n), row in best.items():
        v = votes.setdefault(_dispatch.shape_class(m), [0, 0])
        v[0 if row["us"] < row["xla_int8_us"] else 1] += 1
    return {cls: ("pallas" if p > x else "xla") for cls, (p, x) in votes.items()}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sweep-s", type=float, default=125)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny shapes (a CPU check of this script)")
    a = p.parse_args(argv)
    global BENCH_M, BENCH_KN
    if a.smoke:
        BENCH_M, BENCH_KN = (1, 16, 64), ((256, 128), (128, 256))
        sw.PLANS.update(decode=[(1, 256, 128), (16, 128, 256)], medium=[(64, 256, 128)], prefill=[])
    out = Path(a.out)
    t0 = time.time()
    sw.log("jax", jax.__version__, jax.devices()[0].device_kind)

    # 1. correctness + sweep
    results = []
    sw.correctness(results, smoke=a.smoke, workers=a.workers)
    cfg_by_name = {}
    with open(out / "sweep.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
        for plan in ("decode", "medium", "prefill"):
            for m, k, n in sw.PLANS[plan]:
                if time.time() - t0 > a.sweep_s:
                    sw.log("sweep time used up before", (m, k, n))
                    continue
                for c in block_config.candidates(m, k, n):
                    cfg_by_name[c.name] = c
                sw.sweep_shape(m, k, n, t0 + a.sweep_s + 20, results, f, a.workers)

    # 2. tuned configs
    best = winners(results)
    table = tuned_table(best, cfg_by_name)
    block_config.TUNED.update({key: cfg for key, (cfg, _) in table.items()})
    (out / "tuned_configs.json").write_text(json.dumps(
        [dict(bucket=b, k=k, n=n, source=list(src), config=dataclasses.asdict(cfg))
         for (b, k, n), (cfg, src) in sorted(table.items())], indent=1))
    for (b, k, n), (cfg, src) in sorted(table.items()):
        sw.log(f"tuned bucket={b:<5} K={k:<6} N={n:<6} {cfg.name:<36} (from {src})")

    # 3. provisional auto table, then the full benchmark with every case compiled up front
    path = _dispatch.TUNING_DIR / f"{_dispatch.device_key()}.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing["int8_scaled_mm"] = provisional_auto(best)
    path.write_text(json.dumps(existing, indent=1, sort_keys=True) + "\n")
    _dispatch.load_table.cache_clear()
    sw.log("provisional auto table:", existing["int8_scaled_mm"])

    prebuilt = {}
    t = time.time()
    for k, n in BENCH_KN:
        for m in BENCH_M:
            try:
                prebuilt[(m, k, n)] = gemm_int8.cases(m, k, n)
            except Exception as e:
                sw.log("could not build cases", (m, k, n), repr(e)[:300])

    def warm(item):
        (m, k, n), c = item
        try:
            jax.block_until_ready(c.fn(*c.arg_sets[0]))
        except Exception as e:
            sw.log("warm-up failed", (m, k, n), c.name, repr(e)[:300])

    items = [(key, c) for key, cs in prebuilt.items() for c in cs if c.framework == "jax"]
    with cf.ThreadPoolExecutor(a.workers) as ex:
        list(ex.map(warm, items))
    sw.log(f"built and compiled {len(items)} benchmark cases in {time.time() - t:.1f}s")
    original = gemm_int8.cases
    gemm_int8.cases = lambda m, k, n: prebuilt[(m, k, n)] if (m, k, n) in prebuilt else original(m, k, n)
    bench_gemm.main(["--ops", "int8", "--json", str(out / "bench_int8.json"), "--write-table",
                     "--iters", str(a.iters), "--m", ",".join(map(str, BENCH_M)),
                     "--shapes", ",".join(f"{k}x{n}" for k, n in BENCH_KN)])
    shutil.copy(path, out / path.name)
    sw.log(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
