"""Kernel time of the decode attention (``quark_jax.kernels.decode_attention``) on the GPU: the XLA path (float32
elementwise reductions, today's decode) against the Pallas flash-decoding kernel (a few configs), one query per row
over a Llama-3-8B-shaped cache (32 query / 8 KV heads, head_dim 128), every slot valid (``pos = S - 1``), bf16 and
FP8 caches. GPU kernel time per call from a profiler trace (``tuning.tuner.profile_kernels``, the benchmarks'
JAX timing), with enough distinct caches per measurement that they do not sit in L2; the floor is the cache bytes
read at 4.3 TB/s (the H200's copy bandwidth, shared/BASELINES.md). Each row also reports the largest difference of
the bf16 outputs (Pallas vs XLA).

    python benchmarks/decode_attention_bench.py --out r.json                   # on the GPU
    python benchmarks/decode_attention_bench.py --batches 1 --slots 64 --dtypes bf16   # CPU smoke (wall time)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H, HKV, D = 32, 8, 128
BANDWIDTH = 4.3e12  # bytes/s
L2_BYTES = 256 << 20  # distinct caches per measurement: at least this many bytes (the H200's L2 is 50 MB)
CONFIGS = {  # name -> pallas_triton.Config kwargs (None: the XLA path)
    "xla": None,
    "pallas": {},
    "pallas_bs64": {"block_s": 64},
    "pallas_bs16_w2": {"block_s": 16, "num_warps": 2},
    "pallas_s1": {"splits": 1},
}


def log(*a):
    print(*a, flush=True)


def run(args) -> dict:
    import jax
    import jax.numpy as jnp

    from quark_jax.kernels import decode_attention
    from quark_jax.kernels.attention import pallas_triton
    from quark_jax.kernels.tuning import tuner

    on_gpu = jax.default_backend() == "gpu"
    out = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "heads": [H, HKV, D],
           "bandwidth": BANDWIDTH, "rows": []}
    t_start = time.perf_counter()
    key = jax.random.PRNGKey(0)
    for b in (int(x) for x in args.batches.split(",")):  # in priority order: --budget-s cuts the last rows
        for s in (int(x) for x in args.slots.split(",")):
            for dt_name in args.dtypes.split(","):
                fp8 = dt_name == "fp8"
                cache_dtype = jnp.float8_e4m3fn if fp8 else jnp.bfloat16
                nbytes = 2 * b * s * HKV * D * jnp.dtype(cache_dtype).itemsize
                n_sets = int(min(16, max(1, -(-L2_BYTES // nbytes)))) if on_gpu else 1
                sets = []
                for i in range(n_sets):
                    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 1000 * s + 10 * b + i), 3)
                    q = jax.random.normal(k1, (b, H, D), jnp.float32).astype(jnp.bfloat16)
                    mk = lambda kk: (jax.random.normal(kk, (b, s, HKV, D), jnp.float32)  # noqa: E731
                                     * (32.0 if fp8 else 1.0)).astype(cache_dtype)
                    pos = jnp.full((b,), s - 1, jnp.int32)
                    first = jnp.zeros((b,), jnp.int32)
                    sc = jnp.array([1 / 32, 1 / 32], jnp.float32) if fp8 else None
                    sets.append((q, mk(k2), mk(k3), pos, first, sc))
                jax.block_until_ready(sets)
                ref = None
                for name in args.configs.split(","):
                    if time.perf_counter() - t_start > args.budget_s:
                        log("budget spent, skipping", dt_name, b, s, name)
                        continue
                    kw = CONFIGS[name]
                    if name == "pallas_s1" and s > 4096:
                        continue  # one split per (row, KV head): only short caches
                    cfg = None if kw is None else pallas_triton.Config(**kw)

                    def fn(q, k, v, pos, first, sc, cfg=cfg):
                        return decode_attention(q, k, v, pos=pos, first_slot=first,
                                                scales=None if sc is None else (sc[0], sc[1]),
                                                impl="xla" if cfg is None else "pallas", config=cfg,
                                                out_dtype=jnp.bfloat16)

                    row = {"cache": dt_name, "batch": b, "slots": s, "impl": name, "bytes": nbytes,
                           "floor_us": 1e6 * nbytes / BANDWIDTH, "sets": n_sets}
                    if cfg is not None:
                        row["config"] = pallas_triton.fit(cfg, b, HKV, s).short()
                    try:
                        t0 = time.perf_counter()
                        o = np.asarray(jax.jit(fn)(*sets[0]), np.float32)
                        if ref is None and cfg is None:
                            ref = o
                        elif ref is not None:
                            row["max_abs_diff_vs_xla"] = float(np.max(np.abs(o - ref)))
                        if on_gpu:
                            many = jax.jit(lambda ss: [fn(*x) for x in ss])
                            jax.block_until_ready(many(sets))
                            sec, top = tuner.profile_kernels(many, sets)
                            row["top_kernels"] = top
                        else:
                            sec = tuner.kernel_time(fn, sets)
                        row["us"] = 1e6 * sec
                        row["floor_frac"] = row["floor_us"] / row["us"]
                        row["wall_s"] = time.perf_counter() - t0
                    except Exception as e:  # keep the other rows
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    log(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                                    if k != "top_kernels"}))
                    out["rows"].append(row)
                    if args.out:
                        Path(args.out).write_text(json.dumps(out, indent=1))
                del sets
    out["elapsed_s"] = time.perf_counter() - t_start
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--slots", default="256,4096,32768")
    ap.add_argument("--dtypes", default="bf16,fp8")
    ap.add_argument("--configs", default="xla,pallas,pallas_bs64,pallas_s1")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip the remaining rows after this")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
