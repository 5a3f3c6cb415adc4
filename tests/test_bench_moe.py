"""benchmarks/bench_moe.py in its tiny CPU configuration: a Mixtral-shaped FP8 checkpoint written in Quark's
per-expert layout loads and generates, and the active floor counts only the top-k experts' bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_moe  # noqa: E402


def test_tiny_mixtral_fp8_runs_and_counts_active_bytes(tmp_path):
    out = tmp_path / "r.json"
    res = bench_moe.main(["--shape", "tiny-mixtral", "--schemes", "fp8", "--dir", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    r = res["schemes"]["fp8"]
    assert "error" not in r, r.get("error")
    assert r["load_gbs"] > 0 and r["first_call_s"] > 0 and r["prefill"]["8"]["tok_s"] > 0
    d = r["decode"]["1"]
    assert d["ms_per_token"] > 0 and d["x_floor"] > 0
    assert not (tmp_path / "tiny-mixtral_fp8").exists()  # deleted after measuring
    g = bench_moe.geometry(res["config"])
    h, i, e, k, L, v = g["h"], g["i"], g["e"], g["k"], g["layers"], g["v"]
    # per layer: fused qkv + o (fp8 bytes; scalar weight scale, input scale and its stored reciprocal, f32), the
    # experts [E, N, K] fp8 with per-expert weight scales [E] and one input scale, the bf16 router [E, h] and two
    # bf16 norms
    attn = (g["nq"] + 2 * g["nkv"]) * h + h * g["nq"] + 2 * 12
    experts = e * (2 * i * h + h * i) + 2 * (4 * e + 4)
    dense = attn + 2 * e * h + 2 * 2 * h
    kv = 2 * L * 1 * 16 * g["nkv"] * 2  # cache of prompt 8 + 8 new tokens, bf16
    head = 2 * h + 2 * h + 2 * v * h  # one embedding row, final norm, lm_head
    assert d["all_expert_bytes"] == L * (dense + experts) + head + kv
    assert d["active_bytes"] == L * (dense + experts * k // e) + head + kv  # top-2 of 4 experts at batch 1
