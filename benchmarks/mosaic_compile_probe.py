"""Where the MXFP4 decode program's compile goes (issue 14 item 2, session 9): the Mosaic GPU decode kernels.

The Mosaic custom call compiles each distinct kernel once per process, keyed by the sha256 of its serialized
module (``kernel_hash``), in XLA's instantiate stage, under XLA's LLVM options lock with options of its own.
``quark_jax.nn.warmup`` compiles one small program per distinct layer geometry ahead, in parallel (from
``load_weights`` and the first ``generate``), so the decode program finds its kernels compiled. This probe builds an 8B-shaped MXFP4 W4A4 model abstractly (no
weights; every layer folded, as the random 8B checkpoint's scale bytes allow) and

* ``--lower-only`` (any host; on CPU a pretend H200): cross-lowers the decode program and the warm-ups for CUDA
  and reports the Mosaic custom calls (call sites in the lowered text, distinct kernel hashes) and whether the
  warm-ups' hashes equal the decode program's;
* on the GPU, ``--mode cold``: lowers and compiles the decode program alone (its Mosaic kernels compile inside);
  ``--mode serial``: compiles each warm-up one at a time (seconds per distinct kernel), then the decode program;
  ``--mode warm``: the warm-ups in parallel (as ``generate`` runs them), then the decode program.
  Run each mode in its own process (the kernel cache is per process).

    python benchmarks/mosaic_compile_probe.py --lower-only                 # CPU
    python benchmarks/mosaic_compile_probe.py --mode cold --out r.json     # GPU
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(*a):
    print(*a, flush=True)


def mosaic_calls(hlo_text: str) -> dict:
    """Mosaic GPU custom calls in lowered StableHLO text: call sites and distinct kernel hashes (a jitted function
    lowered once holds its calls once, however many times it is called)."""
    hashes = re.findall(r'custom_call @mosaic_gpu_v2\(.*?kernel_hash = "((?:[^"\\]|\\.)*)"', hlo_text)
    return {"call_sites": len(hashes), "distinct": len(set(hashes)), "hashes": sorted(set(hashes))}


def build(shape: str, fold: bool):
    import benchmarks.decode_fusion as df
    from flax import nnx

    from quark_jax.nn import QuarkLinear

    df.QUARK_CONFIG_OF.setdefault("mxfp4", "w_mxfp4_a_mxfp4")  # the W4A4 fixture's quantization_config
    model = df.build(shape, "mxfp4", abstract=True)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, QuarkLinear) and fold and "weight_scale_kn" in m.param_names:
            m.scheme = m.scheme.replace(mosaic_fold=True)
    return model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8b")
    ap.add_argument("--lower-only", action="store_true")
    ap.add_argument("--mode", choices=("cold", "serial", "warm"), default="warm")
    ap.add_argument("--no-fold", action="store_true", help="keep the unfolded decode (an abstract model's default)")
    ap.add_argument("--threads", type=int, default=4, help="--mode warm: parallel warm-up compiles")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import jax
    from flax import nnx

    import benchmarks.decode_fusion as df
    from quark_jax.kernels import _dispatch, tuning
    from quark_jax.models import generation as g

    if args.lower_only and jax.default_backend() == "cpu":  # pretend the H200 for impl="auto"
        tuning.current_device = lambda: ("NVIDIA H200", "9.0")
        _dispatch.tuning.current_device = tuning.current_device
        _dispatch.pallas_interpret = lambda: False
    res = {"shape": args.shape, "mode": "lower-only" if args.lower_only else args.mode, "jax": jax.__version__,
           "device": jax.devices()[0].device_kind}
    t0 = time.perf_counter()
    model = build(args.shape, fold=not args.no_fold)
    res["build_s"] = time.perf_counter() - t0
    graphdef, _, dec = df._args_for(model, batch=1, prompt=128, cache_len=256, chunk=g.DECODE_CAPACITY)
    progs = g._Programs(graphdef, jax.tree_util.tree_structure(nnx.split(model)[1]))
    warmups = g.kernel_warmups(model, 1)
    res["warmups"] = len(warmups)

    if args.lower_only:
        t0 = time.perf_counter()
        text = progs.decode.trace(*dec).lower(lowering_platforms=("cuda",)).as_text()
        res["decode_lower_s"] = time.perf_counter() - t0
        dm = mosaic_calls(text)
        warm = set()
        for fn, a in warmups:
            warm.update(mosaic_calls(fn.trace(*a).lower(lowering_platforms=("cuda",)).as_text())["hashes"])
        res.update(decode_call_sites=dm["call_sites"], decode_distinct=dm["distinct"],
                   warmup_distinct=len(warm), warmups_cover_decode=set(dm["hashes"]) <= warm,
                   module_bytes=[len(m) for m in re.findall(r'module = "((?:[^"\\]|\\.)*)"', text)])
    else:
        def compile_one(fn, a):
            t = time.perf_counter()
            fn.lower(*a).compile()
            return time.perf_counter() - t

        t0 = time.perf_counter()
        if args.mode == "serial":
            res["warmup_s"] = [compile_one(fn, a) for fn, a in warmups]
        elif args.mode == "warm":
            with ThreadPoolExecutor(args.threads) as pool:
                res["warmup_s"] = list(pool.map(lambda p: compile_one(*p), warmups))
        res["warmup_wall_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lowered = progs.decode.lower(*dec)
        t1 = time.perf_counter()
        lowered.compile()
        res.update(decode_lower_s=t1 - t0, decode_compile_s=time.perf_counter() - t1)
    log(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
