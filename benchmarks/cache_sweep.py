"""Decode time per token against the KV-cache length (slots) and the number of new tokens, one in-memory model.

Session 6 measured FP8 decode at 2.77 ms/step with a 192-slot cache (128 + 32 tokens) and 3.64 ms/step with 256
slots (128 + 128) on the same H200: this separates the two causes (cache slots vs steps per run) and profiles
the GPU work per step of each cache length (kernels, busy time, top kernels), and (``--hlo-dir``) writes the
compiled decode-chunk HLO of each profiled length so their KV-cache layouts and fusions can be compared.

    python benchmarks/cache_sweep.py --scheme fp8 --shape 8b --caches 192,256,320,512 --new-tokens 32,128 \
        --profile-caches 192,256 --hlo-dir /tmp/hlo --out r.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def decode_hlo(model, *, prompt: int, cache_len: int, chunk: int) -> str:
    """The compiled (optimized) HLO text of the decode-chunk program for this cache length."""
    from benchmarks.decode_fusion import _args_for
    from quark_jax.models import generation as g

    _, _, dec = _args_for(model, batch=1, prompt=prompt, cache_len=cache_len, chunk=chunk)
    return g._programs(model)[0].decode.trace(*dec).lower().compile().as_text()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scheme", choices=("bf16", "fp8", "int8"), default="fp8")
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--caches", default="192,256", help="max_cache_len values")
    ap.add_argument("--new-tokens", default="32,128", help="new tokens per run (where prompt + n fits the cache)")
    ap.add_argument("--chunk", default=None, help="generate's chunk_size, or a list (default: the library's)")
    ap.add_argument("--profile-caches", default="", help="cache lengths to profile (8 steps, batch 1)")
    ap.add_argument("--profile-steps", type=int, default=8, help="decode steps per profile (chunks of --chunk)")
    ap.add_argument("--hlo-dir", default=None, help="write the compiled decode HLO of each profiled length")
    ap.add_argument("--keep-trace", default=None, help="copy each profile's trace (host + GPU events) here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import jax
    from flax import nnx

    from benchmarks.decode_fusion import build
    from quark_jax.models import generation as g

    chunks = _ints(args.chunk) if args.chunk else [g.DECODE_CAPACITY]
    chunk = chunks[0]  # the profiles' and the HLO's
    out = {"scheme": args.scheme, "shape": args.shape, "prompt": args.prompt, "chunk": chunk,
           "device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "runs": [], "profiles": {}}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))

    model = build(args.shape, args.scheme, abstract=False)
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    ids = np.random.default_rng(1).integers(3, model.config.vocab_size, size=(1, args.prompt), dtype=np.int32)
    split_ms = []  # host cost per generate call: the model's split into graph and state, the state's flatten
    for _ in range(5):
        t0 = time.perf_counter()
        g._programs(model)
        split_ms.append(1e3 * (time.perf_counter() - t0))
    out["programs_lookup_ms"] = split_ms
    print("PROGRAMS_LOOKUP_MS", [round(v, 2) for v in split_ms], flush=True)
    for cache_len, n_new, chunk_r in ((c, n, k) for c in _ints(args.caches) for n in _ints(args.new_tokens)
                                      for k in chunks):
        if args.prompt + n_new > cache_len:
            continue
        t0 = time.perf_counter()
        np.asarray(model.generate(ids, n_new, max_cache_len=cache_len, chunk_size=chunk_r))
        first = time.perf_counter() - t0
        runs, per_chunk = [], []
        for _ in range(3):
            _, st = model.generate(ids, n_new, max_cache_len=cache_len, chunk_size=chunk_r, return_stats=True)
            runs.append(1e3 * float(np.sum(st.decode_s)) / max(len(st.decode_s), 1))
            per_chunk.append([round(1e3 * float(v), 3) for v in st.decode_s[::chunk_r]])  # ms/step per chunk
        row = {"cache_len": cache_len, "new_tokens": n_new, "chunk": chunk_r, "first_s": first,
               "decode_ms_runs": runs, "decode_ms": float(np.median(runs)), "ms_per_step_by_chunk": per_chunk}
        out["runs"].append(row)
        print("RUN", json.dumps(row), flush=True)
        save()
    from benchmarks.profile_decode import _after_largest_gap, _gpu_events, profile_decode

    for cache_len in _ints(args.profile_caches):
        d = tempfile.mkdtemp(prefix="cache_sweep_")
        steps = args.profile_steps
        p = profile_decode(model, batch=1, prompt_len=args.prompt, max_cache_len=cache_len, steps=steps,
                           chunk_size=chunk, trace_dir=d)
        ev = _gpu_events(d)
        if args.keep_trace:
            shutil.copytree(d, Path(args.keep_trace) / f"{args.scheme}_{args.shape}_{cache_len}_c{chunk}",
                            dirs_exist_ok=True)
        shutil.rmtree(d, ignore_errors=True)
        dec = ev[_after_largest_gap(ev):][p["prefill_kernels"]:]  # the decode kernels, as profile_decode cuts
        if dec:  # busy and span per group of `chunk` steps, in time order (does the GPU work per step drift?)
            per = max(1, len(dec) * chunk // steps)
            p["by_chunk"] = [{"busy_us_per_step": sum(d_ for _, d_, _ in g) / chunk,
                              "span_us_per_step": (max(t + d_ for t, d_, _ in g) - g[0][0]) / chunk}
                             for g in (dec[i:i + per] for i in range(0, len(dec), per))]
        out["profiles"][str(cache_len)] = p
        print("PROFILE", cache_len, json.dumps({k: v for k, v in p.items() if k != "top"}), flush=True)
        save()
        if args.hlo_dir:
            Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)
            text = decode_hlo(model, prompt=args.prompt, cache_len=cache_len, chunk=chunk)
            with gzip.open(Path(args.hlo_dir) / f"decode_{args.scheme}_{cache_len}.hlo.gz", "wt") as f:
                f.write(text)
    save()
    return out


if __name__ == "__main__":
    main()
