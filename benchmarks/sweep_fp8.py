"""Block-config sweep for the FP8 Pallas-Triton GEMM (run on a GPU machine; one call does many variants).

For each group (a shape and a list of ``GemmConfig`` candidates) it compiles the candidates in parallel threads,
checks each on the GPU against the XLA reference (per-token x per-channel scales + bias, bf16 out), times it
with ``timing.time_jax`` over rotated weight copies, and times XLA fp8 (same scales and bias) and XLA bf16
beside it. Groups run in the listed order until the time budget is spent; a table per group is printed as it
finishes and everything goes to a JSON file.

    PYTHONPATH=. python benchmarks/sweep_fp8.py --budget 200 --json $OUT/sweep.json [--groups decode,prefill]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from timing import rotation_count, time_jax  # noqa: E402

from quark_jax.kernels.fp8_scaled_mm.configs import GemmConfig as G  # noqa: E402


def _c(inner, bm, bn, bk, w=4, st=3, s=1, g=1):
    return G(bm, bn, bk, k_splits=s, group_m=g, inner=inner, num_warps=w, num_stages=st)


def fma(bn, bk, w=4, st=3, s=1):
    return _c("fma", 1, bn, bk, w, st, s)


def wx(bm, bn, bk, w=4, st=3, s=1):
    return _c("wx", bm, bn, bk, w, st, s)


def xw(bm, bn, bk, w=4, st=3, s=1, g=1):
    return _c("xw", bm, bn, bk, w, st, s, g)


# (tag, (M, K, N), candidates), in priority order.
GROUPS = [
    ("decode", (1, 4096, 14336), [
        fma(16, 512), fma(16, 1024, 8), fma(32, 512, 8), fma(32, 256, 4, 4), fma(16, 512, 4, 1), fma(8, 1024),
        wx(16, 16, 512), wx(16, 16, 512, st=4), wx(16, 32, 512), wx(16, 32, 256, st=4), wx(16, 64, 256),
        wx(16, 16, 1024, st=2), wx(16, 32, 512, w=2), wx(16, 64, 512), wx(16, 32, 512, s=2), wx(16, 64, 256, s=4),
        xw(16, 16, 512), xw(16, 32, 512), xw(16, 32, 512, w=2, s=4)]),
    ("decode", (16, 4096, 14336), [
        wx(16, 16, 512), wx(16, 32, 512), wx(16, 32, 256, st=4), wx(16, 64, 256), wx(16, 64, 512),
        wx(16, 128, 256), wx(16, 64, 256, w=8), wx(16, 32, 512, s=2), wx(16, 64, 256, s=2),
        xw(16, 16, 512), xw(16, 32, 512), xw(16, 64, 256), xw(16, 256, 128, w=8, s=4)]),
    ("decode", (1, 14336, 4096), [
        fma(16, 512), fma(32, 512, 8),
        wx(16, 16, 512), wx(16, 16, 512, st=4), wx(16, 32, 512), wx(16, 16, 512, s=2), wx(16, 32, 512, s=2),
        wx(16, 32, 256, st=4, s=4)]),
    ("decode", (16, 14336, 4096), [
        wx(16, 16, 512), wx(16, 32, 512), wx(16, 16, 512, st=4), wx(16, 32, 512, s=2), wx(16, 64, 256, s=4),
        wx(16, 32, 256, st=4, s=2), xw(16, 32, 512)]),
    ("prefill", (8192, 8192, 8192), [
        xw(128, 256, 128, 8, 3, g=8), xw(128, 256, 128, 8, 4, g=8), xw(128, 128, 128, 4, 4, g=8),
        xw(128, 128, 128, 8, 4, g=8), xw(256, 128, 128, 8, 3, g=8), xw(128, 128, 256, 8, 3, g=8)]),
    ("prefill", (2048, 4096, 14336), [
        xw(128, 256, 128, 8, 3, g=8), xw(128, 128, 128, 4, 4, g=8), xw(128, 128, 128, 8, 4, g=8),
        xw(64, 256, 128, 8, 3, g=8)]),
    ("small", (64, 4096, 14336), [
        wx(64, 64, 256), wx(64, 64, 128, st=4), wx(64, 128, 128), wx(64, 64, 256, s=2),
        xw(64, 64, 256), xw(64, 128, 128, st=4)]),
    ("medium", (256, 4096, 14336), [
        xw(64, 128, 128, st=4, g=8), xw(128, 128, 128, 8, 3, g=8), xw(128, 64, 256, g=8), xw(64, 256, 128, 8, g=8),
        wx(256, 64, 128, 8)]),
]

SMOKE = [("decode", (1, 256, 64), [fma(16, 64), wx(16, 16, 64), wx(16, 32, 64, s=2)]),
         ("prefill", (40, 128, 64), [xw(32, 32, 64, g=2), xw(16, 64, 64)])]


def _data(m, k, n, seed=0):
    import jax
    import jax.numpy as jnp

    from quark_jax import quant

    key = jax.random.PRNGKey(seed)
    kx, kw, ks, kb = jax.random.split(key, 4)
    x = jax.random.normal(kx, (m, k), jnp.float32) * 2.0
    xq, xs = quant.scaled_fp8_quant(x, per_token=True)
    copies = rotation_count(n * k)
    ws = jax.random.uniform(ks, (n,), jnp.float32, 1e-3, 1e-2)
    b = jax.random.normal(kb, (n,), jnp.float32).astype(jnp.bfloat16)
    wqs = []
    for i in range(copies):
        w = jax.random.normal(jax.random.fold_in(kw, i), (n, k), jnp.float32) * 100.0
        wqs.append(jnp.clip(w, -448, 448).astype(jnp.float8_e4m3fn))
    return xq, xs, wqs, ws, b


def run_group(tag, shape, cands, *, iters, threads, log):
    import jax
    import jax.numpy as jnp
    from jax import lax

    from quark_jax.kernels.fp8_scaled_mm.configs import fit
    from quark_jax.kernels.fp8_scaled_mm.pallas_triton import fp8_scaled_mm_pallas
    from quark_jax.kernels.fp8_scaled_mm.xla import fp8_scaled_mm_xla

    m, k, n = shape
    xq, xs, wqs, ws, b = _data(m, k, n)
    sets = [(xq, w, xs, ws, b) for w in wqs]
    flops, nbytes = 2.0 * m * n * k, m * k + n * k + 2 * m * n + 4 * (m + 2 * n)
    rows = []

    def timed(name, fn, arg_sets, cfg=None, err=None):
        t = time_jax(fn, arg_sets, iters=iters)
        r = dict(tag=tag, m=m, k=k, n=n, name=name, cfg=cfg, us=t * 1e6, tflops=flops / t / 1e12,
                 gbps=nbytes / t / 1e9, err=err)
        rows.append(r)
        return r

    xla_fp8 = jax.jit(functools.partial(fp8_scaled_mm_xla, out_dtype=jnp.bfloat16))
    ref = jax.jit(functools.partial(fp8_scaled_mm_xla, out_dtype=jnp.float32))(*sets[0])
    ref_max = float(jnp.abs(ref).max())
    timed("xla_fp8", xla_fp8, sets)
    bf_sets = [(xq.astype(jnp.bfloat16), w.astype(jnp.bfloat16)) for w in wqs]
    xla_bf16 = jax.jit(lambda a, w: lax.dot_general(a, w, (((1,), (1,)), ((), ())),
                                                    preferred_element_type=jnp.bfloat16))
    timed("xla_bf16", xla_bf16, bf_sets)
    del bf_sets

    fitted = []
    for c in cands:
        f = fit(c, m, k, n)
        if f not in fitted:
            fitted.append(f)

    def compile_one(cfg):
        t0 = time.time()
        fn = jax.jit(functools.partial(fp8_scaled_mm_pallas, out_dtype=jnp.bfloat16, config=cfg))
        try:
            fn.lower(*sets[0]).compile()
            return cfg, fn, None, time.time() - t0
        except Exception as e:  # report, keep sweeping
            return cfg, None, repr(e)[:400], time.time() - t0

    t0 = time.time()
    with cf.ThreadPoolExecutor(threads) as ex:
        compiled = list(ex.map(compile_one, fitted))
    log(f"  compiled {len(fitted)} configs in {time.time() - t0:.1f}s")
    for cfg, fn, e, dt in compiled:
        if fn is None:
            log(f"  {cfg.short():<34} COMPILE FAILED ({dt:.1f}s): {e}")
            rows.append(dict(tag=tag, m=m, k=k, n=n, name="pallas", cfg=cfg.short(), us=float("nan"), error=e))
            continue
        try:
            y = fn(*sets[0]).astype(jnp.float32)
            err = float(jnp.abs(y - ref).max()) / ref_max
            if not err <= 2 ** -7:
                log(f"  {cfg.short():<34} WRONG: max rel err {err:.3g}")
                rows.append(dict(tag=tag, m=m, k=k, n=n, name="pallas", cfg=cfg.short(), us=float("nan"), err=err))
                continue
            timed("pallas", fn, sets, cfg.short(), err)
        except Exception as e:
            log(f"  {cfg.short():<34} RUN FAILED: {repr(e)[:300]}")
    base_fp8 = next(r["us"] for r in rows if r["name"] == "xla_fp8")
    base_bf16 = next(r["us"] for r in rows if r["name"] == "xla_bf16")
    log(f"== {tag} M={m} K={k} N={n}: floor {nbytes / 3.0e12 * 1e6:.1f} us (bytes) / "
        f"{flops / 1.5e15 * 1e6:.1f} us (fp8 flops); xla_fp8 {base_fp8:.1f} us, xla_bf16 {base_bf16:.1f} us")
    for r in sorted(rows, key=lambda r: (r["us"] != r["us"], r["us"])):
        log(f"  {r['name']:<8} {str(r.get('cfg') or ''):<34} {r['us']:>9.1f} us {r.get('tflops', 0):>7.1f} TFLOP/s "
            f"{r.get('gbps', 0):>7.0f} GB/s  vs fp8 x{base_fp8 / r['us']:.2f}  vs bf16 x{base_bf16 / r['us']:.2f}"
            f"  err {r.get('err') if r.get('err') is None else format(r['err'], '.2g')}")
    return rows


def dispatch_floor():
    """Seconds per call of a trivial jitted op called back to back (the host-side floor of any measurement)."""
    import jax
    import jax.numpy as jnp

    a = [jnp.ones((16,), jnp.float32) for _ in range(2)]
    f = jax.jit(lambda v: v + 1)
    return time_jax(f, [(v,) for v in a], iters=200)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=200.0, help="seconds; no new group starts after this")
    p.add_argument("--groups", default="", help="comma-separated tags to run (default all)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script itself, e.g. on CPU)")
    a = p.parse_args(argv)
    groups = SMOKE if a.smoke else GROUPS
    t_start = time.time()
    import jax

    print(f"jax {jax.__version__}; device {jax.devices()[0].device_kind}", flush=True)
    print(f"dispatch floor (trivial jitted op, back to back): {dispatch_floor() * 1e6:.1f} us", flush=True)
    tags = set(a.groups.split(",")) if a.groups else None
    rows = []
    for tag, shape, cands in groups:
        if tags and tag not in tags:
            continue
        if time.time() - t_start > a.budget:
            print(f"-- budget spent: skipped {tag} {shape}", flush=True)
            continue
        iters = a.iters if shape[0] * shape[1] * shape[2] < 2**33 else max(5, a.iters // 5)
        rows += run_group(tag, shape, cands, iters=iters, threads=a.threads, log=lambda s: print(s, flush=True))
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    print(f"sweep done in {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
