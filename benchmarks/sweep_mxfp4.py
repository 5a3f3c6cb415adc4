"""GPU sweep for the MXFP4 Pallas kernel (issue 7): correctness of every variant against the XLA reference, then
block configs at decode and prefill shapes against XLA bf16 dense, in one device call.

Usage (repo root, on the device): PYTHONPATH=. python benchmarks/sweep_mxfp4.py [--phase all|check|decode|prefill]
    [--json OUT.json] [--quick]

Timing: each measurement jits R calls on R rotating input sets into one program (so host dispatch, ~5-10 us a
call, cannot hide a ~10 us kernel) and reports the median over repeats of wall time / R; ``--plain`` adds the
per-call (host-dispatched) time of benchmarks/timing.py for comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from quark_jax import quant  # noqa: E402
from quark_jax.kernels.mxfp4_mm import configs  # noqa: E402
from quark_jax.kernels.mxfp4_mm.pallas_triton import mxfp4_mm_pallas, prepare_activations  # noqa: E402
from quark_jax.kernels.mxfp4_mm.xla import mxfp4_mm_xla  # noqa: E402
from timing import profile_kernels  # noqa: E402

C = configs.Config
RESULTS = []


def timed(fn, arg_sets, *, repeats=5, dispatches=3):
    """Median seconds per call: one jit runs ``fn`` on every (distinct, so XLA cannot merge them) input set;
    ``dispatches`` such calls are queued back to back per sample, so host dispatch overlaps device work."""
    many = jax.jit(lambda sets: [fn(*s) for s in sets])
    jax.block_until_ready(many(arg_sets))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [many(arg_sets) for _ in range(dispatches)]
        jax.block_until_ready(outs)
        samples.append((time.perf_counter() - t0) / (len(arg_sets) * dispatches))
    return statistics.median(samples)


def profiled(fn, arg_sets, label):
    """Device time per call from a profiler trace (``timing.profile_kernels``), recorded with its top kernels."""
    try:
        seconds, top = profile_kernels(fn, arg_sets)
    except Exception as e:
        record(name=f"profile {label}", us=None, error=repr(e)[:200])
        return None
    record(name=f"profile {label}", us=seconds * 1e6, kernels=top)
    return seconds * 1e6


def record(**kw):
    RESULTS.append(kw)
    t = kw.get("us")
    extra = " ".join(f"{k}={v}" for k, v in kw.items() if k not in ("us", "name", "shape"))
    print(f"{kw['name']:<44} {kw.get('shape', '')!s:<20} {t if t is None else round(t, 1)!s:>8} us  {extra}",
          flush=True)


def dense(x, w):
    return lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32).astype(x.dtype)


def make_sets(m, k, n, sets, seed=0):
    """``sets`` distinct (x bf16, packed weight, scale bytes) triples, generated on the device."""
    out = []
    quantize = jax.jit(quant.quantize_mxfp4)
    for i in range(sets):
        kx, kw = jax.random.split(jax.random.key(seed * 1000 + i))
        x = jax.random.normal(kx, (m, k), jnp.bfloat16)
        wp, ws = quantize(jax.random.normal(kw, (n, k), jnp.float32) * 0.02)
        out.append((x, wp, ws))
    return out


def n_sets(m, k, n):
    """Input sets per timing call: ~400 us of estimated bf16 device work (600 TFLOP/s, 2.5 TB/s), at most 12."""
    est = max(2.0 * m * n * k / 600e12, (n * k * 2 + 2 * m * k) / 2.5e12)
    return int(max(1, min(12, -(-400e-6 // est))))


def cfg_name(c: C) -> str:
    d = {"asm": "a", "asm_scaled": "as", "jnp": "j"}[c.decode]
    return (f"{c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} w{c.num_warps} st{c.num_stages} {d}{c.pack} "
            f"{'W' if c.w_major else 'X'} g{c.group_m}")


# ---------------------------------------------------------------------------------------------------- check
def check_variants(variants):
    """Every variant against the XLA reference on exact data (bit-equal), realistic data and all scale bytes."""
    rng = np.random.default_rng(1)
    ok = True
    for name, cfg, (m, k, n) in variants:
        x = rng.integers(-32, 33, (m, k)) / 8 * 2.0 ** rng.integers(-1, 2, (m, k // 32)).repeat(32, axis=1)
        x = jnp.asarray(x, jnp.bfloat16)
        wp = jnp.asarray(rng.integers(0, 256, (n, k // 2)), jnp.uint8)
        ws = jnp.asarray(rng.integers(125, 129, (n, k // 32)), jnp.uint8)
        b = jnp.asarray(rng.integers(-40, 41, n) / 8, jnp.float32)
        errs = []
        try:
            for qi, bias in ((True, b), (False, None)):
                if True:
                    got = mxfp4_mm_pallas(x, wp, ws, bias, quantize_input=qi, out_dtype=jnp.float32, config=cfg)
                    want = mxfp4_mm_xla(x, wp, ws, bias, quantize_input=qi, out_dtype=jnp.float32)
                    errs.append(float(jnp.abs(got - want).max()))
            # realistic data, bf16 out
            xr = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
            wpr, wsr = quant.quantize_mxfp4(jnp.asarray(rng.standard_normal((n, k)) * 0.02, jnp.float32))
            got = mxfp4_mm_pallas(xr, wpr, wsr, quantize_input=True, config=cfg).astype(jnp.float32)
            want = mxfp4_mm_xla(xr, wpr, wsr, quantize_input=True).astype(jnp.float32)
            rel = float(jnp.abs(got - want).max() / jnp.abs(want).max())
            good = max(errs) == 0.0 and rel <= 2.0 ** -8
        except Exception as e:
            record(name=f"check {name}", shape=(m, k, n), us=None, error=repr(e)[:300])
            ok = False
            continue
        ok &= good
        record(name=f"check {name}", shape=(m, k, n), us=None, exact_max_err=max(errs), real_rel=rel,
               ok=good, cfg=cfg_name(cfg))
    return ok


def check_all_scales(cfg):
    k, n = 512, 256
    rng = np.random.default_rng(11)
    byte_rows = np.stack([rng.permutation(256) for _ in range(n)]).astype(np.uint8)
    sbytes = np.concatenate([np.arange(255), [127]]).astype(np.uint8)
    big = sbytes[:, None] >= 253
    mags = byte_rows & 0x77
    byte_rows = np.where(big, (byte_rows & 0x88) | np.minimum(mags & 0x7, 3) | (np.minimum(mags >> 4, 3) << 4),
                         byte_rows).astype(np.uint8)
    ws_np = np.repeat(sbytes[:, None], k // 32, axis=1)
    table = np.asarray([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])
    codes = np.stack([byte_rows & 15, byte_rows >> 4], axis=-1).reshape(n, k)
    w64 = table[codes] * np.ldexp(1.0, np.repeat(ws_np.astype(np.int64) - 127, 32, axis=1))  # exact float64
    worst = 0.0
    flushed_cols = []
    for x_exp in (-60, 60):
        x = jnp.asarray(rng.standard_normal((5, k)) * 2.0 ** x_exp, jnp.float32)
        got = np.asarray(mxfp4_mm_pallas(x, jnp.asarray(byte_rows), jnp.asarray(ws_np), quantize_input=True,
                                         config=cfg), np.float64)
        xq = np.asarray(quant.qdq_mxfp4(x), np.float64)
        want = xq @ w64.T
        mag = np.abs(xq) @ np.abs(w64).T
        cols = (mag.min(0) > 2.0 ** -100) & (mag.max(0) < 2.0 ** 100)
        err = (np.abs(got - want) / mag)[:, cols]
        worst = max(worst, float(np.nanmax(err)))
        flushed_cols += [int(sbytes[c]) for c in np.flatnonzero(cols) if np.nanmax(np.abs(got - want)[:, c] /
                                                                                     mag[:, c]) > 2.0 ** -14]
    record(name="check all scale bytes 0..254", us=None, worst_rel=worst, bad_scale_bytes=flushed_cols[:20],
           cfg=cfg_name(cfg))
    return worst <= 2.0 ** -14


# ---------------------------------------------------------------------------------------------------- timing
def time_shape(m, k, n, variants, *, baselines=True, plain=False, profile=0):
    """Time XLA bf16 dense, the XLA emulation, the activation prep and each Pallas variant at one shape; profile
    the baselines and the first ``profile`` variants."""
    sets = n_sets(m, k, n)
    data = make_sets(m, k, n, sets)
    wbytes = n * k // 2 + n * k // 32
    shape = (m, k, n)
    flops = 2.0 * m * n * k
    base = None
    if baselines:
        dd = [(x, quant.dequantize_mxfp4(p, s, jnp.bfloat16)) for x, p, s in data]
        base = timed(dense, dd)
        record(name="xla_bf16_dense", shape=shape, us=base * 1e6, tflops=round(flops / base / 1e12, 1))
        if profile:
            profiled(dense, dd[:2], f"xla_bf16_dense {shape}")
        del dd
        emu = lambda x, p, s: mxfp4_mm_xla(x, p, s, quantize_input=True)  # noqa: E731
        t = timed(emu, data)
        record(name="xla_emulation_w4a4", shape=shape, us=t * 1e6, vs_bf16=round(base / t, 3))
        if profile:
            profiled(emu, data[:2], f"xla_emulation_w4a4 {shape}")
        prep = lambda x, p, s: prepare_activations(x, True, max(16, -(-m // 16) * 16))  # noqa: E731
        t = timed(prep, data)
        record(name="prep_x_qdq_split", shape=shape, us=t * 1e6)
        if profile:
            profiled(prep, data[:2], f"prep_x_qdq_split {shape}")
    for i, cfg in enumerate(variants):
        f = lambda x, p, s, cfg=cfg: mxfp4_mm_pallas(x, p, s, quantize_input=True, config=cfg)  # noqa: E731
        try:
            t0 = time.perf_counter()
            t = timed(f, data)
            build = time.perf_counter() - t0
        except Exception as e:
            record(name=f"pallas {cfg_name(cfg)}", shape=shape, us=None, error=repr(e)[:200])
            continue
        extra = dict(tflops=round(flops / t / 1e12, 1), tbps=round(wbytes / t / 1e12, 2), build_s=round(build, 1))
        if base:
            extra["vs_bf16"] = round(base / t, 3)
        record(name=f"pallas {cfg_name(cfg)}", shape=shape, us=t * 1e6, **extra)
        if i < profile:
            profiled(f, data[:2], f"pallas {cfg_name(cfg)} {shape}")
    if plain and variants:
        from timing import time_jax

        f = jax.jit(lambda x, p, s: mxfp4_mm_pallas(x, p, s, quantize_input=True, config=variants[0]))
        t = time_jax(f, data, iters=100)
        record(name=f"plain-dispatch pallas {cfg_name(variants[0])}", shape=shape, us=t * 1e6)
    return base


def decode_variants(quick=False):
    base = C(block_m=16, block_n=64, block_k=256, split_k=2, num_warps=4, num_stages=6)
    r = dataclasses.replace
    vs = [base, r(base, split_k=1), r(base, block_n=32, block_k=512, split_k=1, num_warps=2, num_stages=4),
          r(base, pack=4), r(base, pack=4, split_k=1), r(base, block_n=32, split_k=1, num_warps=2),
          r(base, block_k=512, split_k=1, num_stages=4), r(base, block_n=128), r(base, num_stages=8),
          r(base, block_k=128, split_k=1, num_stages=8), r(base, decode="asm_scaled"),
          r(base, block_n=32, block_k=512, num_warps=2, num_stages=4)]
    return vs[:6] if quick else vs


def mid_variants(m):
    r = dataclasses.replace
    if m <= 64:
        base = C(block_m=64, block_n=64, block_k=256, split_k=2, num_warps=4, num_stages=4)
        return [base, r(base, split_k=1), r(base, block_n=128, block_k=128, split_k=1),
                r(base, block_n=128, block_k=128, split_k=1, num_warps=8, num_stages=3),
                C(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=3, w_major=False, pack=4)]
    base = C(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3, pack=2)
    return [base, r(base, block_m=256), r(base, num_warps=4), r(base, block_m=256, block_n=64),
            r(base, w_major=False, pack=4)]


def prefill_variants(quick=False):
    base = C(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3, pack=2)
    r = dataclasses.replace
    vs = [base, r(base, pack=4), r(base, num_stages=4), r(base, num_stages=2), r(base, block_k=64, num_stages=4),
          r(base, block_k=64, num_stages=5), r(base, group_m=16), r(base, group_m=4), r(base, decode="asm_scaled"),
          r(base, block_n=64, num_warps=4), r(base, block_m=128, num_warps=4)]
    return vs[:5] if quick else vs


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--phase", default="all")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}", flush=True)
    t0 = time.time()
    try:
        if a.phase in ("all", "check"):
            dv = decode_variants()
            variants = [(cfg_name(c), configs.fit(c, 1, 512, 256), (1, 512, 256)) for c in dv[:6]]
            variants += [(cfg_name(c), configs.fit(c, 21, 512, 256), (21, 512, 256)) for c in dv[:2]]
            variants += [(cfg_name(c), c, (300, 512, 256)) for c in prefill_variants()[:2] + mid_variants(256)[:2]]
            check_variants(variants)
            check_all_scales(dataclasses.replace(dv[0], block_k=128))
            print(f"[check done {time.time() - t0:.0f}s]", flush=True)
        if a.phase in ("all", "decode"):
            time_shape(16, 4096, 14336, decode_variants(), plain=True, profile=2)
            time_shape(1, 4096, 14336, decode_variants(True), plain=True, profile=1)
            time_shape(16, 14336, 4096, [dataclasses.replace(c, split_k=s) for c in decode_variants(True)[:4:3]
                                          for s in (1, 2, 4)])
            print(f"[decode done {time.time() - t0:.0f}s]", flush=True)
        if a.phase in ("all", "prefill"):
            time_shape(2048, 4096, 14336, prefill_variants(a.quick), profile=1)
            time_shape(8192, 8192, 8192, prefill_variants(True), profile=1)
            print(f"[prefill done {time.time() - t0:.0f}s]", flush=True)
        if a.phase in ("all", "mid"):
            time_shape(64, 4096, 14336, mid_variants(64))
            time_shape(256, 4096, 14336, mid_variants(256), profile=1)
            print(f"[mid done {time.time() - t0:.0f}s]", flush=True)
    except Exception:
        traceback.print_exc()
    finally:
        if a.json:
            Path(a.json).write_text(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()
