"""Grouped (MoE expert) GEMM timing: ``kernels.grouped_mm`` with bf16, FP8 and MXFP4 experts, Pallas vs the XLA
reference (``jax.lax.ragged_dot_general``), at a Mixtral-8x7B expert shape (E = 8, top-2, K = 4096, N = 14336 by
default) for decode (1 token -> 2 rows) and prefill (2048 tokens -> 4096 rows).

For each (scheme, tokens, impl): GPU kernel time per call from a profiler trace (``tuner.profile_kernels``: the
routing metadata and epilogue passes included, host gaps excluded) over ``--copies`` weight copies, the floor
(bytes of the experts the routing selected at 4.3 TB/s, and flops at 790 / 1500 TFLOP/s for bf16 / FP8 MMAs; the
MXFP4 kernel runs bf16 MMAs), and the Pallas result's relative Frobenius error against XLA's. Results go to
``--out`` (JSON, rewritten after every row) and stdout.

    python benchmarks/bench_grouped_mm.py --out /tmp/grouped.json
    python benchmarks/bench_grouped_mm.py --schemes bf16,fp8 --tokens 2048 --impls pallas --fp8-prefill native,bf16
    python benchmarks/bench_grouped_mm.py --schemes bf16,fp8 --tokens 2048 --fp8-prefill native,wgmma,candidates
    python benchmarks/bench_grouped_mm.py --schemes mxfp4 --tokens 1 --impls pallas --mxfp4-decode candidates \
        --kn 4096x28672,14336x4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax import kernels, quant
from quark_jax.kernels.tuning import tuner

HBM = 4.3e12
PEAK = {"bf16": 790e12, "fp8": 1500e12, "mxfp4": 790e12}


def routing(tokens: int, e: int, top_k: int, seed: int):
    """group_sizes [E] of ``tokens`` tokens each routed to ``top_k`` distinct random experts."""
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.permutation(e)[:top_k] for _ in range(tokens)])
    return np.bincount(picks.reshape(-1), minlength=e).astype(np.int32)


def operands(scheme: str, m: int, k: int, n: int, e: int, copies: int, sizes):
    key = jax.random.key(m * 31 + len(scheme))
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (m, k), jnp.float32)
    g = jnp.asarray(sizes, jnp.int32)
    sets = []
    for i in range(copies):
        kk = jax.random.fold_in(kw, i)
        if scheme == "bf16":
            w = (jax.random.normal(kk, (e, n, k), jnp.bfloat16) * 0.02)
            sets.append((x.astype(jnp.bfloat16), w, g))
        elif scheme == "fp8":
            xq, xs = quant.scaled_fp8_quant(x, per_token=True)
            w = jnp.clip(jax.random.normal(kk, (e, n, k), jnp.bfloat16) * 100, -448, 448).astype(jnp.float8_e4m3fn)
            ws = jax.random.uniform(kk, (e, n), jnp.float32, 1e-3, 1e-2)
            sets.append((xq, w, g, ws, xs))
        else:
            wp, wsc = jax.jit(jax.vmap(quant.quantize_mxfp4))(jax.random.normal(kk, (e, n, k), jnp.bfloat16) * 0.02)
            sets.append((quant.qdq_mxfp4(x.astype(jnp.bfloat16)), wp, g, wsc))
    return sets


def entry(scheme: str, impl: str):
    if scheme == "bf16":
        return jax.jit(lambda x, w, g: kernels.grouped_mm(x, w, g, scheme="bf16", impl=impl))
    if scheme == "fp8":
        return jax.jit(lambda x, w, g, ws, xs: kernels.grouped_mm(x, w, g, w_scale=ws, x_scale=xs, scheme="fp8",
                                                                  impl=impl))
    return jax.jit(lambda x, w, g, ws: kernels.grouped_mm(x, w, g, w_scale=ws, scheme="mxfp4", impl=impl))


def floors(scheme: str, m: int, k: int, n: int, sizes):
    active = int((np.asarray(sizes) > 0).sum())
    per_w = {"bf16": 2.0, "fp8": 1.0, "mxfp4": 0.5 + 1 / 32}[scheme]
    x_bytes = m * k * (1 if scheme == "fp8" else 2)
    byts = active * n * k * per_w + x_bytes + m * n * 2
    return byts / HBM, 2.0 * m * k * n / PEAK[scheme], active


def fp8_f64_rows(s, rows: int = 256):
    """float64 reference of the first ``rows`` output rows of an FP8 operand set ``(xq, w, g, ws, xs)`` (per-channel
    weight scales, per-token x scales): ``xs * ws[e] * (x @ w[e]^T)`` per routed row's expert."""
    xq, w, g, ws, xs = s
    rows = min(rows, int(np.asarray(g).sum()))
    expert = np.repeat(np.arange(len(g)), np.asarray(g))[:rows]
    x64 = np.asarray(xq[:rows].astype(jnp.float32), np.float64)
    out = np.zeros((rows, w.shape[1]))
    for e in np.unique(expert):
        r = expert == e
        w64 = np.asarray(w[int(e)].astype(jnp.float32), np.float64)
        out[r] = (x64[r] @ w64.T) * np.asarray(ws[int(e)], np.float64)[None, :]
    return out * np.asarray(xs[:rows], np.float64).reshape(-1, 1)


def fp8_variants(spec: str, pallas_triton) -> list:
    """``--fp8-prefill``'s names, 'candidates' expanded to ``pallas_triton.CANDIDATES``; unknown names exit."""
    out = []
    for v in (v for v in spec.split(",") if v):
        out += list(pallas_triton.CANDIDATES) if v == "candidates" else [v]
    bad = [v for v in out if v not in pallas_triton.FP8_PREFILL_CHOICES]
    if bad or not out:
        raise SystemExit(f"--fp8-prefill: unknown {bad or spec!r} (known: "
                         f"{', '.join(pallas_triton.FP8_PREFILL_CHOICES)}, candidates)")
    return list(dict.fromkeys(out))


def mxfp4_variants(spec: str, pallas_triton) -> list:
    """``--mxfp4-decode``'s names, 'candidates' expanded to ``pallas_triton.MXFP4_DECODE``; unknown names exit."""
    out = []
    for v in (v for v in spec.split(",") if v):
        out += list(pallas_triton.MXFP4_DECODE) if v == "candidates" else [v]
    bad = [v for v in out if v not in pallas_triton.MXFP4_DECODE]
    if bad or not out:
        raise SystemExit(f"--mxfp4-decode: unknown {bad or spec!r} (known: {', '.join(pallas_triton.MXFP4_DECODE)}, "
                         f"candidates)")
    return list(dict.fromkeys(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schemes", default="bf16,fp8,mxfp4")
    p.add_argument("--tokens", default="1,2048")
    p.add_argument("--impls", default="pallas,xla")
    p.add_argument("--e", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=14336)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--fp8-prefill", default="default",
                   help="FP8 Pallas prefill variants to time (grouped_mm.pallas_triton.FP8_PREFILL_MMA): default "
                        "(the library's, row 'pallas'), native (Pallas' FP8 dot), bf16 (bf16 MMAs on upcast tiles), wgmma (FP8 wgmma, experimental), a "
                        "name of pallas_triton.CANDIDATES, or 'candidates' (all of them), e.g. native,bf16,wgmma; "
                        "rows pallas_<variant>, above 32 tokens")
    p.add_argument("--mxfp4-decode", default="default",
                   help="MXFP4 Pallas decode tilings to time (grouped_mm.pallas_triton.MXFP4_DECODE_CFG): default, "
                        "names of pallas_triton.MXFP4_DECODE or 'candidates' (all); rows pallas_<name>, up to 8 "
                        "tokens (16 routed rows)")
    p.add_argument("--kn", default=None, help="K x N shapes to run in turn, e.g. 4096x28672,14336x4096 (Mixtral "
                                              "gate_up and down); default --k x --n")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from quark_jax.kernels.grouped_mm import pallas_triton
    default_variant = pallas_triton.FP8_PREFILL_MMA
    variants = fp8_variants(a.fp8_prefill.replace("default", default_variant), pallas_triton)
    mx_variants = mxfp4_variants(a.mxfp4_decode, pallas_triton)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.kn.split(",")] if a.kn else [(a.k, a.n)]
    dev = jax.devices()[0]
    result = {"device": dev.device_kind, "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                        time.gmtime()),
              "shape": {"E": a.e, "top_k": a.top_k, "K": a.k, "N": a.n}, "timing": "GPU kernel time, profiler",
              "rows": []}
    for (kk_, nn_), tokens in ((kn, int(t)) for kn in shapes for t in a.tokens.split(",")):
        a.k, a.n = kk_, nn_
        m = tokens * a.top_k
        sizes = routing(tokens, a.e, a.top_k, seed=tokens)
        for scheme in a.schemes.split(","):
            sets = operands(scheme, m, a.k, a.n, a.e, a.copies, sizes)
            t_bytes, t_flops, active = floors(scheme, m, a.k, a.n, sizes)
            outs = {}
            runs = [(impl, default_variant) for impl in a.impls.split(",")]
            if scheme == "fp8" and m > 64 and "pallas" in a.impls.split(","):  # the prefill variants
                runs = [r for r in runs if r[0] != "pallas"] + [("pallas", v) for v in variants]
            if scheme == "mxfp4" and m <= 16 and "pallas" in a.impls.split(","):  # the decode tilings
                runs = [r for r in runs if r[0] != "pallas"] + [("pallas", "mx:" + v) for v in mx_variants]
            for impl, variant in runs:
                mx = variant.startswith("mx:")
                pallas_triton.FP8_PREFILL_MMA = default_variant if mx else variant  # read at trace (a new jit)
                pallas_triton.MXFP4_DECODE_CFG = variant[3:] if mx else "default"
                label = (f"{impl}_{variant[3:]}" if mx and variant != "mx:default" else impl if mx
                         else impl if variant == default_variant else f"{impl}_{variant}")
                row = {"scheme": scheme, "tokens": tokens, "rows": m, "K": a.k, "N": a.n, "impl": label,
                       "active_experts": active,
                       "floor_us": round(max(t_bytes, t_flops) * 1e6, 2), "bytes_floor_us": round(t_bytes * 1e6, 2),
                       "flops_floor_us": round(t_flops * 1e6, 2)}
                try:
                    fn = entry(scheme, impl)
                    outs[label] = np.asarray(fn(*sets[0]).astype(jnp.float32))
                    many = jax.jit(lambda ss, fn=fn: [fn(*s) for s in ss])
                    secs, top = tuner.profile_kernels(many, sets)
                    row.update(us=round(secs * 1e6, 2), x_floor=round(secs / max(t_bytes, t_flops), 2), top=top)
                except Exception as ex:  # noqa: BLE001 - record and go on (e.g. a lowering XLA does not have)
                    row["error"] = f"{type(ex).__name__}: {str(ex)[:400]}"
                result["rows"].append(row)
                print(json.dumps({kk: v for kk, v in row.items() if kk != "top"}), flush=True)
                if a.out:
                    with open(a.out, "w") as f:
                        json.dump(result, f, indent=1)
            pallas_triton.FP8_PREFILL_MMA = default_variant
            pallas_triton.MXFP4_DECODE_CFG = "default"
            for label in [lb for lb in outs if lb.startswith("pallas")] if "xla" in outs else []:
                d, r = outs[label], outs["xla"]
                err = float(np.linalg.norm(d - r) / max(np.linalg.norm(r), 1e-30))
                result["rows"].append({"scheme": scheme, "tokens": tokens, "K": a.k, "N": a.n,
                                       f"{label}_vs_xla_rel_frobenius": err})
                print(f"{scheme} tokens={tokens} {a.k}x{a.n}: {label} vs xla rel err {err:.2e}", flush=True)
            if scheme == "mxfp4" and "pallas" in outs:  # decode tilings: the same sums (a K split: f32 order)
                for label in [lb for lb in outs if lb.startswith("pallas_")]:
                    diff = float(np.max(np.abs(outs[label] - outs["pallas"])))
                    result["rows"].append({"scheme": scheme, "tokens": tokens, "K": a.k, "N": a.n,
                                           f"{label}_vs_pallas_max_abs": diff,
                                           "max_abs": float(np.max(np.abs(outs["pallas"])))})
                    print(f"{scheme} tokens={tokens} {a.k}x{a.n}: {label} vs pallas max abs diff {diff:.3e}",
                          flush=True)
            if scheme == "fp8" and outs:  # the FP8 variants' accumulation error (XLA's FP8 GEMM has its own)
                want = fp8_f64_rows(sets[0])
                for label, d in outs.items():
                    got = d[:want.shape[0]].astype(np.float64)
                    err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
                    result["rows"].append({"scheme": scheme, "tokens": tokens,
                                           f"{label}_vs_f64_rel_frobenius_{want.shape[0]}_rows": err})
                    print(f"{scheme} tokens={tokens}: {label} vs float64 ({want.shape[0]} rows) rel err {err:.2e}",
                          flush=True)
            del sets
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
