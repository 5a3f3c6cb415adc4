"""Which form of the per-tensor FP8 GEMM XLA-GPU turns into ONE cuBLASLt call with the scales and the bf16 output
inside, and whether SiLU-and-mul + FP8 quantize becomes one fusion (benchmarks/NOTES.md, session 7, helper fp8pf).

    PYTHONPATH=. python benchmarks/fp8_epilogue_probe.py --out $OUT/fp8_epilogue_probe.json

For M = 2048 and (K, N) in (4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), each GEMM form:
  today      ``bf16(x_s * (w_s * dot(x_q, w_q)_f32))`` (``kernels.fp8_scaled_mm_xla``, EPILOGUE "separate")
  lib        the library with ``EPILOGUE = "cublaslt"`` (``lax.platform_dependent`` -> dq_scales on CUDA)
  dq_scales  ``dot(f32(x_q) * x_s, f32(w_q) * w_s) -> bf16`` (the rewriter's FP8 pattern: scale_a, scale_b)
  dq_alpha   ``dot(f32(x_q) * (x_s * w_s), f32(w_q)) -> bf16`` (one f32 alpha as scale_a, scale_b = 1)
  alpha_f32  ``bf16((x_s * w_s) * dot(x_q, w_q)_f32)`` (alpha folded, f32 out, convert separate)
and for N = 28672 the gate_up GEMM followed by the MLP's SiLU-and-mul and the down projection's static FP8
quantize (``models.llama.MLP`` + ``quant.scaled_fp8_quant``), with ``quant.fp8.CLAMP_FIRST`` off / on:
  mlp_today, mlp_clamp (clamp first only), mlp_epi (cublaslt only), mlp_both, and mlp_today_2d / mlp_both_2d
  (no [1, T, .] reshape between the GEMM and the quantize: does the bitcast split the fusion?), and the diagnostic
  mlp_clip_only (cublaslt; the quantize without the NaN select: does the select split it?).
Per form: the ``__cublas$lt$matmul$f8`` custom calls with their output types and scale operands, the other
kernels (fusions) of the compiled module with their output shapes (the module makes one call per weight set: 2,
so every kernel appears twice), GPU kernel time per call (one profile of 2 runs over the 2 weight sets), and the
output against today's: max abs diff and the number of differing bf16 (or fp8) elements. Also checks
CLAMP_FIRST's NaN / inf codes on the GPU. ~27 forms x (one compile + one profile): ~90-150 s on the H200.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

M = 2048
SHAPES = ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096))
INTER = 14336


@contextlib.contextmanager
def switches(epilogue="separate", clamp_first=False):
    """Set the library's module switches while a function is traced (they are read at trace time)."""
    from quark_jax.kernels.fp8_scaled_mm import xla
    from quark_jax.quant import fp8

    old = xla.EPILOGUE, fp8.CLAMP_FIRST
    xla.EPILOGUE, fp8.CLAMP_FIRST = epilogue, clamp_first
    try:
        yield
    finally:
        xla.EPILOGUE, fp8.CLAMP_FIRST = old


def gemm_forms():
    import jax.numpy as jnp
    from jax import lax

    from quark_jax import kernels
    from quark_jax.kernels.fp8_scaled_mm import xla

    dims = (((1,), (1,)), ((), ()))

    def today(x, w, sx, sw):
        return xla.fp8_scaled_mm_xla(x, w, sx, sw, out_dtype=jnp.bfloat16)

    def lib(x, w, sx, sw):
        return kernels.fp8_scaled_mm(x, w, sx, sw, out_dtype=jnp.bfloat16, impl="xla")

    def dq_scales(x, w, sx, sw):
        return xla.fp8_dequant_dot(x, w, sx, sw, out_dtype=jnp.bfloat16)

    def dq_alpha(x, w, sx, sw):
        a = x.astype(jnp.float32) * (sx * sw)
        return lax.dot_general(a, w.astype(jnp.float32), dims, preferred_element_type=jnp.bfloat16)

    def alpha_f32(x, w, sx, sw):
        acc = lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)
        return ((sx * sw) * acc).astype(jnp.bfloat16)

    return {"today": (today, "separate"), "lib": (lib, "cublaslt"), "dq_scales": (dq_scales, "separate"),
            "dq_alpha": (dq_alpha, "separate"), "alpha_f32": (alpha_f32, "separate")}


def mlp_forms():
    """gate_up GEMM -> SiLU(g) * u in f32 rounded to bf16 (models.llama.MLP) -> static FP8 quantize (the down
    projection's input, kernels.fp8_scaled_mm's float-input path). ``lead1``: through [1, T, 2I] as in the model
    (the GEMM output reshaped, h flattened back to [T, I]); else all in [T, ...]."""
    import jax
    import jax.numpy as jnp

    from quark_jax import kernels, quant
    from quark_jax.quant import round_to

    from jax import lax

    from quark_jax.quant import exact_f32

    def make(lead1, clip_only=False):
        # a new function object per form: jax caches traces per function, and the switches are read when traced
        def mlp(x, w, sx, sw, s_down, inv_down):
            y = kernels.fp8_scaled_mm(x, w, sx, sw, out_dtype=jnp.bfloat16, impl="xla")
            gu = round_to(y.reshape(1, *y.shape) if lead1 else y, jnp.bfloat16)
            g, u = gu[..., :INTER], gu[..., INTER:]
            h = round_to(jax.nn.silu(g.astype(jnp.float32)) * u.astype(jnp.float32), jnp.bfloat16)
            h = h.reshape(-1, INTER)
            if clip_only:  # diagnostic, not vLLM's NaN rule (NaN stays NaN): no isnan select at all
                v = exact_f32(h) * inv_down
                return lax.optimization_barrier(jnp.clip(v, -448.0, 448.0).astype(jnp.float8_e4m3fn))
            return quant.scaled_fp8_quant(h, s_down, scale_reciprocal=inv_down)[0]
        return mlp

    return {"mlp_today": (make(True), "separate", False), "mlp_clamp": (make(True), "separate", True),
            "mlp_epi": (make(True), "cublaslt", False), "mlp_both": (make(True), "cublaslt", True),
            "mlp_today_2d": (make(False), "separate", False), "mlp_both_2d": (make(False), "cublaslt", True),
            "mlp_clip_only": (make(True, clip_only=True), "cublaslt", False)}


def entry_summary(hlo: str) -> dict:
    """The compiled module's cuBLASLt FP8 calls and the other kernels in its ENTRY computation (one line each)."""
    entry = hlo[hlo.rfind("\nENTRY "):]
    calls, others = [], []
    for line in entry.splitlines()[1:]:
        line = line.strip()
        m = re.match(r"%?([\w.\-]+) = (\S+?(?:\)|\])\S*) (custom-call|fusion)\((.*?)\)", line)
        if not m:
            continue
        name, shape, op, operands = m.groups()
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            cfg = re.search(r'"alpha_real":([^,]+).*?"epilogue":"(\w+)"', line)
            calls.append({"name": name, "target": target.group(1) if target else "", "out": shape,
                          "operands": operands[:200], "alpha": cfg.group(1) if cfg else None,
                          "epilogue": cfg.group(2) if cfg else None})
        else:
            kind = re.search(r"kind=(\w+)", line)
            others.append(f"{name} {shape} {kind.group(1) if kind else ''}")
    return {"cublas_f8_calls": calls, "fusions": others}


def diff_stats(y, ref) -> dict:
    a, b = np.asarray(y), np.asarray(ref)
    bits = a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint8)
    rbits = b.view(np.uint16 if b.dtype.itemsize == 2 else np.uint8)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    ok = np.isfinite(af) & np.isfinite(bf)
    rel = np.abs(af - bf)[ok] / np.maximum(np.abs(bf[ok]), 1e-30)
    return {"differing": int((bits != rbits).sum()), "of": int(bits.size),
            "max_abs": float(np.abs(af - bf)[ok].max()) if ok.any() else 0.0,
            "max_rel": float(rel.max()) if rel.size else 0.0}


def run_form(fn, arg_sets, timed: bool) -> dict:
    """Compile ``fn`` once over every weight set (one call per set, as ``tuner.kernel_time`` does), summarize the
    compiled module, return the first set's output and, if ``timed``, the GPU kernel us per call (one profile of
    two runs) with its top kernels."""
    import jax

    from quark_jax.kernels.tuning.tuner import profile_kernels

    many = jax.jit(lambda sets: [fn(*s) for s in sets])
    row = entry_summary(many.lower(arg_sets).compile().as_text())
    row["sets_per_module"] = len(arg_sets)
    ys = jax.block_until_ready(many(arg_sets))
    row["y"] = ys[0]
    if timed:
        sec, top = profile_kernels(many, arg_sets)
        row["us"], row["top"] = sec * 1e6, [(n, round(us, 1), c) for n, us, c in top]
    return row


def nan_codes() -> dict:
    """scaled_fp8_quant of special values (fed by a producer multiply, as in the MLP) with CLAMP_FIRST off / on."""
    import jax
    import jax.numpy as jnp

    from quark_jax import quant

    v = jnp.array([np.nan, -np.nan, np.inf, -np.inf, 500.0, -500.0, 448.5, 1.0626, -0.0, 1e-9], jnp.float32)
    out = {}
    for flag in (False, True):
        with switches(clamp_first=flag):
            f = jax.jit(lambda v, s: quant.scaled_fp8_quant(v * s, jnp.float32(1.0))[0].view(jnp.uint8))
            out[str(flag)] = np.asarray(f(v, jnp.float32(1.0))).tolist()
    out["equal"] = out["False"] == out["True"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-time", action="store_true", help="skip the profiler timing (HLO and values only)")
    ap.add_argument("--shrink", type=int, default=1, help="divide M, K, N by this (a CPU smoke test: 32)")
    a = ap.parse_args(argv)
    global M, SHAPES, INTER
    M, INTER = M // a.shrink, INTER // a.shrink
    SHAPES = tuple((k // a.shrink, n // a.shrink) for k, n in SHAPES)

    import jax
    import jax.numpy as jnp

    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "m": M, "gemm": [], "mlp": {}}
    res["nan_codes"] = nan_codes()
    print("CLAMP_FIRST NaN/inf codes equal:", res["nan_codes"]["equal"], flush=True)

    def operands(k, n, sets=2):
        out = []
        for _ in range(sets):
            x = jnp.asarray(rng.normal(0.0, 60.0, (M, k)).clip(-448, 448), jnp.float32).astype(jnp.float8_e4m3fn)
            w = jnp.asarray(rng.normal(0.0, 60.0, (n, k)).clip(-448, 448), jnp.float32).astype(jnp.float8_e4m3fn)
            out.append((x, w, jnp.float32(0.0123 / 60), jnp.float32(0.0071 / 60)))
        return out

    forms = gemm_forms()
    for k, n in SHAPES:
        sets = operands(k, n)
        ref = None
        for name, (fn, epi) in forms.items():
            with switches(epilogue=epi):
                row = {"k": k, "n": n, "form": name}
                try:
                    row.update(run_form(fn, sets, not a.no_time))
                    y = row.pop("y")
                    ref = y if name == "today" else ref
                    row["vs_today"] = diff_stats(y, ref)
                except Exception as e:  # noqa: BLE001 - a form that fails to compile is a result
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            res["gemm"].append(row)
            calls = [(c["out"], c["operands"][-60:]) for c in row.get("cublas_f8_calls", [])]
            print(f"K={k:5d} N={n:5d} {name:9s} us={row.get('us', float('nan')):8.1f} "
                  f"diff={row.get('vs_today', {}).get('differing')}/{row.get('vs_today', {}).get('of')} "
                  f"f8calls={calls} kernels={len(row.get('fusions', []))} {row.get('error', '')}", flush=True)
            for f_line in row.get("fusions", [])[:6]:
                print(f"      {f_line}", flush=True)

    # gate_up -> SiLU-and-mul -> quantize (K = 4096, N = 2 * 14336)
    sets = [s + (jnp.float32(0.02), jnp.float32(50.0)) for s in operands(SHAPES[0][0], 2 * INTER)]
    ref = None
    for name, (fn, epi, clamp) in mlp_forms().items():
        row = {}
        with switches(epilogue=epi, clamp_first=clamp):
            try:
                row.update(run_form(fn, sets, not a.no_time))
                y = row.pop("y")
                ref = y if name == "mlp_today" else ref
                row["vs_today"] = diff_stats(y, ref)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        res["mlp"][name] = row
        print(f"{name:9s} us={row.get('us', float('nan')):8.1f} diff={row.get('vs_today', {}).get('differing')}"
              f"/{row.get('vs_today', {}).get('of')} kernels={row.get('fusions')} "
              f"f8calls={[c['out'] for c in row.get('cublas_f8_calls', [])]} {row.get('error', '')}", flush=True)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out} in {res['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
