"""Markdown table of an MXFP4 results file written by benchmarks/table_mxfp4.py (for BENCHMARKS.md).

Usage: python benchmarks/summarize_mxfp4.py benchmarks/results/mxfp4_table_h100_2026-11-25.json [--auto AUTO.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SHAPE_ORDER = [(4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)]


def shape_class(m: int) -> str:
    return "decode" if m <= 16 else "small" if m <= 64 else "medium" if m <= 512 else "prefill"


def table(rows, auto):
    by = {}
    for r in rows:
        by.setdefault((r["k"], r["n"], r["m"]), {})[r["impl"]] = r

    def us(d, key):
        r = d.get(key)
        return math.nan if r is None else r["seconds"] * 1e6

    lines = ["| M | K | N | bf16 dense | XLA emulation | scaled_matmul | Pallas W4A4 (kernel) | Pallas W4A16 | "
             "W4A4 vs bf16 | W4A4 vs emulation | auto |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted(by, key=lambda t: (SHAPE_ORDER.index((t[0], t[1])) if (t[0], t[1]) in SHAPE_ORDER else 9, t[2]))
    for k, n, m in keys:
        d = by[(k, n, m)]
        dense, emu, sm, p4, p16 = (us(d, x) for x in ("xla_bf16_dense", "xla_emulation_w4a4", "jax_nn_scaled_matmul",
                                                       "pallas_w4a4", "pallas_w4a16"))
        kern = sum(v for name, v in d.get("pallas_w4a4", {}).get("kernels", {}).items() if name.startswith("mxfp4"))
        pick = auto.get("mxfp4_mm", {}).get(shape_class(m), "xla")
        f = lambda v: "-" if v != v else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {m} | {k} | {n} | {f(dense)} | {f(emu)} | {f(sm)} | {f(p4)} ({f(kern)}) | {f(p16)} | "
                     f"{dense / p4:.2f}x | {emu / p4:.2f}x | {pick} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--auto", default=None)
    a = p.parse_args(argv)
    data = json.loads(Path(a.results).read_text())
    auto = json.loads(Path(a.auto).read_text()) if a.auto else {}
    print(f"{data['device']}, {data['date']}\n")
    print(table(data["rows"], auto))


if __name__ == "__main__":
    main()
