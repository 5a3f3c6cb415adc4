"""Device run: re-tune the decode (M = 1, 16) tilings of the FP8 and INT8 kernels by GPU kernel time.

The first tables were chosen by batched wall time, which on the lent VM is dominated by launch gaps (10-15 us per
kernel); here every candidate is timed by ``timing.profile_kernels`` (sum of kernel durations from a profiler
trace, the scaling / reduction passes of split-K included). Candidates: the FP8 Triton tilings below, the INT8
sweep set of ``block_config.candidates`` and the Mosaic GPU skinny kernel (``_mosaic_skinny``) for both.
The winner of each (op, M, K, N) is checked against the XLA reference on the GPU. Writes ``$OUT/retune.json``.
``PYTHONPATH=.:benchmarks python benchmarks/decode_retune.py``
"""

from __future__ import annotations

import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
from jax import lax

from timing import profile_kernels, rotation_count

from quark_jax.kernels import _mosaic_skinny as ms
from quark_jax.kernels.fp8_scaled_mm import configs as fp8_configs
from quark_jax.kernels.fp8_scaled_mm.pallas_mosaic_gpu import fp8_scaled_mm_mosaic
from quark_jax.kernels.fp8_scaled_mm.pallas_triton import fp8_scaled_mm_pallas
from quark_jax.kernels.fp8_scaled_mm.xla import fp8_scaled_mm_xla
from quark_jax.kernels.int8_scaled_mm import block_config
from quark_jax.kernels.int8_scaled_mm.pallas_mosaic_gpu import int8_scaled_mm_mosaic
from quark_jax.kernels.int8_scaled_mm.pallas_triton import int8_scaled_mm_pallas
from quark_jax.kernels.int8_scaled_mm.xla import int8_scaled_mm_xla

G = fp8_configs.GemmConfig
SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)]
FP8_SPACE = [  # (block_n, block_k, k_splits, warps, stages), all "wx" with block_m 16
    (32, 256, 1, 4, 3), (32, 512, 1, 4, 3), (64, 256, 1, 4, 3), (64, 256, 1, 4, 4), (64, 512, 1, 4, 3),
    (128, 256, 1, 4, 3), (128, 256, 1, 8, 3), (128, 128, 1, 4, 5), (256, 128, 1, 8, 4), (32, 256, 2, 4, 4),
    (64, 256, 2, 4, 4), (64, 256, 4, 4, 3), (128, 256, 2, 4, 3), (32, 512, 2, 4, 3),
]
MOSAIC_SPACE = [ms.SkinnyConfig(128, 256, 4, 1), ms.SkinnyConfig(64, 256, 4, 2), ms.SkinnyConfig(64, 256, 4, 4)]
T0 = time.time()
BUDGET_S = float(os.environ.get("BUDGET_S", "520"))
OUT = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, date=time.strftime("%Y-%m-%d"), rows=[])


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    with open(os.path.join(os.environ.get("OUT", "."), "retune.json"), "w") as f:
        json.dump(OUT, f, indent=1)


def kernel_us(fn, sets):
    return profile_kernels(fn, sets, runs=2)[0] * 1e6


def operands(m, k, n):
    copies = min(8, rotation_count(n * k))
    kx, kw = jax.random.split(jax.random.key(m * 31 + k + n))
    x = jax.random.normal(kx, (m, k)) * 2
    xs = jnp.max(jnp.abs(x), axis=1, keepdims=True) / 448.0
    xq = jnp.clip(x / xs, -448, 448).astype(jnp.float8_e4m3fn)
    ws = jnp.full((n,), 0.004, jnp.float32)
    b = jnp.ones((n,), jnp.bfloat16)
    wqs = [jnp.clip(jax.random.normal(jax.random.fold_in(kw, i), (n, k)) * 100, -448, 448).astype(jnp.float8_e4m3fn)
           for i in range(copies)]
    fp8 = [(xq, w, xs, ws, b) for w in wqs]
    xi = jnp.clip(jnp.round(x * 40), -128, 127).astype(jnp.int8)
    int8 = [(xi, lax.bitcast_convert_type(w, jnp.int8), jnp.float32(0.02), ws, b,
             jnp.sum(lax.bitcast_convert_type(w, jnp.int8).astype(jnp.int32), axis=1) * -7) for w in wqs]
    return fp8, int8


def tune(op, m, k, n, cands, sets, ref_fn):
    res = {}
    for name, fn in cands:
        if time.time() - T0 > BUDGET_S:
            break
        try:
            res[name] = kernel_us(fn, sets)
        except Exception as e:
            res[name] = None
            log(op, "failed", name, repr(e)[:300])
    ok = {kk: v for kk, v in res.items() if v is not None}
    row = dict(op=op, m=m, k=k, n=n, us=res)
    if ok:
        best = min(ok, key=ok.get)
        fn = dict(cands)[best]
        y = fn(*sets[0])
        r = ref_fn(*sets[0])
        row["best"] = best
        row["best_us"] = ok[best]
        row["best_max_abs_diff_vs_xla"] = float(jnp.max(jnp.abs(y.astype(jnp.float32) - r.astype(jnp.float32))))
        row["xla_max_abs"] = float(jnp.max(jnp.abs(r.astype(jnp.float32))))
    OUT["rows"].append(row)
    save()
    log(op, m, k, n, "best", row.get("best"), round(row.get("best_us", -1), 2),
        {kk: (round(v, 1) if v else v) for kk, v in sorted(res.items(), key=lambda kv: kv[1] or 1e9)[:5]})


def main():
    for k, n in SHAPES:
        for m in (16, 1):
            if time.time() - T0 > BUDGET_S:
                log("budget reached")
                save()
                return
            fp8_sets, int8_sets = operands(m, k, n)
            current = fp8_configs.select(m, k, n, "nvidia_h100_80gb_hbm3")
            cands = [("xla", jax.jit(lambda *a: fp8_scaled_mm_xla(*a))),
                     (f"table {current.short()}", jax.jit(lambda *a, c=current: fp8_scaled_mm_pallas(*a, config=c)))]
            for bn, bk, sp, w, st in FP8_SPACE:
                c = fp8_configs.fit(G(16, bn, bk, k_splits=sp, inner="wx", num_warps=w, num_stages=st), m, k, n)
                cands.append((c.short(), jax.jit(lambda *a, c=c: fp8_scaled_mm_pallas(*a, config=c))))
            for c in MOSAIC_SPACE:
                cands.append((f"mosaic {c.block_n}x{c.block_k}s{c.stages}k{c.k_splits}",
                              jax.jit(lambda *a, c=c: fp8_scaled_mm_mosaic(*a, config=c))))
            seen, uniq = set(), []
            for nm, f in cands:
                if nm not in seen:
                    seen.add(nm)
                    uniq.append((nm, f))
            tune("fp8", m, k, n, uniq, fp8_sets, jax.jit(lambda *a: fp8_scaled_mm_xla(*a)))

            def i8(fn):
                return lambda x, w, xs, ws, b, adj: fn(x, w, xs, ws, b, azp_adj=adj)

            icands = [("xla", jax.jit(i8(int8_scaled_mm_xla))),
                      (f"table {block_config.get_config(m, k, n).name}",
                       jax.jit(i8(lambda *a, **kw: int8_scaled_mm_pallas(*a, **kw))))]
            for c in block_config.candidates(m, k, n):
                icands.append((c.name, jax.jit(i8(lambda *a, c=c, **kw: int8_scaled_mm_pallas(*a, config=c, **kw)))))
            for c in MOSAIC_SPACE:
                icands.append((f"mosaic {c.block_n}x{c.block_k}s{c.stages}k{c.k_splits}",
                               jax.jit(i8(lambda *a, c=c, **kw: int8_scaled_mm_mosaic(*a, config=c, **kw)))))
            tune("int8", m, k, n, icands, int8_sets, jax.jit(i8(int8_scaled_mm_xla)))
    save()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        traceback.print_exception(e)
    print("op M K N | best | us | xla us | table us")
    for r in OUT["rows"]:
        tab = next((v for kk, v in r["us"].items() if kk.startswith("table")), None)
        print(r["op"], r["m"], r["k"], r["n"], "|", r.get("best"), "|", round(r.get("best_us", -1), 2), "|",
              r["us"].get("xla"), "|", tab, "| diff", r.get("best_max_abs_diff_vs_xla"), "/", r.get("xla_max_abs"))
