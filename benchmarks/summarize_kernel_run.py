"""Markdown tables for BENCHMARKS.md from a bench_gemm.py JSON file.

``python benchmarks/summarize_kernel_run.py results/gemm_h200_2026-12-02_kernel.json``: per op, one row per
(M, K, N) with each implementation's kernel time (us), the fastest of pallas / xla, what ``auto`` ran (and from
which table) and its ratio to that fastest; ``ok`` where auto is within 10% and not the MXFP4 emulation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_jax.kernels.tuning import tuner  # noqa: E402


def tables(path: str) -> str:
    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    misses = {(r["op"], r["m"], r["k"], r["n"]) for r in tuner.auto_misses(rows)}
    out = [f"{d['device']}, {d['date']}, timing: {d['timing']} (`{path}`)"]
    for op in dict.fromkeys(r["op"] for r in rows):
        names = list(dict.fromkeys(r["name"] for r in rows if r["op"] == op))
        out += ["", f"**{op}**", "", "| M | K | N | " + " | ".join(f"{n} us" for n in names)
                + " | fastest | auto ran | auto / fastest | |", "|" + "---|" * (len(names) + 7)]
        points = sorted({(r["m"], r["k"], r["n"]) for r in rows if r["op"] == op}, key=lambda p: (p[0], p[1], p[2]))
        for m, k, n in points:
            rr = {r["name"]: r for r in rows if (r["op"], r["m"], r["k"], r["n"]) == (op, m, k, n)}
            t = {name: r["seconds"] * 1e6 for name, r in rr.items()}
            cand = {c: t[c] for c in tuner.CANDIDATES if c in t and t[c] == t[c]}
            fastest = min(cand, key=cand.get) if cand else "-"
            auto = rr.get("auto")
            ran = f"{auto['auto_impl']} ({auto['auto_source']})" if auto else "-"
            ratio = f"{t['auto'] / cand[fastest]:.2f}" if auto and cand else "-"
            verdict = "MISS" if (op, m, k, n) in misses else ("ok" if auto else "")
            cells = [f"{t[nm]:.1f}" if nm in t and t[nm] == t[nm] else "-" for nm in names]
            out.append(f"| {m} | {k} | {n} | " + " | ".join(cells) + f" | {fastest} | {ran} | {ratio} | {verdict} |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(tables(p))
        print()
