"""Issue 16 sweep of the W4A4 MXFP4 decode GEMM on FP8 MMAs (``mxfp4_mm.pallas_triton_fp8mma``; benchmarks/NOTES.md
"Session 10, helper mx4fp8"): its named candidates against XLA's bf16 dense GEMM and ``impl="auto"`` W4A4 (the
Mosaic kernel on the load-time [K/32, N] scales with the fold, what a layer runs today) at the four 8B decode
shapes, M = 1 and 16, GPU kernel time (``tuner.profile_kernels``: every kernel of the call, the XLA prologue that
quantizes x and the split-K sum included; the top kernels are recorded), weights in enough copies to defeat L2
(``tuner.operands``). A candidate that fails to compile is reported and skipped; ``--deadline`` stops starting
new rows after that many seconds (the JSON is rewritten after every row).

``--check`` instead runs the exactness check (run it first, < 60 s): every candidate that the sweep times, compiled
for the GPU, against ``mxfp4_mm_xla`` with f32 output, bit for bit on data whose f32 sums are exact in any order
(x blocks on the E2M1 grid with scale bytes 127 / 128, weight scale bytes 126 / 127: every partial sum a multiple
of 1/8 below 2**21), so any mismatch is the kernel's (a block scale, the layout, or an FP8 accumulator that is not
exact on 32-product block sums); and on the benchmark's random operands within f32 summation error.

    PYTHONPATH=. python benchmarks/sweep_mxfp4_fp8mma.py --check --deadline 50 --out $OUT/mx4fp8_check.json
    PYTHONPATH=. python benchmarks/sweep_mxfp4_fp8mma.py --deadline 105 --out $OUT/mx4fp8_sweep.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_jax import kernels, quant  # noqa: E402
from quark_jax.kernels.mxfp4_mm import pallas_triton_fp8mma as f8  # noqa: E402
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla  # noqa: E402
from quark_jax.kernels.tuning import tuner  # noqa: E402

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192))  # (K, N)
# Candidates per M (at M = 16 a group is 2 MX blocks whatever ``cols`` says, so only the unroll / tile / split
# variants differ there); 48 rows with the baselines, ~100 s. The other named candidates run with ``--only``.
BY_M = {
    1: ("n64c16", "n128c16", "n64c16_hbm", "n64c16_jnp", "n64c16_xk", "n128c16_xk"),
    16: ("n64c32_u4", "n128c32_u2"),
}


def rows_for(m: int, k: int, n: int, only):
    sets = tuner.operands("mxfp4_mm", m, k, n)
    out = []
    if not only:
        kn_sets = tuner.mxfp4_load_time_sets(sets)
        dense_sets = [(x, quant.dequantize_mxfp4(w, s, jnp.bfloat16)) for x, w, s in sets]
        dense = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.bfloat16))
        out.append(("xla_bf16_dense", dense, dense_sets))

        def auto(x, w, s, s_kn=None):
            return kernels.mxfp4_mm(x, w, s, quantize_input=True, impl="auto", scales_kn=s_kn, fold=s_kn is not None)

        out.append(("auto_w4a4", jax.jit(auto), kn_sets))
    for name in (only or BY_M.get(m, BY_M[16])):
        out.append((f"fp8mma_{name}", jax.jit(functools.partial(f8.mxfp4_mm_fp8mma, config=name)), sets))
    return out


def _exact_operands(rng, m, k, n):
    nb = k // 32
    sx = rng.integers(127, 129, (m, nb))
    vals = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])[rng.integers(0, 8, (m, nb, 32))]
    vals = vals * np.where(rng.integers(0, 2, vals.shape) == 1, -1.0, 1.0)
    vals[:, :, 3] = 6.0  # the block amax: the quantizer recovers sx
    x = (vals * np.ldexp(1.0, sx - 127)[:, :, None]).reshape(m, k)
    wp = rng.integers(0, 256, (n, k // 2)).astype(np.uint8)
    ws = rng.integers(126, 128, (n, nb)).astype(np.uint8)
    return jnp.asarray(x, jnp.bfloat16), jnp.asarray(wp), jnp.asarray(ws)


def _shapes(a):
    return [tuple(map(int, s.split("x"))) for s in a.shapes] if a.shapes else list(SHAPES)


def _time(fn, sets):
    """(seconds per call, top kernels): GPU kernel time from a profile after one warm-up call; off a GPU the
    tuner's wall-clock time (smoke tests only)."""
    many = jax.jit(lambda ss: [fn(*s) for s in ss])
    jax.block_until_ready(many(sets))
    if jax.default_backend() != "gpu":
        return tuner.kernel_time(fn, sets), []
    return tuner.profile_kernels(many, sets)


@jax.jit
def _abs_dot(x, w, s):
    xq = jnp.abs(quant.qdq_mxfp4(x).astype(jnp.float32))
    wd = jnp.abs(quant.dequantize_mxfp4(w, s, jnp.float32))
    return lax.dot_general(xq, wd, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)


def check(a) -> int:
    """Exactness of every swept candidate on the GPU (see the module docstring)."""
    t0 = time.time()
    results, bad = [], 0
    rng = np.random.default_rng(0)
    shapes = _shapes(a)
    points = [(m, *shapes[0], name) for m in (1, 16) for name in BY_M[m] + (("n64c16_pr",) if m == 1 else ())]
    points += [(1, k, n, "n64c16") for k, n in shapes[1:]] + [(5, *shapes[-1], "n64c16")]
    for m, k, n, name in points:
        if a.deadline and time.time() - t0 > a.deadline:
            print("deadline reached: remaining points unchecked", flush=True)
            break
        x, wp, ws = _exact_operands(rng, m, k, n)
        xr, wr, sr = tuner.operands("mxfp4_mm", m, k, n, copies=1)[0]
        row = dict(m=m, k=k, n=n, name=name)
        try:
            fn = jax.jit(functools.partial(f8.mxfp4_mm_fp8mma, out_dtype=jnp.float32, config=name))
            got = np.asarray(fn(x, wp, ws))
            want = np.asarray(mxfp4_mm_xla(x, wp, ws, out_dtype=jnp.float32))
            row["exact_mismatches"] = int((got != want).sum())
            row["exact_max_abs_diff"] = float(np.abs(got - want).max())
            got_r = np.asarray(fn(xr, wr, sr), np.float64)
            want_r = np.asarray(mxfp4_mm_xla(xr, wr, sr, out_dtype=jnp.float32), np.float64)
            mag = np.asarray(_abs_dot(xr, wr, sr), np.float64)  # sum |x_k w_k| per output, on the device
            row["random_max_err_over_mag"] = float((np.abs(got_r - want_r) / np.maximum(mag, 1e-30)).max())
            row["ok"] = row["exact_mismatches"] == 0 and row["random_max_err_over_mag"] <= k * 2.0 ** -23
        except Exception as e:  # noqa: BLE001  a candidate that fails to compile is reported, not fatal
            row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
        bad += not row["ok"]
        results.append(row)
        print(json.dumps(row), f"[{time.time() - t0:.0f} s]", flush=True)
        Path(a.out).write_text(json.dumps(dict(device=str(jax.devices()[0]), check=results), indent=1))
    print(f"check: {len(results) - bad} ok, {bad} failed", flush=True)
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--check", action="store_true", help="the exactness check instead of the sweep")
    p.add_argument("--m", type=int, nargs="+", default=[1, 16])
    p.add_argument("--only", nargs="*", default=None, help="candidate names (default: BY_M, plus the baselines)")
    p.add_argument("--shapes", nargs="*", default=None, help="KxN (default: the four 8B decode shapes)")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new row starts")
    a = p.parse_args(argv)
    if a.check:
        return check(a)
    results = []
    t0 = time.time()
    for m in a.m:
        for k, n in _shapes(a):
            base = None
            for name, fn, sets in rows_for(m, k, n, a.only):
                if a.deadline and time.time() - t0 > a.deadline:
                    print("deadline reached: remaining rows untimed", flush=True)
                    return 0
                try:
                    t, top = _time(fn, sets)
                except Exception as e:  # noqa: BLE001  a candidate that fails to compile is reported, not fatal
                    print(f"M={m} {k}x{n} {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                base = t if name == "xla_bf16_dense" else base
                wbytes = n * k // 2 + n * k // 32
                main_us = sum(us for kname, us, _ in top if "fp8mma" in kname) or None  # the Pallas kernel alone
                row = dict(m=m, k=k, n=n, name=name, us=t * 1e6, tbps=wbytes / t / 1e12,
                           vs_bf16=(base / t) if base else None, top=top, kernel_us=main_us,
                           kernel_tbps=wbytes / main_us / 1e6 if main_us else None)
                results.append(row)
                print(f"M={m:2d} {k:5d}x{n:<5d} {name:24s} {t * 1e6:7.2f} us  {row['tbps']:.2f} TB/s(weights)  "
                      f"x{row['vs_bf16'] or 0:.2f} vs bf16  kernel {main_us or 0:.2f} us "
                      f"{row['kernel_tbps'] or 0:.2f} TB/s  top {top[:4]}  [{time.time() - t0:.0f} s]", flush=True)
                Path(a.out).write_text(json.dumps(dict(device=str(jax.devices()[0]), rows=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
