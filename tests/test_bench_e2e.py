"""benchmarks/bench_e2e.py in its tiny CPU configuration: checkpoints written through the library's quantizers load
and generate, and the report has every field (the GPU numbers live in BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_e2e  # noqa: E402
from benchmarks.profile_decode import summarize  # noqa: E402


def test_tiny_configuration_runs_and_reports(tmp_path):
    out = tmp_path / "r.json"
    res = bench_e2e.main(["--shape", "tiny", "--schemes", "bf16,fp8", "--dir", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for scheme in ("bf16", "fp8"):
        r = res["schemes"][scheme]
        assert "error" not in r, r.get("error")
        assert r["load_gbs"] > 0 and r["first_call_s"] > 0 and r["decode"]["1"]["ms_per_token"] > 0
        assert r["prefill"]["16"]["tok_s"] > 0
        assert not (tmp_path / f"tiny_{scheme}").exists()  # deleted after measuring
    # bytes per decode step: the FP8 checkpoint's linears are a quarter of the float32... here: bf16 vs fp8 weights
    assert res["schemes"]["fp8"]["decode"]["1"]["bytes_per_step"] < res["schemes"]["bf16"]["decode"]["1"]["bytes_per_step"]


def test_quantized_linear_goes_through_the_library_quantizers():
    import jax.numpy as jnp

    w = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)) * 0.02, jnp.float32)
    t = bench_e2e.quantized_linear("fp8", w)
    deq = t["weight"].astype(np.float32) * t["weight_scale"]
    assert t["weight"].dtype.name == "float8_e4m3fn" and t["weight_scale"].shape == ()
    assert float(t["weight_scale"]) == np.float32(np.abs(np.asarray(w)).max() / 448)
    np.testing.assert_allclose(deq, np.asarray(w), atol=float(t["weight_scale"]) * 16)
    m = bench_e2e.quantized_linear("mxfp4", w)
    assert m["weight"].shape == (4, 32) and m["weight_scale"].shape == (4, 2)


def test_profile_summary_counts_kernels_gaps_and_classes():
    events = [(0.0, 10.0, "gemv_kernel"), (12.0, 3.0, "loop_add_fusion"), (15.0, 5.0, "input_reduce_fusion"),
              (30.0, 10.0, "gemv_kernel"), (40.0, 2.0, "memcpy")]
    s = summarize(events, steps=2)
    assert s["kernels_per_step"] == 2.5 and s["busy_us_per_step"] == 15.0
    assert s["span_us_per_step"] == 21.0 and s["gap_us_per_step"] == 6.0  # gaps 2 and 10
    assert s["by_class"]["gemm_cublas"]["us_per_step"] == 10.0
