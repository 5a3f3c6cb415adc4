"""MXFP4 prefill sweep of the dequantize-then-GEMM path (issue 16; benchmarks/NOTES.md "Session 9, helper mxdeq").

Per point (M, K x N): XLA's bf16 GEMM on the dequantized weight (the baseline) and the ``gemm_mxfp4.PREFILL_SWEEP``
rows (W4A4 from bf16 x, activation quant-dequant timed), each by GPU kernel time with its top kernels (the time
split per kernel: dequant, activation passes, GEMM), its relative error against the XLA reference
(``mxfp4_mm_xla``, bf16 out) and whether its output equals ``dq_base``'s bit for bit (same GEMM on the same operands:
the activation passes must agree exactly); ``fused_max`` is the fused kernel's prefill default (``DEFAULTS["max"]``)
for comparison. Rows run in the order given; no new row starts after ``--deadline``.

Usage (repo root, on the device):
    PYTHONPATH=. python benchmarks/mxdeq_sweep.py --m 2048,8192 --rows xla_bf16_dense,dq_base,dq_act_pallas
        [--shapes 4096x14336,14336x4096,4096x4096,8192x8192] [--deadline 140] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from gemm_mxfp4 import PREFILL_SWEEP  # noqa: E402

from quark_jax import quant  # noqa: E402
from quark_jax.kernels.mxfp4_mm import dequant_gemm, pallas_triton  # noqa: E402
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla  # noqa: E402
from quark_jax.kernels.tuning import tuner  # noqa: E402

SHAPES = "4096x14336,14336x4096,4096x4096,8192x8192"


def row_fn(name: str, m: int, k: int, n: int):
    """The jitted (x, w_packed, w_scales) -> bf16 [M, N] of a row name."""
    if name == "xla_bf16_dense":  # operands pre-dequantized by the caller
        return jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                                    preferred_element_type=jnp.bfloat16))
    if name == "fused_max":  # the fused kernel's prefill default (what the 8B fused shapes ran before session 9)
        cfg = pallas_triton.fit(pallas_triton.DEFAULTS["max"], m, k, n)
        return jax.jit(functools.partial(pallas_triton.mxfp4_mm_pallas, quantize_input=True, config=cfg))
    base = pallas_triton.default_config(m, k, n)
    if not isinstance(base, dequant_gemm.Config):  # a card without a prefill table entry: the H200's config
        base = dequant_gemm.Config(block_n=32, block_k=512)
    cfg = dequant_gemm.fit(dataclasses.replace(base, **PREFILL_SWEEP[name]), k, n)
    return jax.jit(functools.partial(pallas_triton.mxfp4_mm_pallas, quantize_input=True, config=cfg))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m", default="2048,8192")
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--rows", default="xla_bf16_dense,dq_base,dq_act_pallas")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new row starts")
    p.add_argument("--copies", type=int, default=None, help="weight copies per timing (default: the tuner's)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    t_end = time.monotonic() + a.deadline if a.deadline else None
    names = a.rows.split(",")
    for nm in names:
        if nm not in ("xla_bf16_dense", "fused_max") and nm not in PREFILL_SWEEP:
            raise SystemExit(f"--rows: unknown row {nm!r} (xla_bf16_dense, fused_max or one of "
                             f"{sorted(PREFILL_SWEEP)})")
    on_gpu = jax.default_backend() == "gpu"
    out = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, rows=[])

    def save():
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))

    for m in (int(v) for v in a.m.split(",")):
        for k, n in (tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")):
            sets = tuner.operands("mxfp4_mm", m, k, n, copies=a.copies)
            x, wp, ws = sets[0]
            want = np.asarray(mxfp4_mm_xla(x, wp, ws, quantize_input=True, out_dtype=jnp.bfloat16), np.float64)
            base_out = None
            for name in names:
                if t_end is not None and time.monotonic() > t_end:
                    print(f"deadline: M={m} {k}x{n} {name} not run", flush=True)
                    continue
                fn = row_fn(name, m, k, n)
                if name == "xla_bf16_dense":
                    rsets = [(s[0], quant.dequantize_mxfp4(s[1], s[2], jnp.bfloat16)) for s in sets]
                else:
                    rsets = sets
                rec = dict(m=m, k=k, n=n, name=name)
                try:
                    many = jax.jit(lambda ss, f=fn: [f(*s) for s in ss])  # one compile per row: it also checks
                    got = jax.block_until_ready(many(rsets))[0]
                    if name != "xla_bf16_dense":
                        g = np.asarray(got, np.float64)
                        rec["rel_err"] = float(np.linalg.norm(g - want) / np.linalg.norm(want))
                        if name == "dq_base":
                            base_out = g
                        elif base_out is not None:
                            rec["equal_to_dq_base"] = bool(np.array_equal(g, base_out))
                    if on_gpu:
                        sec, top = tuner.profile_kernels(many, rsets)
                        rec.update(us=sec * 1e6, top=top)
                    else:
                        t0 = time.perf_counter()
                        jax.block_until_ready(many(rsets))
                        rec["us"] = (time.perf_counter() - t0) / len(rsets) * 1e6
                except Exception as ex:  # a failing candidate is reported, not fatal
                    rec["error"] = repr(ex)[:300]
                out["rows"].append(rec)
                base = next((r["us"] for r in out["rows"] if (r["m"], r["k"], r["n"], r["name"]) ==
                             (m, k, n, "xla_bf16_dense") and "us" in r), None)
                if "us" in rec and base:
                    rec["vs_bf16"] = base / rec["us"]
                print(f"M={m} {k}x{n} {name}: " + (f"{rec['us']:.1f} us" if "us" in rec else rec.get("error", "?"))
                      + (f" ({rec['vs_bf16']:.3f}x bf16)" if "vs_bf16" in rec else "")
                      + (f" err {rec['rel_err']:.2e}" if "rel_err" in rec else "")
                      + (f" eq_base {rec['equal_to_dq_base']}" if "equal_to_dq_base" in rec else "")
                      + (f" top {rec['top'][:4]}" if "top" in rec else ""), flush=True)
                save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
