"""First-call compile time against XLA options, with what the options cost at run time (one in-memory model).

Each run uses a fresh persistent compilation cache directory (an empty-cache first call), so run it once per
option set, in separate processes (XLA_FLAGS is read at backend start):

    XLA_FLAGS=--xla_gpu_autotune_level=0 python benchmarks/compile_probe.py --scheme fp8 --shape 8b --out r.json

Reports the first ``generate`` (prefill + decode programs compiled, the decode chunk in a background thread),
then the prefill at ``--prefill`` tokens (its own first call = its compile, then the median of 3) and the decode
ms/step of a 128-step chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scheme", choices=("bf16", "fp8", "int8"), default="fp8")
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-options", default=None,
                    help="generation.PREFILL_COMPILER_OPTIONS as JSON (e.g. '{}': XLA's defaults)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.prefill_options is not None:
        from quark_jax.models import generation

        generation.PREFILL_COMPILER_OPTIONS = json.loads(args.prefill_options)

    import jax
    from flax import nnx

    from benchmarks.decode_fusion import build
    from quark_jax.models.compile_cache import enable_compilation_cache

    enable_compilation_cache(tempfile.mkdtemp(prefix="compile_probe_"), force=True)
    from quark_jax.models import generation

    out = {"scheme": args.scheme, "shape": args.shape, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "prefill_options": generation.prefill_compiler_options(),
           "device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
    model = build(args.shape, args.scheme, abstract=False, max_positions=max(4096, args.prefill + 256))
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1)
    ids = rng.integers(3, vocab, size=(1, args.prompt), dtype=np.int32)
    t0 = time.perf_counter()
    np.asarray(model.generate(ids, args.new_tokens))
    out["first_call_s"] = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        _, st = model.generate(ids, args.new_tokens, return_stats=True)
        runs.append(1e3 * float(np.sum(st.decode_s)) / max(len(st.decode_s), 1))
    out["decode_ms_runs"], out["decode_ms"] = runs, float(np.median(runs))
    long_ids = rng.integers(3, vocab, size=(1, args.prefill), dtype=np.int32)
    ts = []
    for _ in range(4):
        t0 = time.perf_counter()
        np.asarray(model.generate(long_ids, 1))
        ts.append(time.perf_counter() - t0)
    out["prefill_first_s"], out["prefill_ms"] = ts[0], 1e3 * float(np.median(ts[1:]))
    print("RESULT " + json.dumps(out), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
