"""Print the session 9 int4dec bench rows (bench_gemm --json files) as one line per point: us per row name.

Usage: python benchmarks/int4dec_summary.py A.json [B.json ...]
"""
import json
import sys

for path in sys.argv[1:]:
    rows = json.load(open(path))["rows"]
    pts = {}
    for r in rows:
        pts.setdefault((r["op"], r["m"], r["k"], r["n"]), []).append(r)
    for (op, m, k, n), rs in pts.items():
        base = next((r["seconds"] for r in rs if r["name"] == "xla_bf16"), None)
        cells = [f"{r['name']}={r['seconds'] * 1e6:.1f}" + (f"({base / r['seconds']:.2f}x)" if base else "")
                 for r in sorted(rs, key=lambda r: r["seconds"] if r["seconds"] == r["seconds"] else 1e9)]
        print(f"{op} M={m} {k}x{n}: " + " ".join(cells))
