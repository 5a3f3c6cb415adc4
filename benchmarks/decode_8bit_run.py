"""Device run: FP8 / INT8 decode (M = 1, 16) — Mosaic GPU skinny kernel vs Pallas-Triton, XLA and torch.

1. FP8 accuracy against float64 (host numpy) of every implementation: XLA (cuBLASLt), Pallas-Triton, Mosaic with
   exact (promoted) accumulation and with chained wgmma accumulation;
2. INT8 correctness at the M values that need 16-row padding;
3. per (K, N) and M: kernel time from a profiler trace (sum of GPU kernel durations per call, launch gaps
   excluded) and batched device time (calls in one jitted program: includes launch gaps / host issue rate), for
   XLA bf16, XLA fp8/int8, Pallas-Triton, Mosaic (candidate tilings), the Mosaic kernel alone, torch._scaled_mm.
Writes ``$OUT/decode_8bit.json``; prints a table last.
``PYTHONPATH=.:benchmarks python benchmarks/decode_8bit_run.py``
"""

from __future__ import annotations

import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from timing import profile_kernels, rotation_count, time_batched, time_torch_graph

from quark_jax.kernels import _mosaic_skinny as ms
from quark_jax.kernels.fp8_scaled_mm import fp8_scaled_mm
from quark_jax.kernels.fp8_scaled_mm.pallas_mosaic_gpu import fp8_scaled_mm_mosaic
from quark_jax.kernels.int8_scaled_mm import int8_scaled_mm
from quark_jax.kernels.int8_scaled_mm.pallas_mosaic_gpu import int8_scaled_mm_mosaic

NT = (((1,), (1,)), ((), ()))
C = ms.SkinnyConfig
CANDIDATES = {
    (4096, 14336): [C(128, 256, 4, 1), C(64, 256, 6, 1), C(128, 128, 6, 1)],
    (14336, 4096): [C(64, 256, 4, 4), C(64, 256, 4, 2), C(64, 128, 6, 2)],
    (4096, 4096): [C(64, 256, 6, 1), C(64, 256, 4, 2), C(128, 256, 4, 2)],
    (8192, 8192): [C(128, 256, 4, 1), C(64, 256, 4, 1), C(64, 512, 3, 1)],
}
if os.environ.get("SMOKE") == "1":  # CPU dry run of the script (interpret mode, tiny shapes)
    CANDIDATES = {(256, 128): [C(64, 128, 2, 1), C(64, 64, 2, 2)]}
T0 = time.time()
BUDGET_S = float(os.environ.get("BUDGET_S", "480"))
RESULTS = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, date=time.strftime("%Y-%m-%d"),
               accuracy=[], int8_checks=[], rows=[])


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    with open(os.path.join(os.environ.get("OUT", "."), "decode_8bit.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def measure(fn, sets, calls=24):
    """(profiled kernel us per call, batched us per call, top kernels)."""
    prof_s, top = profile_kernels(fn, sets[:8])
    batch = [sets[i % len(sets)] for i in range(calls)]
    batched = time_batched(jax.jit(lambda ss: [fn(*s) for s in ss]), batch, calls, repeats=5, inner=2)
    return prof_s * 1e6, batched * 1e6, top


def accuracy():
    rng = np.random.default_rng(1)
    for m, k, n in ([(5, 256, 128)] if os.environ.get("SMOKE") == "1" else
                    [(1, 4096, 14336), (5, 1024, 512), (16, 4096, 4096), (16, 14336, 4096)]):
        x = jnp.asarray(rng.normal(size=(m, k)) * 60, jnp.float32).clip(-448, 448).astype(jnp.float8_e4m3fn)
        w = jnp.asarray(rng.normal(size=(n, k)) * 60, jnp.float32).clip(-448, 448).astype(jnp.float8_e4m3fn)
        xs = jnp.asarray(rng.uniform(0.5, 2, (m, 1)) * 1e-3, jnp.float32)
        ws = jnp.asarray(rng.uniform(0.5, 2, n) * 1e-3, jnp.float32)
        ref = (np.asarray(x, np.float64) @ np.asarray(w, np.float64).T) * np.asarray(xs, np.float64) \
            * np.asarray(ws, np.float64)[None, :]
        impls = {
            "xla": lambda: fp8_scaled_mm(x, w, xs, ws, out_dtype=jnp.float32, impl="xla"),
            "triton": lambda: fp8_scaled_mm(x, w, xs, ws, out_dtype=jnp.float32, impl="pallas"),
            "mosaic_exact": lambda: fp8_scaled_mm_mosaic(x, w, xs, ws, out_dtype=jnp.float32),
            "mosaic_chained": lambda: fp8_scaled_mm_mosaic(x, w, xs, ws, out_dtype=jnp.float32,
                                                           config=C(exact_accumulate=False)),
        }
        row = dict(m=m, k=k, n=n)
        for name, f in impls.items():
            try:
                y = np.asarray(f(), np.float64)
                row[name] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            except Exception as e:
                row[name] = repr(e)[:300]
                log("accuracy failed", name, "".join(traceback.format_exception(e))[-1500:])
        RESULTS["accuracy"].append(row)
        log("accuracy (rel fro vs float64)", row)


def int8_checks():
    rng = np.random.default_rng(2)
    for m, k, n in ([(33, 128, 64)] if os.environ.get("SMOKE") == "1" else
                    [(33, 512, 256), (48, 1024, 512), (128, 256, 128)]):
        x = jnp.asarray(rng.integers(-128, 128, (m, k)), jnp.int8)
        w = jnp.asarray(rng.integers(-128, 128, (n, k)), jnp.int8)
        xs = jnp.asarray(rng.uniform(0.5, 2, (m, 1)) * 1e-3, jnp.float32)
        ws = jnp.asarray(rng.uniform(0.5, 2, n) * 1e-3, jnp.float32)
        colsum = jnp.sum(w.astype(jnp.int32), axis=1)
        azp = jnp.asarray(rng.integers(-20, 20, (m, 1)), jnp.int32)
        ref = (np.asarray(x, np.int64) @ np.asarray(w, np.int64).T) - np.asarray(azp) * np.asarray(colsum)[None]
        try:
            y = int8_scaled_mm_mosaic(x, w, jnp.float32(1), jnp.float32(1), azp_adj=colsum, azp=azp,
                                      out_dtype=jnp.float32)
            ok = bool(np.array_equal(np.asarray(y, np.float64), ref.astype(np.float32).astype(np.float64)))
            y2 = int8_scaled_mm_mosaic(x, w, xs, ws, azp_adj=colsum, azp=azp, out_dtype=jnp.bfloat16)
            r2 = int8_scaled_mm(x, w, xs, ws, azp_adj=colsum, azp=azp, out_dtype=jnp.bfloat16, impl="xla")
            frac = float(jnp.mean((y2 != r2).astype(jnp.float32)))
            RESULTS["int8_checks"].append(dict(m=m, k=k, n=n, int32_exact=ok, bf16_mismatch=frac))
            log("int8", m, k, n, "exact", ok, "bf16 mismatch", frac)
        except Exception as e:
            RESULTS["int8_checks"].append(dict(m=m, k=k, n=n, error=repr(e)[:500]))
            log("int8 failed", m, "".join(traceback.format_exception(e))[-1500:])


def fp8_sets(m, k, n, copies):
    kx, kw = jax.random.split(jax.random.key(m + k + n))
    x = jax.random.normal(kx, (m, k)) * 2
    xs = jnp.max(jnp.abs(x), axis=1, keepdims=True) / 448.0
    xq = jnp.clip(x / xs, -448, 448).astype(jnp.float8_e4m3fn)
    ws = jnp.full((n,), 0.004, jnp.float32)
    b = jnp.ones((n,), jnp.bfloat16)
    return [(xq, jnp.clip(jax.random.normal(jax.random.fold_in(kw, i), (n, k)) * 100, -448, 448)
             .astype(jnp.float8_e4m3fn), xs, ws, b) for i in range(copies)]


def torch_case(m, k, n, copies):
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    g = torch.Generator(device="cuda").manual_seed(0)
    a = (torch.randn(m, k, device="cuda", generator=g) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = [(torch.randn(n, k, device="cuda", generator=g) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
          for _ in range(copies)]
    sa = torch.full((m, 1), 1e-3, device="cuda")
    sb = torch.full((1, n), 1e-3, device="cuda")
    bias = torch.ones(n, device="cuda", dtype=torch.bfloat16)

    def mm(w):
        return torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)

    return time_torch_graph(mm, [(w,) for w in ws], calls=24) * 1e6


def timing():
    bf16 = jax.jit(lambda a, w: lax.dot_general(a, w, NT, preferred_element_type=jnp.bfloat16))
    for (k, n), cands in CANDIDATES.items():
        copies = rotation_count(n * k)
        for m in (16, 1):
            if time.time() - T0 > BUDGET_S:
                log("budget reached")
                return
            sets = fp8_sets(m, k, n, copies)
            bf_sets = [(s[0].astype(jnp.bfloat16), s[1].astype(jnp.bfloat16)) for s in sets]
            x_i8 = jnp.clip(sets[0][0].astype(jnp.float32), -127, 127).astype(jnp.int8)
            isets = [(x_i8, lax.bitcast_convert_type(s[1], jnp.int8), jnp.float32(0.02), s[3], s[4],
                      jnp.full((n,), -7, jnp.int32)) for s in sets]
            fns = {
                "xla_bf16": (bf16, bf_sets),
                "xla_fp8": (jax.jit(lambda *a: fp8_scaled_mm(*a, impl="xla")), sets),
                "triton_fp8": (jax.jit(lambda *a: fp8_scaled_mm(*a, impl="pallas")), sets),
                "xla_int8": (jax.jit(lambda x, w, xs, ws, b, adj: int8_scaled_mm(
                    x, w, xs, ws, b, azp_adj=adj, impl="xla")), isets),
                "triton_int8": (jax.jit(lambda x, w, xs, ws, b, adj: int8_scaled_mm(
                    x, w, xs, ws, b, azp_adj=adj, impl="pallas")), isets),
            }
            for c in cands:
                tag = f"{c.block_n}x{c.block_k}s{c.stages}k{c.k_splits}"
                fns[f"mosaic_fp8 {tag}"] = (jax.jit(lambda *a, c=c: fp8_scaled_mm_mosaic(*a, config=c)), sets)
                fns[f"mosaic_int8 {tag}"] = (jax.jit(lambda x, w, xs, ws, b, adj, c=c: int8_scaled_mm_mosaic(
                    x, w, xs, ws, b, azp_adj=adj, config=c)), isets)
            c0 = cands[0]
            fns[f"mosaic_fp8_chained {c0.block_n}x{c0.block_k}s{c0.stages}k{c0.k_splits}"] = (
                jax.jit(lambda *a: fp8_scaled_mm_mosaic(
                    *a, config=ms.SkinnyConfig(c0.block_n, c0.block_k, c0.stages, c0.k_splits, False))), sets)
            row = dict(m=m, k=k, n=n, impls={})
            for name, (fn, s) in fns.items():
                try:
                    prof, batched, top = measure(fn, s)
                    row["impls"][name] = dict(kernel_us=prof, batched_us=batched, top=top)
                except Exception as e:
                    row["impls"][name] = dict(error=repr(e)[:300])
                    log("failed", name, "".join(traceback.format_exception(e))[-800:])
            try:
                row["torch_scaled_mm_graph_us"] = torch_case(m, k, n, copies)
            except Exception as e:
                row["torch_error"] = repr(e)[:300]
            RESULTS["rows"].append(row)
            save()
            log(m, k, n, {kk: (round(v.get("kernel_us", -1), 1), round(v.get("batched_us", -1), 1))
                          for kk, v in row["impls"].items()}, "torch", row.get("torch_scaled_mm_graph_us"))


def main():
    accuracy()
    save()
    int8_checks()
    save()
    timing()
    save()
    print("M K N | impl: kernel us (profiler) / batched us  — GB/s of weight by kernel time")
    for r in RESULTS["rows"]:
        best = {}
        for name, v in r["impls"].items():
            if "kernel_us" not in v:
                continue
            fam = name.split(" ")[0]
            if fam not in best or v["kernel_us"] < best[fam][1]:
                best[fam] = (name, v["kernel_us"], v["batched_us"])
        parts = [f"{nm}: {ku:.1f}/{bu:.1f} ({r['k'] * r['n'] / max(ku, 1e-9) / 1e3:.0f})" for nm, ku, bu in best.values()]
        print(r["m"], r["k"], r["n"], "|", "; ".join(parts), "| torch", r.get("torch_scaled_mm_graph_us"))


if __name__ == "__main__":
    main()
