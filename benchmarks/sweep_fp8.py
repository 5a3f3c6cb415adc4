"""Block-config sweep for the FP8 Pallas-Triton GEMM (run on a GPU machine; one call does many variants).

For each group (a shape and a list of ``GemmConfig`` candidates) it compiles, in parallel threads, one jitted
program per candidate that makes ``calls`` back-to-back calls over rotated weight copies (device timing: the
lent VM's ~34 us per-dispatch host cost would otherwise hide every decode kernel; see timing.py), checks the
calls on the GPU against the XLA reference (per-token x per-channel scales + bias, bf16 out), times the program,
and times XLA fp8 (same scales and bias) and XLA bf16 the same way beside it. Groups run in the listed order until the time budget is spent; a table per group is printed as it
finishes and everything goes to a JSON file.

    PYTHONPATH=. python benchmarks/sweep_fp8.py --budget 200 --json $OUT/sweep.json [--groups decode,prefill] [--smoke]
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

from timing import rotation_count, time_batched, time_jax  # noqa: E402  (time_jax: wall-clock baselines)

from quark_jax.kernels.fp8_scaled_mm.configs import GemmConfig as G  # noqa: E402


def _c(inner, bm, bn, bk, w=4, st=3, s=1, g=1):
    return G(bm, bn, bk, k_splits=s, group_m=g, inner=inner, num_warps=w, num_stages=st)


def fma(bn, bk, w=4, st=3, s=1):
    return _c("fma", 1, bn, bk, w, st, s)


def wx(bm, bn, bk, w=4, st=3, s=1):
    return _c("wx", bm, bn, bk, w, st, s)


def xw(bm, bn, bk, w=4, st=3, s=1, g=1):
    return _c("xw", bm, bn, bk, w, st, s, g)


SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)]


def decode1(k, n):
    c = [fma(8, 1024), fma(16, 1024, 8), fma(16, 512), fma(16, 1024), fma(8, 512), fma(16, 2048, 8, 2),
         fma(32, 512, 8), fma(16, 1024, 8, 4)]
    c += [wx(16, bn, bk, st=st) for bn in (16, 32, 64) for bk in (256, 512) for st in (3, 4)]
    c += [wx(16, 16, 1024, st=2), wx(16, 32, 1024, st=2), wx(16, 64, 512, w=8)]
    c += [wx(16, 16, 512, s=2), wx(16, 32, 512, s=2), wx(16, 32, 256, st=4, s=2), wx(16, 64, 256, s=4)]
    c += [xw(16, 16, 512), xw(16, 32, 512), xw(16, 32, 256, st=4)]
    return c


def decode16(k, n):
    c = [wx(16, bn, bk, st=st) for bn in (16, 32, 64, 128) for bk in (256, 512) for st in (3, 4)]
    c += [wx(16, 64, 256, w=8), wx(16, 128, 256, w=8)]
    c += [wx(16, 16, 512, s=2), wx(16, 32, 512, s=2), wx(16, 64, 256, s=2), wx(16, 64, 256, s=4)]
    c += [xw(16, 16, 512), xw(16, 32, 512), xw(16, 64, 256)]
    return c


def small64(k, n):
    return [xw(64, 64, 256), xw(64, 128, 128, st=4), xw(64, 32, 256), xw(64, 64, 128, st=4), xw(64, 128, 256),
            xw(32, 64, 256), wx(64, 64, 256), wx(64, 128, 128), wx(64, 64, 256, s=2), xw(64, 64, 256, s=2)]


def medium256(k, n):
    return [xw(64, 64, 256, g=8), xw(64, 128, 128, st=4, g=8), xw(64, 128, 256, g=8), xw(128, 64, 128, st=4, g=8),
            xw(128, 64, 256, g=8), xw(128, 128, 128, st=4, g=8), xw(128, 128, 128, 8, 3, g=8),
            xw(64, 256, 128, 8, 3, g=8), xw(128, 128, 128, st=4, s=2, g=8), xw(64, 128, 128, st=4, s=2, g=8)]


# (tag, (M, K, N), candidates), in priority order.
GROUPS = ([("decode", (1, k, n), decode1(k, n)) for k, n in SHAPES[:2]]
          + [("decode", (16, k, n), decode16(k, n)) for k, n in SHAPES[:2]]
          + [("decode", (1, k, n), decode1(k, n)) for k, n in SHAPES[2:]]
          + [("decode", (16, k, n), decode16(k, n)) for k, n in SHAPES[2:]]
          + [("small", (64, k, n), small64(k, n)) for k, n in SHAPES]
          + [("medium", (256, k, n), medium256(k, n)) for k, n in SHAPES]
          + [("prefill", (2048, 4096, 14336), [xw(128, 128, 128, 4, 4, g=8), xw(128, 128, 64, 4, 5, g=8),
                                               xw(64, 128, 128, 4, 4, g=8)])])


# Run only when named (--groups decode2): a finer sweep around the decode winners of the second H100 run.
EXTRA_GROUPS = [
    ("decode2", (1, 4096, 14336),
     [wx(16, 32, bk, w=w, st=st) for bk in (128, 256) for st in (2, 3, 4, 6) for w in (2, 4, 8)]
     + [wx(16, 16, 256, st=st) for st in (3, 5)] + [wx(16, 64, 128, st=st) for st in (4, 6)]),
    ("decode2", (16, 4096, 14336),
     [wx(16, 128, bk, w=w, st=st) for bk in (128, 256) for st in (2, 3, 4, 6) for w in (4, 8)]
     + [wx(16, 64, 128, st=st) for st in (4, 6)] + [wx(16, 256, 128, w=8, st=st) for st in (3, 4)]),
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


def run_group(tag, shape, cands, *, threads, log, wall_baselines=False):
    """Compile every candidate as one jitted program of ``calls`` back-to-back calls (device timing, see
    timing.py), check call 0 against the XLA reference, time the program; XLA fp8 / bf16 likewise."""
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
    floor_s = max(nbytes / 3.0e12, flops / 1.5e15)
    calls = int(min(32, max(4, -(-2e-3 // floor_s))))
    batch = [sets[i % len(sets)] for i in range(calls)]
    rows = []

    def device_time(compiled, args, repeats=5, inner=2):
        return time_batched(compiled, args, calls, repeats=repeats, inner=inner)

    def record(name, t, cfg=None, err=None):
        rows.append(dict(tag=tag, m=m, k=k, n=n, name=name, cfg=cfg, us=t * 1e6, tflops=flops / t / 1e12,
                         gbps=nbytes / t / 1e9, err=err, calls=calls))

    def batched(fn):
        return jax.jit(lambda args: [fn(*a) for a in args])

    ref = jax.jit(functools.partial(fp8_scaled_mm_xla, out_dtype=jnp.float32))(*sets[0])
    ref_max = float(jnp.abs(ref).max())
    xla_fp8 = jax.jit(functools.partial(fp8_scaled_mm_xla, out_dtype=jnp.bfloat16))
    record("xla_fp8", device_time(batched(xla_fp8).lower(batch).compile(), batch))
    bf_batch = [(xq.astype(jnp.bfloat16), w.astype(jnp.bfloat16)) for w in wqs]
    bf_batch = [bf_batch[i % len(bf_batch)] for i in range(calls)]
    xla_bf16 = jax.jit(lambda a, w: lax.dot_general(a, w, (((1,), (1,)), ((), ())),
                                                    preferred_element_type=jnp.bfloat16))
    record("xla_bf16", device_time(batched(xla_bf16).lower(bf_batch).compile(), bf_batch))
    if wall_baselines:
        record("xla_fp8_wall", time_jax(xla_fp8, sets, iters=50))
        record("xla_bf16_wall", time_jax(xla_bf16, bf_batch[:len(sets)], iters=50))
    del bf_batch

    fitted = []
    for c in cands:
        f = fit(c, m, k, n)
        if f not in fitted:
            fitted.append(f)

    def compile_one(cfg):
        t0 = time.time()
        fn = jax.jit(functools.partial(fp8_scaled_mm_pallas, out_dtype=jnp.bfloat16, config=cfg))
        try:
            return cfg, batched(fn).lower(batch).compile(), None, time.time() - t0
        except Exception as e:  # report, keep sweeping
            return cfg, None, repr(e)[:400], time.time() - t0

    t0 = time.time()
    with cf.ThreadPoolExecutor(threads) as ex:
        compiled = list(ex.map(compile_one, fitted))
    log(f"  compiled {len(fitted)} programs of {calls} calls in {time.time() - t0:.1f}s")
    for cfg, prog, e, dt in compiled:
        if prog is None:
            log(f"  {cfg.short():<34} COMPILE FAILED ({dt:.1f}s): {e}")
            rows.append(dict(tag=tag, m=m, k=k, n=n, name="pallas", cfg=cfg.short(), us=float("nan"), error=e))
            continue
        try:
            outs = prog(batch)
            err = max(float(jnp.abs(outs[i].astype(jnp.float32) - ref).max()) / ref_max
                      for i in range(0, calls, len(sets)))  # every call on set 0, poisoned-output safe
            del outs
            if not err <= 2 ** -7:
                log(f"  {cfg.short():<34} WRONG: max rel err {err:.3g}")
                rows.append(dict(tag=tag, m=m, k=k, n=n, name="pallas", cfg=cfg.short(), us=float("nan"), err=err))
                continue
            record("pallas", device_time(prog, batch), cfg.short(), err)
        except Exception as e:
            log(f"  {cfg.short():<34} RUN FAILED: {repr(e)[:300]}")
        del prog
    base_fp8 = next(r["us"] for r in rows if r["name"] == "xla_fp8")
    base_bf16 = next(r["us"] for r in rows if r["name"] == "xla_bf16")
    log(f"== {tag} M={m} K={k} N={n}: floor {nbytes / 3.0e12 * 1e6:.1f} us (bytes) / "
        f"{flops / 1.5e15 * 1e6:.1f} us (fp8 flops); device time, {calls} calls per program; "
        f"xla_fp8 {base_fp8:.1f} us, xla_bf16 {base_bf16:.1f} us")
    ranked = sorted(rows, key=lambda r: (r["us"] != r["us"], r["us"]))
    for i, r in enumerate(ranked):
        if i >= 8 and r["name"] == "pallas":
            continue  # the 8 best candidates and the baselines
        log(f"  {r['name']:<13} {str(r.get('cfg') or ''):<34} {r['us']:>8.1f} us {r.get('tflops', 0):>7.1f} TFLOP/s "
            f"{r.get('gbps', 0):>6.0f} GB/s  vs fp8 x{base_fp8 / r['us']:.2f}  vs bf16 x{base_bf16 / r['us']:.2f}")
    return rows


def launch_floor(calls=32):
    """Seconds per call of a one-program Pallas kernel (writes 16x128 f32), ``calls`` per jitted program: the
    per-kernel launch and gap cost that every timed kernel pays on top of its own work."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    def body(x_ref, o_ref):
        o_ref[...] = x_ref[...] + 1.0

    call = pl.pallas_call(body, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
                          compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1))
    xs = [jnp.full((16, 128), float(i), jnp.float32) for i in range(calls)]
    prog = jax.jit(lambda xs: [call(x) for x in xs])
    jax.block_until_ready(prog(xs))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(prog(xs))
        samples.append((time.perf_counter() - t0) / calls)
    return sorted(samples)[2]


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
    if tags:
        groups = groups + EXTRA_GROUPS
    if not a.smoke:
        try:
            print(f"launch floor (tiny Pallas kernel, 32 per program): {launch_floor() * 1e6:.1f} us", flush=True)
        except Exception as e:  # a measurement aid only
            print(f"launch floor: failed: {e!r}"[:300], flush=True)
    for tag, shape, cands in groups:
        if tags and tag not in tags:
            continue
        if time.time() - t_start > a.budget:
            print(f"-- budget spent: skipped {tag} {shape}", flush=True)
            continue
        rows += run_group(tag, shape, cands, threads=a.threads, log=lambda s: print(s, flush=True),
                          wall_baselines=not rows)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    print(f"sweep done in {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
