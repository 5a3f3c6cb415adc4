"""Session 9, helper mxfp6wire: ``QuarkOCP_MX`` with FP6 weights on the load-time planes layout (what the scheme now
stores and runs) against the checkpoint-layout path it replaced, on the GPU (benchmarks/NOTES.md "Session 9,
helper mxfp6wire").

Per 8B shape (K x N), fp6_e2m3 weights, input None (weight-only) or fp6_e2m3 (W6A6), bf16 x, M in ``--ms``:
``new`` = ``apply_params(scheme, planes)`` (``impl="auto"``: the planes Pallas kernel at M <= 16, the XLA planes
dequantize + GEMM above); ``old`` = ``kernels.mxfp6_mm(quantize_input(x), weight, weight_scale, impl="auto")`` on
the checkpoint layout (the old Pallas kernel at decode, the XLA reference above). GPU kernel time per call
(``tuner.kernel_time``: profiler trace, all kernels of a call, 3 operand sets so the weight is not L2-resident),
and exactness: the largest |new - old| / max|old| (0 expected where both run XLA; f32 summation order at decode).

Usage: PYTHONPATH=. python benchmarks/mxfp6wire_check.py OUT.json [--shapes 4096x14336,...] [--ms 1,16,2048]
       [--inputs none,fp6_e2m3] [--deadline SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax import formats, kernels
from quark_jax.kernels.tuning.tuner import kernel_time
from quark_jax.schemes import QuarkOCP_MX, apply_params, process_params


def operands(rng, k, n, sets=3):
    out = []
    for _ in range(sets):
        codes = jnp.asarray(rng.integers(0, 64, (n, k), dtype=np.uint8))
        scales = jnp.asarray(rng.integers(120, 132, (n, k // 32), dtype=np.uint8))
        out.append({"weight": formats.pack_fp6(codes), "weight_scale": scales})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shapes", default="4096x14336,14336x4096,4096x4096,8192x8192")
    ap.add_argument("--ms", default="1,16,2048")
    ap.add_argument("--inputs", default="none,fp6_e2m3")
    ap.add_argument("--deadline", type=float, default=100.0)
    args = ap.parse_args(argv)
    end = time.monotonic() + args.deadline
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}", flush=True)
    rows = []
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        raws = operands(rng, k, n)
        for inp in args.inputs.split(","):
            scheme = QuarkOCP_MX(weight_dtype="fp6_e2m3", input_dtype=None if inp == "none" else inp)
            planes = [process_params(scheme, r, (n,)) for r in raws]
            assert sorted(planes[0]) == ["weight_hi", "weight_lo", "weight_scale_kn"], sorted(planes[0])

            def new(p, x, s=scheme):
                return apply_params(s, p, x)

            def old(r, x, s=scheme):
                return kernels.mxfp6_mm(s.quantize_input(x), r["weight"], r["weight_scale"], element=s.weight_dtype)

            for m in (int(v) for v in args.ms.split(",")):
                if time.monotonic() > end:
                    print(f"deadline: skipped {shape} {inp} M={m}", flush=True)
                    continue
                xs = [jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16) for _ in raws]
                y_new = np.asarray(jax.jit(new)(planes[0], xs[0]).astype(jnp.float32), np.float64)
                y_old = np.asarray(jax.jit(old)(raws[0], xs[0]).astype(jnp.float32), np.float64)
                diff = float(np.abs(y_new - y_old).max() / np.abs(y_old).max())
                t_new = kernel_time(new, list(zip(planes, xs))) * 1e6
                t_old = kernel_time(old, list(zip(raws, xs))) * 1e6
                row = dict(shape=shape, input=inp, m=m, new_us=round(t_new, 2), old_us=round(t_old, 2),
                           speedup=round(t_old / t_new, 3), rel_diff=diff)
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
