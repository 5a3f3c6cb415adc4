"""Markdown summary of a bench_gemm.py JSON for the fp8 op: per shape and M, each implementation's time, and the
Pallas kernel's and ``impl="auto"``'s ratios to XLA bf16 and XLA fp8 (runs anywhere; no GPU needed).

    python benchmarks/summarize_fp8.py bench.json [--table quark_jax/kernels/tuning/<device>.json]

``auto`` is the implementation the table picks for the shape class (``_dispatch.shape_class``); its time is that
implementation's time measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_jax.kernels._dispatch import shape_class  # noqa: E402


def summarize(doc: dict, table: dict) -> str:
    picks = table.get("fp8_scaled_mm", {})
    by_shape: dict = {}
    for r in doc["rows"]:
        if r["op"] == "fp8":
            by_shape.setdefault((r["k"], r["n"], r["m"]), {})[r["impl"]] = r
    lines = [f"Device: {doc['device']}; {doc['date']}; timing: {doc.get('timing', 'wall')}.", "",
             "| M | K | N | Pallas us | XLA fp8 us | XLA bf16 us | torch rowwise us | Pallas GB/s | Pallas TFLOP/s "
             "| Pallas vs bf16 | Pallas vs XLA fp8 | auto picks | auto vs XLA fp8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (k, n, m), impls in sorted(by_shape.items()):
        def us(name):
            r = impls.get(name) or next((v for key, v in impls.items() if key.startswith(name)), None)
            return r["seconds"] * 1e6 if r and r["seconds"] == r["seconds"] else float("nan")

        p, x8, b16, tr = us("pallas"), us("xla_fp8"), us("xla_bf16"), us("torch_scaled_mm")
        pick = picks.get(shape_class(m), "xla")
        auto = p if pick == "pallas" else x8
        pr = impls.get("pallas", {})
        lines.append(f"| {m} | {k} | {n} | {p:.1f} | {x8:.1f} | {b16:.1f} | {tr:.1f} | {pr.get('gbps', 0):.0f} | "
                     f"{pr.get('tflops', 0):.0f} | {b16 / p:.2f}x | {x8 / p:.2f}x | {pick} | {x8 / auto:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--table", default=None)
    a = p.parse_args(argv)
    doc = json.loads(Path(a.json).read_text())
    table = json.loads(Path(a.table).read_text()) if a.table else {}
    print(summarize(doc, table))


if __name__ == "__main__":
    main()
