"""Compile chosen MXFP4 Mosaic decode configs once (GPU only) so that Mosaic GPU's dump switches write their
PTX / ptxas log / SASS, then print an opcode histogram per dumped SASS file (issue 16: instructions per weight,
registers, spills, serialized wgmma).

Usage (repo root, on the device; the dump directory must exist):
    mkdir -p $OUT/dump && MOSAIC_GPU_DUMP_TO=$OUT/dump MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_SASS=1 \\
    MOSAIC_GPU_DUMP_PTX=1 PYTHONPATH=. python benchmarks/mxfp4_mosaic_dump.py --rows mx_kn,mx_fold,mx_step \\
        [--shape 4096x14336] [--m 1]
Rows are names of ``gemm_mxfp4.SWEEP``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def opcode_histogram(text: str) -> collections.Counter:
    """SASS opcodes (the mnemonic before the first '.' or space, predicates dropped) counted over ``text``."""
    ops = collections.Counter()
    for line in text.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            ops[m.group(2)] += 1
    return ops


def main(argv=None) -> int:
    import jax
    import jax.numpy as jnp

    import gemm_mxfp4
    from quark_jax import quant
    from quark_jax.kernels.mxfp4_mm import pallas_mosaic_gpu

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="mx_kn,mx_fold,mx_step,mx_probe")
    p.add_argument("--shape", default="4096x14336")
    p.add_argument("--m", type=int, default=1)
    a = p.parse_args(argv)
    k, n = (int(v) for v in a.shape.split("x"))
    x = jax.random.normal(jax.random.key(0), (a.m, k), jnp.bfloat16)
    wp, ws = jax.jit(quant.quantize_mxfp4)(jax.random.normal(jax.random.key(1), (n, k), jnp.float32) * 0.02)
    base = pallas_mosaic_gpu.default_config(k, n)
    for name in a.rows.split(","):
        change, q, kn = gemm_mxfp4.SWEEP[name]
        cfg = dataclasses.replace(base, **change)
        if name.endswith("split2x"):
            cfg = dataclasses.replace(cfg, split_k=cfg.split_k * 2)
        print(f"== {name}: {cfg.fit(k=k, n=n)}", flush=True)
        try:
            jax.block_until_ready(pallas_mosaic_gpu.mxfp4_mm_mosaic(x, wp, ws.T if kn else ws, quantize_input=q,
                                                                    config=cfg, scales_kn=kn))
        except Exception as e:  # reported, the other rows still compile
            print(f"   failed: {e!r}"[:400], flush=True)
    d = os.environ.get("MOSAIC_GPU_DUMP_TO")
    for f in sorted(Path(d).iterdir()) if d else []:
        if "sass" in f.name.lower():
            ops = opcode_histogram(f.read_text(errors="replace"))
            print(f"{f.name}: {sum(ops.values())} instructions; " + ", ".join(f"{o} {c}" for o, c in ops.most_common(14)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
