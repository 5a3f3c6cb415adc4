"""Markdown tables for BENCHMARKS.md from bench_gemm.py JSON files (any timing mode).

``python benchmarks/summarize_kernel_run.py results/fp8_...json [results/int8_...json ...]``: one table per file,
one row per (M, K, N), one column per implementation (us), plus the Pallas row's GB/s and TFLOP/s and its ratio
to each other implementation, and what the checked-in ``impl="auto"`` table picks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_jax.kernels._dispatch import TUNING_DIR, shape_class  # noqa: E402

OPS = {"fp8": "fp8_scaled_mm", "int8": "int8_scaled_mm", "mxfp4": "mxfp4_mm"}
MAIN = {"fp8": "pallas", "int8": "pallas", "mxfp4": "pallas_w4a4"}
BASE = {"fp8": "xla_bf16", "int8": "xla_bf16", "mxfp4": "xla_bf16_dense"}
QUANT_XLA = {"fp8": "xla_fp8", "int8": "xla_int8", "mxfp4": "xla_emulation_w4a4"}


def auto_pick(op, m, k, n, table):
    entry = table.get(OPS[op], {})
    cls = shape_class(m)
    return entry.get(f"{cls}@{k}x{n}", entry.get(cls, "xla"))


def table_for(path, auto_table):
    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    op = rows[0]["op"]
    impls = []
    for r in rows:
        if r["impl"] not in impls and r["impl"] != "auto":
            impls.append(r["impl"])
    keys = sorted({(r["m"], r["k"], r["n"]) for r in rows}, key=lambda t: (t[1], t[2], t[0]))
    main, base, qx = MAIN[op], BASE[op], QUANT_XLA[op]
    out = [f"{d['device']}, {d['date']}, timing: {d.get('timing', '?')} (`{path}`)", "",
           "| M | K | N | " + " | ".join(f"{i} us" for i in impls)
           + f" | {main} GB/s | {main} TFLOP/s | {main} vs {base} | {main} vs {qx} | auto | auto vs {base} |",
           "|" + "---|" * (len(impls) + 9)]
    for m, k, n in keys:
        rr = {r["impl"]: r for r in rows if (r["m"], r["k"], r["n"]) == (m, k, n)}
        t = {i: rr[i]["seconds"] * 1e6 for i in impls if i in rr}
        p = rr.get(main)
        pick = auto_pick(op, m, k, n, auto_table)
        auto_t = t.get(main) if pick == "pallas" else t.get(qx)
        cells = [f"{t[i]:.1f}" if i in t and t[i] == t[i] else "-" for i in impls]
        out.append(f"| {m} | {k} | {n} | " + " | ".join(cells)
                   + f" | {p['gbps']:.0f} | {p['tflops']:.0f} | {t[base] / t[main]:.2f}x | {t[qx] / t[main]:.2f}x"
                   + f" | {pick} | {t[base] / auto_t:.2f}x |")
    return "\n".join(out)


def main(argv):
    auto_table = {}
    for f in TUNING_DIR.glob("nvidia_h100*.json"):
        auto_table = json.loads(f.read_text())
    for path in argv:
        print(table_for(path, auto_table))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
