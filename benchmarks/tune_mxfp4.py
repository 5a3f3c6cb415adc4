"""Tune the MXFP4 ``impl="pallas"`` path on a GPU: at each (M, K, N) point time the candidate configs (fused kernel
tilings and K splits, the dequantize-then-GEMM path) by GPU kernel time through ``mxfp4_mm_pallas`` (W4A4, the
activation quantization included), check each against the first candidate's output, and print / save the
winners as ``pallas_triton.TUNED`` entries. With ``--bench`` the winners are installed in this process and
``bench_gemm.py --ops mxfp4`` runs on them (the published table).

Usage (repo root, on the device):
    PYTHONPATH=. python benchmarks/tune_mxfp4.py [--shapes 4096x14336,...] [--m 16,64,256,2048,8192]
        [--json OUT.json] [--deadline S] [--bench BENCH.json --bench-m 1,16,...] [--bench-deadline S]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from quark_jax.kernels import tiling, tuning  # noqa: E402
from quark_jax.kernels.mxfp4_mm import dequant_gemm, pallas_triton  # noqa: E402
from quark_jax.kernels.tuning import tuner  # noqa: E402
from gemm_int8 import bf16_case  # noqa: E402

F = pallas_triton.Config
D = dequant_gemm.Config
SMS = 132


def _split_for(tiles: int, k: int, block_k: int, target: int) -> int:
    """The K split (a power of two <= 8) that brings ``tiles`` programs to ``target``, keeping ``block_k`` whole
    and at least two K steps per program."""
    s = 1
    while tiles * s < target and s < 8 and k % (2 * s * block_k) == 0 and k // (2 * s) >= 2 * block_k:
        s *= 2
    return s


def candidates(m: int, k: int, n: int) -> list:
    """Configs to time at (m, k, n): the shipped default first, then the alternatives of M's class."""
    out = [pallas_triton.default_config(m, k, n, table={})]
    cls = tiling.shape_class(m)
    if cls == "decode":
        # occupancy from the sm_90 compile (Triton 3.6, registers / shared memory): 64x512 st3 2 CTAs per SM
        # (211 registers, 84 KB), 64x256 st2/st3 4 CTAs (116 registers, 25 / 42 KB), 128x256 w8 2 CTAs (16 warps)
        for (bn, bk, nw, st, dec), targets in (((64, 512, 4, 3, "asm"), (2 * SMS,)),
                                               ((64, 256, 4, 3, "asm"), (4 * SMS,)),
                                               ((64, 256, 4, 2, "asm"), (4 * SMS,)),
                                               ((128, 256, 8, 3, "asm"), (2 * SMS,))):
            tiles = n // bn
            for target in targets:
                s = _split_for(tiles, k, bk, target)
                out.append(F(block_m=16, block_n=bn, block_k=bk, split_k=s, num_warps=nw, num_stages=st, decode=dec))
    elif cls in ("small", "medium"):
        out.append(D(block_n=32, block_k=512))
        bm = 64 if m <= 64 else 128
        tiles = (n // 64) * -(-m // bm)
        if cls == "medium":
            out.append(F(block_m=bm, block_n=64, block_k=256, split_k=_split_for(tiles, k, 256, 2 * SMS), num_warps=4,
                         num_stages=3, group_m=4))
    else:
        out = (out if m <= 2048 else []) + [D(block_n=32, block_k=512), D(method="xla")]
    uniq = []
    for c in out:
        c = dequant_gemm.fit(c, k, n) if isinstance(c, D) else pallas_triton.fit(c, m, k, n)
        if c not in uniq:
            uniq.append(c)
    return uniq


def label(cfg) -> str:
    if isinstance(cfg, D):
        return f"dequant_{cfg.method}_{cfg.block_n}x{cfg.block_k}_w{cfg.num_warps}"
    return (f"fused_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_s{cfg.split_k}_w{cfg.num_warps}_st{cfg.num_stages}"
            f"_{cfg.decode}")


def sweep(shapes, ms, deadline):
    """(rows, winners): every timing, and per table key the config with the smallest worst ratio to the fastest
    at the points that share the key (M = 2048 and 8192 both fall in the "max" bucket)."""
    rows, ratios = [], {}
    try:
        _sweep_points(shapes, ms, deadline, rows, ratios)
    finally:
        winners = {key: min(by.values(), key=lambda v: (len(v[1]) < max(len(w[1]) for w in by.values()),
                                                         max(v[1])))[0]
                   for key, by in ratios.items()}
    return rows, winners


def _sweep_points(shapes, ms, deadline, rows, ratios):
    for m in ms:
        for k, n in shapes:
            if deadline and time.monotonic() > deadline:
                print(f"deadline: stop before M={m} {k}x{n}", flush=True)
                return
            sets = tuner.operands("mxfp4_mm", m, k, n)
            ref_out, timed = None, []
            for cfg in candidates(m, k, n):
                fn = jax.jit(lambda x, p, s, cfg=cfg: pallas_triton.mxfp4_mm_pallas(x, p, s, config=cfg))
                row = dict(m=m, k=k, n=n, name=label(cfg), config=repr(cfg))
                try:
                    out = np.asarray(fn(*sets[0]).astype(jnp.float32))
                    if ref_out is None:
                        ref_out = out
                    err = float(np.linalg.norm(out - ref_out) / max(np.linalg.norm(ref_out), 1e-30))
                    row["rel_err_vs_first"] = err
                    row["seconds"] = tuner.kernel_time(fn, sets) if err < 1e-2 and np.isfinite(out).all() else math.nan
                except Exception as e:  # a candidate that does not compile is recorded, not fatal
                    row["seconds"], row["error"] = math.nan, repr(e)[:400]
                rows.append(row)
                t = row["seconds"]
                print(f"M={m:5d} {k}x{n}: {row['name']:48s} {t * 1e6 if t == t else float('nan'):9.1f} us "
                      f"err={row.get('rel_err_vs_first', float('nan')):.1e} {row.get('error', '')[:120]}", flush=True)
                if t == t:
                    timed.append((t, cfg))
            if tiling.shape_class(m) == "decode":  # bench_gemm times the decode baseline
                t_bf16 = math.nan
            else:
                t_bf16 = _time_bf16(m, k, n, sets)
            rows.append(dict(m=m, k=k, n=n, name="xla_bf16_dense", seconds=t_bf16))
            if timed:
                fastest = min(t for t, _ in timed)
                print(f"M={m:5d} {k}x{n}: xla_bf16_dense {t_bf16 * 1e6:9.1f} us; best mxfp4 {fastest * 1e6:.1f} us = "
                      f"{t_bf16 / fastest:.2f}x bf16", flush=True)
                by = ratios.setdefault(tiling.table_key(tiling.m_bucket(m), k, n), {})
                for t, cfg in timed:
                    by.setdefault(label(cfg), (cfg, []))[1].append(t / fastest)


def _time_bf16(m, k, n, sets):
    """GPU kernel time of the bf16 dense GEMM on the dequantized weights (benchmarks/gemm_int8.bf16_case)."""
    base = bf16_case(tuner.Point(op="mxfp4_mm", m=m, k=k, n=n), sets,
                             lambda **kw: types.SimpleNamespace(**kw), name="xla_bf16_dense")
    try:
        return tuner.kernel_time(base.fn, base.arg_sets)
    except Exception as e:
        print(f"bf16 dense failed: {e!r}"[:300], flush=True)
        return math.nan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in tuner.STANDARD_SHAPES))
    p.add_argument("--m", default="16,2048,8192,64,256", help="in this order (the deadline cuts the last)")
    p.add_argument("--json", default=None)
    p.add_argument("--deadline", type=float, default=None)
    p.add_argument("--bench", default=None, metavar="BENCH.json")
    p.add_argument("--bench-m", default="1,16,64,256,2048,8192")
    p.add_argument("--bench-deadline", type=float, default=None)
    a = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    deadline = time.monotonic() + a.deadline if a.deadline else None
    kind, cc = tuning.current_device()
    ms = [int(v) for v in a.m.split(",")]
    rows, winners = sweep(shapes, ms, deadline)
    # a swept shape's "max@KxN" entry would also serve its smaller buckets (tiling.lookup walks upward): pin every
    # bucket of the list that was not reached to the shipped default, so only measured choices change
    for k, n in shapes:
        if tiling.table_key("max", k, n) in winners:
            for m in ms:
                winners.setdefault(tiling.table_key(tiling.m_bucket(m), k, n),
                                   pallas_triton.default_config(m, k, n, table={}))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("TUNED = {")
    for key, cfg in winners.items():
        print(f"    {key!r}: {cfg!r},")
    print("}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(device=kind, date=stamp, timing="kernel", rows=rows,
                                                winners={kk: repr(v) for kk, v in winners.items()}), indent=1))
    if a.bench:
        import bench_gemm
        import gemm_mxfp4

        pallas_triton.TUNED[tuning.device_key(kind)] = dict(winners)
        tuner.CANDIDATES = ("pallas",)  # the emulation's times are on record (250-620 us); not re-timed
        gemm_mxfp4.SCALED_MATMUL = False
        args = ["--ops", "mxfp4", "--m", a.bench_m, "--shapes", a.shapes, "--json", a.bench]
        if a.bench_deadline:
            args += ["--deadline", str(a.bench_deadline)]
        return bench_gemm.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
