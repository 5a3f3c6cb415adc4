"""benchmarks/bench_e2e.py in its tiny CPU configuration: checkpoints written through the library's quantizers load
and generate, and the report has every field (the GPU numbers live in BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_e2e  # noqa: E402
from benchmarks.profile_decode import summarize  # noqa: E402


def test_tiny_configuration_runs_and_reports(tmp_path):
    out = tmp_path / "r.json"
    res = bench_e2e.main(["--shape", "tiny", "--schemes", "fp8", "--dir", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    r = res["schemes"]["fp8"]
    assert "error" not in r, r.get("error")
    assert r["load_gbs"] > 0 and r["first_call_s"] > 0 and r["decode"]["1"]["ms_per_token"] > 0
    assert r["prefill"]["16"]["tok_s"] > 0
    assert not (tmp_path / "tiny_fp8").exists()  # deleted after measuring
    # bytes per decode step: FP8 linears (1 byte) + bf16 norms, lm_head and 1 embedding row + the bf16 KV cache
    c = bench_e2e.model_config("tiny", 256)
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = 2 * L * 1 * 24 * c["num_key_value_heads"] * (h // c["num_attention_heads"]) * 2
    linear = L * (h * (h + 2 * h // 2) + h * h + 3 * h * i)  # q + k + v (2 of 4 heads), o, gate/up/down
    scales = L * 4 * 12  # per fused linear: weight scale, input scale and its stored reciprocal, float32
    assert r["decode"]["1"]["bytes_per_step"] == linear + scales + 2 * (L * 2 * h + h + v * h + h) + kv


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
    from quark_jax.quant import dequantize_int4

    w8 = jnp.concatenate([w, -w], axis=0)  # N = 8: one packed word per row of K
    q = bench_e2e.quantized_linear("int4", w8, group_size=32)
    assert q["weight"].shape == (64, 1) and q["weight_scale"].shape == (2, 8) and not q["weight_zero_point"].any()
    s = np.abs(np.asarray(w8)).reshape(8, 2, 32).max(-1).T / 7.5  # Quark's symmetric scale amax / 7.5
    np.testing.assert_allclose(q["weight_scale"], s, rtol=1e-6)
    deq = np.asarray(dequantize_int4(q["weight"], q["weight_scale"], group_size=32))
    assert np.all(np.abs(deq - np.asarray(w8)) <= np.repeat(s.T, 32, axis=1) * 0.5 + 1e-9)


def test_profile_summary_counts_kernels_gaps_and_classes():
    events = [(0.0, 10.0, "gemv_kernel"), (12.0, 3.0, "loop_add_fusion"), (15.0, 5.0, "input_reduce_fusion"),
              (30.0, 10.0, "gemv_kernel"), (40.0, 2.0, "memcpy")]
    s = summarize(events, steps=2)
    assert s["kernels_per_step"] == 2.5 and s["busy_us_per_step"] == 15.0
    assert s["span_us_per_step"] == 21.0 and s["gap_us_per_step"] == 6.0  # gaps 2 and 10
    assert s["by_class"]["gemm_cublas"]["us_per_step"] == 10.0


def test_set_applies_a_library_switch_and_rejects_unknown_names(monkeypatch):
    """``--set module.ATTR=value`` (benchmarks/knobs.py): JSON values decoded, strings kept, the child-process code
    applies the same values, a missing attribute or module exits naming it."""
    from benchmarks import knobs
    from quark_jax.kernels.grouped_mm import pallas_triton

    monkeypatch.setattr(pallas_triton, "MIN_PROGRAMS", pallas_triton.MIN_PROGRAMS)  # restored after the test
    monkeypatch.setattr(pallas_triton, "FP8_PREFILL_MMA", pallas_triton.FP8_PREFILL_MMA)
    done = knobs.apply_sets(["quark_jax.kernels.grouped_mm.pallas_triton.MIN_PROGRAMS=96",
                             "quark_jax.kernels.grouped_mm.pallas_triton.FP8_PREFILL_MMA=native"])
    assert (pallas_triton.MIN_PROGRAMS, pallas_triton.FP8_PREFILL_MMA) == (96, "native")
    assert done == {"quark_jax.kernels.grouped_mm.pallas_triton.MIN_PROGRAMS": 96,
                    "quark_jax.kernels.grouped_mm.pallas_triton.FP8_PREFILL_MMA": "native"}
    ns = {}
    exec(knobs.set_code(["quark_jax.kernels.grouped_mm.pallas_triton.MIN_PROGRAMS=7"]), ns)
    assert pallas_triton.MIN_PROGRAMS == 7
    with pytest.raises(SystemExit, match="has no attribute 'MIN_PROGRAM'"):
        knobs.apply_sets(["quark_jax.kernels.grouped_mm.pallas_triton.MIN_PROGRAM=1"])
    with pytest.raises(SystemExit, match="cannot import 'quark_jax.nope'"):
        knobs.apply_sets(["quark_jax.nope.X=1"])
    with pytest.raises(SystemExit, match="expected module.ATTR=value"):
        knobs.apply_sets(["MIN_PROGRAMS"])
