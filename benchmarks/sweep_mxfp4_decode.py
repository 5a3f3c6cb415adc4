"""Issue 16 decode sweep of the one-kernel MXFP4 decode GEMM (``mxfp4_mm.pallas_triton_gemv``; benchmarks/NOTES.md
"Session 9, helper mx4dec"): every named candidate against XLA's bf16 dense GEMM and ``impl="auto"`` (the Mosaic
kernel today) at the four 8B decode shapes, GPU kernel time (``tuner.kernel_time``: every kernel of the call,
split-K sums included), weights in enough copies to defeat L2 (``tuner.operands``).

Rows per (M, K, N): ``xla_bf16_dense`` (the baseline), ``auto_w4a4`` / ``auto_w4a16`` (``impl="auto"`` on the
load-time [K/32, N] scales with the fold, what a layer runs today), ``gemv_<name>_w4a4`` (activation quant-dequant
inside the kernel unless the candidate says ``act="xla"``) and, at M = 1, ``gemv_<name>_w4a16``; every gemv row
with the folded decode (the test weights' scale bytes are <= 128, as the schemes' load-time check requires). A
candidate that fails to compile is reported and skipped.

    PYTHONPATH=. python benchmarks/sweep_mxfp4_decode.py --out $OUT/mx4dec_sweep.json [--m 1 16] [--only n64k512]
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
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_jax import kernels, quant  # noqa: E402
from quark_jax.kernels.mxfp4_mm import pallas_triton_gemv as gemv  # noqa: E402
from quark_jax.kernels.tuning import tuner  # noqa: E402

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192))  # (K, N)
M1_ONLY = ("n64k512_xq", "n128k256_xq")  # act="xla" matters only for W4A4 at M > 1: skipped at M = 1


def rows_for(m: int, k: int, n: int, only) -> list[tuple[str, object, list]]:
    sets = tuner.operands("mxfp4_mm", m, k, n)
    kn_sets = tuner.mxfp4_load_time_sets(sets)
    dense_sets = [(x, quant.dequantize_mxfp4(w, s, jnp.bfloat16)) for x, w, s in sets]
    dense = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.bfloat16))
    out = [("xla_bf16_dense", dense, dense_sets)]
    for q, tag in ((True, "w4a4"), (False, "w4a16")):
        def auto(x, w, s, s_kn=None, q=q):
            return kernels.mxfp4_mm(x, w, s, quantize_input=q, impl="auto", scales_kn=s_kn, fold=s_kn is not None)

        out.append((f"auto_{tag}", jax.jit(auto), kn_sets))
    for name in gemv.CANDIDATES:
        if only and name not in only:
            continue
        for q, tag in ((True, "w4a4"), (False, "w4a16")):
            if (m == 1 and name in M1_ONLY) or (m > 1 and not q):
                continue
            fn = jax.jit(functools.partial(gemv.mxfp4_mm_gemv, quantize_input=q, config=name, fold=True))
            out.append((f"gemv_{name}_{tag}", fn, sets))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--m", type=int, nargs="+", default=[1, 16])
    p.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    p.add_argument("--shapes", nargs="*", default=None, help="KxN (default: the four 8B decode shapes)")
    a = p.parse_args(argv)
    results = []
    t0 = time.time()
    for m in a.m:
        for k, n in ([tuple(map(int, s.split("x"))) for s in a.shapes] if a.shapes else SHAPES):
            base = None
            for name, fn, sets in rows_for(m, k, n, a.only):
                try:
                    t = tuner.kernel_time(fn, sets)
                except Exception as e:  # noqa: BLE001  a candidate that fails to compile is reported, not fatal
                    print(f"M={m} {k}x{n} {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                base = t if name == "xla_bf16_dense" else base
                wbytes = n * k // 2 + n * k // 32
                row = dict(m=m, k=k, n=n, name=name, us=t * 1e6, tbps=wbytes / t / 1e12,
                           vs_bf16=(base / t) if base else None)
                results.append(row)
                print(f"M={m:2d} {k:5d}x{n:<5d} {name:28s} {t * 1e6:7.2f} us  {row['tbps']:.2f} TB/s(weights)  "
                      f"x{row['vs_bf16'] or 0:.2f} vs bf16   [{time.time() - t0:.0f} s]", flush=True)
                Path(a.out).write_text(json.dumps(dict(device=str(jax.devices()[0]), rows=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
