"""Device run: the Mosaic GPU skinny kernels (FP8 and INT8 decode) against Triton, XLA fp8/int8 and XLA bf16.

1. correctness on the GPU against the XLA references (several M, bias, per-token scales, azp modes);
2. a tiling sweep at M = 16 per weight shape, then M = 1 and M = 16 with the best tilings, device-timed (calls
   batched in one jitted program, inputs rotated over copies to defeat L2), plus the kernel alone (no padding /
   transpose glue) to measure the glue.
Writes ``$OUT/mosaic_decode.json`` and prints a table. Run on the GPU machine:
``PYTHONPATH=.:benchmarks python benchmarks/mosaic_decode_explore.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from timing import rotation_count, time_batched

from quark_jax.kernels import _dispatch, _mosaic_skinny as ms
from quark_jax.kernels.fp8_scaled_mm import fp8_scaled_mm
from quark_jax.kernels.fp8_scaled_mm.pallas_mosaic_gpu import fp8_scaled_mm_mosaic
from quark_jax.kernels.int8_scaled_mm import int8_scaled_mm
from quark_jax.kernels.int8_scaled_mm.pallas_mosaic_gpu import int8_scaled_mm_mosaic

NT = (((1,), (1,)), ((), ()))
SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)]
SMOKE = os.environ.get("SMOKE") == "1"  # a CPU dry run of the script on tiny shapes (interpret mode)
if SMOKE:
    SHAPES = [(256, 128)]
T0 = time.time()
BUDGET_S = float(os.environ.get("BUDGET_S", "480"))


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def dev_time(fn, sets, calls=2 if SMOKE else 24):
    sets = [sets[i % len(sets)] for i in range(calls)]
    batched = jax.jit(lambda ss: [fn(*s) for s in ss])
    return time_batched(batched, sets, calls, repeats=5, inner=2)


def fp8_operands(m, k, n, copies, seed=0):
    key = jax.random.key(seed)
    kx, kw, ks = jax.random.split(key, 3)
    x = jax.random.normal(kx, (m, k), jnp.float32) * 2
    xs = jnp.max(jnp.abs(x), axis=1, keepdims=True) / 448.0
    xq = jnp.clip(x / xs, -448, 448).astype(jnp.float8_e4m3fn)
    ws = jax.random.uniform(ks, (n,), jnp.float32, 1e-3, 1e-2)
    b = jnp.ones((n,), jnp.bfloat16)
    ws_sets = []
    for i in range(copies):
        w = jnp.clip(jax.random.normal(jax.random.fold_in(kw, i), (n, k)) * 100, -448, 448).astype(jnp.float8_e4m3fn)
        ws_sets.append((xq, w, xs, ws, b))
    return ws_sets


def int8_operands(m, k, n, copies, seed=0):
    key = jax.random.key(seed)
    kx, kw = jax.random.split(key)
    x = jax.random.randint(kx, (m, k), -128, 128, jnp.int32).astype(jnp.int8)
    sets = []
    for i in range(copies):
        w = jax.random.randint(jax.random.fold_in(kw, i), (n, k), -128, 128, jnp.int32).astype(jnp.int8)
        adj = jnp.sum(w.astype(jnp.int32), axis=1) * jnp.int32(-7)
        sets.append((x, w, jnp.float32(0.02), jnp.full((n,), 0.004, jnp.float32), jnp.ones((n,), jnp.bfloat16), adj))
    return sets


def check_correctness(results):
    rng = np.random.default_rng(0)
    cases = [(1, 4096, 14336, None), (5, 1024, 512, ms.SkinnyConfig(128, 128, 4, 1)),
                         (16, 4096, 4096, ms.SkinnyConfig(64, 256, 4, 4)), (33, 512, 256, None),
             (128, 256, 128, ms.SkinnyConfig(64, 64, 2, 1))]
    if SMOKE:
        cases = [(5, 256, 128, ms.SkinnyConfig(64, 128, 2, 2)), (3, 128, 64, None)]
    for m, k, n, cfg in cases:
        x = jnp.asarray(rng.normal(size=(m, k)).clip(-8, 8) * 50, jnp.float8_e4m3fn)
        w = jnp.asarray(rng.normal(size=(n, k)).clip(-8, 8) * 50, jnp.float8_e4m3fn)
        xs = jnp.asarray(rng.uniform(0.5, 2, (m, 1)) * 1e-3, jnp.float32)
        wsc = jnp.asarray(rng.uniform(0.5, 2, n) * 1e-3, jnp.float32)
        b = jnp.asarray(rng.normal(size=n), jnp.bfloat16)
        for bias in (None, b):
            try:
                y = fp8_scaled_mm_mosaic(x, w, xs, wsc, bias, out_dtype=jnp.float32, config=cfg)
                r = fp8_scaled_mm(x, w, xs, wsc, bias, out_dtype=jnp.float32, impl="xla")
                err = float(jnp.max(jnp.abs(y - r)) / jnp.max(jnp.abs(r)))
                yb = fp8_scaled_mm_mosaic(x, w, xs, wsc, bias, out_dtype=jnp.bfloat16, config=cfg)
                rb = fp8_scaled_mm(x, w, xs, wsc, bias, out_dtype=jnp.bfloat16, impl="xla")
                mism = float(jnp.mean((yb != rb).astype(jnp.float32)))
                results["checks"].append(dict(op="fp8", m=m, k=k, n=n, bias=bias is not None, rel_err=err,
                                              bf16_mismatch_frac=mism))
                log("fp8 check", m, k, n, bias is not None, "rel", err, "bf16 mism", mism)
            except Exception as e:
                results["checks"].append(dict(op="fp8", m=m, k=k, n=n, error=repr(e)[:2000]))
                log("fp8 check FAILED", m, k, n, "".join(traceback.format_exception(e))[-3000:])
        xi = jnp.asarray(rng.integers(-128, 128, (m, k)), jnp.int8)
        wi = jnp.asarray(rng.integers(-128, 128, (n, k)), jnp.int8)
        colsum = jnp.sum(wi.astype(jnp.int32), axis=1)
        azp = jnp.asarray(rng.integers(-20, 20, (m, 1)), jnp.int32)
        for mode, kw in [("sym", {}), ("tensor", dict(azp_adj=colsum * 3)), ("token", dict(azp_adj=colsum, azp=azp))]:
            try:
                y = int8_scaled_mm_mosaic(xi, wi, xs, wsc, b, out_dtype=jnp.float32, config=cfg, **kw)
                r = int8_scaled_mm(xi, wi, xs, wsc, b, out_dtype=jnp.float32, impl="xla", **kw)
                same = bool(jnp.array_equal(y, r))
                err = float(jnp.max(jnp.abs(y - r)) / jnp.max(jnp.abs(r)))
                results["checks"].append(dict(op="int8", mode=mode, m=m, k=k, n=n, equal=same, rel_err=err))
                log("int8 check", mode, m, k, n, "equal", same, "rel", err)
            except Exception as e:
                results["checks"].append(dict(op="int8", mode=mode, m=m, k=k, n=n, error=repr(e)[:2000]))
                log("int8 check FAILED", mode, m, k, n, "".join(traceback.format_exception(e))[-3000:])


def sweep_configs(k, n):
    cfgs = [ms.SkinnyConfig(64, 256, 4, 1), ms.SkinnyConfig(64, 128, 6, 1), ms.SkinnyConfig(64, 512, 3, 1),
            ms.SkinnyConfig(128, 256, 4, 1), ms.SkinnyConfig(128, 128, 6, 1), ms.SkinnyConfig(64, 256, 6, 1),
            ms.SkinnyConfig(64, 256, 4, 2)]
    if SMOKE:
        return [ms.SkinnyConfig(64, 128, 2, 1), ms.SkinnyConfig(64, 64, 2, 2)]
    if n <= 8192:
        cfgs += [ms.SkinnyConfig(64, 256, 4, 4), ms.SkinnyConfig(128, 256, 4, 2)]
    return cfgs


def main():
    results = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, date=time.strftime("%Y-%m-%d"),
                   checks=[], rows=[])
    out_dir = os.environ.get("OUT", ".")
    check_correctness(results)
    bf16 = jax.jit(lambda a, w: lax.dot_general(a, w, NT, preferred_element_type=jnp.bfloat16))
    for k, n in SHAPES:
        copies = rotation_count(n * k)
        best = {}
        for m in (16, 1):
            if time.time() - T0 > BUDGET_S:
                log("budget reached, stopping")
                break
            sets = fp8_operands(m, k, n, copies)
            bf_sets = [(s[0].astype(jnp.bfloat16), s[1].astype(jnp.bfloat16)) for s in sets[:rotation_count(2 * n * k)]]
            row = dict(m=m, k=k, n=n)
            row["xla_bf16_us"] = dev_time(bf16, bf_sets) * 1e6
            row["xla_fp8_us"] = dev_time(jax.jit(lambda *a: fp8_scaled_mm(*a, impl="xla")), sets) * 1e6
            row["triton_fp8_us"] = dev_time(jax.jit(lambda *a: fp8_scaled_mm(*a, impl="pallas")), sets) * 1e6
            cfgs = sweep_configs(k, n) if m == 16 else sorted(best, key=best.get)[:3]
            mos = {}
            for cfg in cfgs:
                try:
                    fn = jax.jit(lambda *a, cfg=cfg: fp8_scaled_mm_mosaic(*a, config=cfg))
                    mos[cfg] = dev_time(fn, sets) * 1e6
                except Exception as e:
                    log("mosaic fp8 failed", cfg, "".join(traceback.format_exception(e))[-2000:])
            if m == 16:
                best = mos
            if mos:
                c = min(mos, key=mos.get)
                row["mosaic_fp8_us"] = mos[c]
                row["mosaic_fp8_cfg"] = [c.block_n, c.block_k, c.stages, c.k_splits]
                row["mosaic_fp8_all"] = {f"{q.block_n}x{q.block_k}s{q.stages}k{q.k_splits}": v for q, v in mos.items()}
                # the kernel alone (pre-padded x, vectors ready, [N, m_pad] output)
                cfgf = c.fit(k, n)
                m_pad = -(-m // 8) * 8
                ksets = [(jnp.pad(s[0], ((0, m_pad - m), (0, 0))), s[1], s[3],
                          jnp.pad(s[2].reshape(m), (0, m_pad - m))) for s in sets]
                if cfgf.k_splits == 1:
                    kern = jax.jit(lambda xp, w, ws_, xs_: ms.skinny_wgmma(
                        xp, w, [ws_], [xs_], cfg=cfgf, epilogue=lambda a, r, cc: cc[0] * (r[0] * a),
                        out_dtype=jnp.bfloat16, interpret=_dispatch.pallas_interpret()))
                    row["mosaic_fp8_kernel_only_us"] = dev_time(kern, ksets) * 1e6
            isets = int8_operands(m, k, n, copies)
            row["xla_int8_us"] = dev_time(jax.jit(lambda x, w, xs, ws, b, adj: int8_scaled_mm(
                x, w, xs, ws, b, azp_adj=adj, impl="xla")), isets) * 1e6
            row["triton_int8_us"] = dev_time(jax.jit(lambda x, w, xs, ws, b, adj: int8_scaled_mm(
                x, w, xs, ws, b, azp_adj=adj, impl="pallas")), isets) * 1e6
            imos = {}
            for cfg in (sorted(best, key=best.get)[:2] if best else []):
                try:
                    fn = jax.jit(lambda x, w, xs, ws, b, adj, cfg=cfg: int8_scaled_mm_mosaic(
                        x, w, xs, ws, b, azp_adj=adj, config=cfg))
                    imos[cfg] = dev_time(fn, isets) * 1e6
                except Exception as e:
                    log("mosaic int8 failed", cfg, "".join(traceback.format_exception(e))[-2000:])
            if imos:
                c = min(imos, key=imos.get)
                row["mosaic_int8_us"] = imos[c]
                row["mosaic_int8_cfg"] = [c.block_n, c.block_k, c.stages, c.k_splits]
            wbytes = n * k
            for key in ("mosaic_fp8_us", "mosaic_int8_us", "triton_fp8_us", "mosaic_fp8_kernel_only_us"):
                if key in row:
                    row[key.replace("_us", "_GBps")] = wbytes / row[key] / 1e3
            results["rows"].append(row)
            log(json.dumps(row))
            with open(os.path.join(out_dir, "mosaic_decode.json"), "w") as f:
                json.dump(results, f, indent=1)
    print("| M | K | N | bf16 | xla fp8 | triton fp8 | mosaic fp8 (kernel only) | cfg | xla int8 | triton int8 | mosaic int8 |")
    for r in results["rows"]:
        print(f"| {r['m']} | {r['k']} | {r['n']} | {r['xla_bf16_us']:.1f} | {r['xla_fp8_us']:.1f} | "
              f"{r['triton_fp8_us']:.1f} | {r.get('mosaic_fp8_us', float('nan')):.1f} "
              f"({r.get('mosaic_fp8_kernel_only_us', float('nan')):.1f}) | {r.get('mosaic_fp8_cfg')} | "
              f"{r['xla_int8_us']:.1f} | {r['triton_int8_us']:.1f} | {r.get('mosaic_int8_us', float('nan')):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
