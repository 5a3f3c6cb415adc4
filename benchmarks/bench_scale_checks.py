"""Cost of the load-time scale checks (quark_jax.value_checks) relative to loading, on CPU, for one decoder layer of
8B shapes (Llama-3-8B: hidden 4096, intermediate 14336, 8 KV heads of 128), written as a synthetic checkpoint.

Both schemes with the most scale bytes per weight byte are measured: MXFP4 (E8M0 scales [N, K/32], 1/16 of the
packed weight) and FP8 per-channel ([N] float32). Loading = ``load_layer_params`` of the 7 projections (read,
validate, check values); every layer of an 8B model has the same shapes, so the share holds for the whole model
(and from_pretrained adds processing and the device transfer on top, which makes the share smaller).

    PYTHONPATH=. python benchmarks/bench_scale_checks.py [--dir /tmp/scale_bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from checkpoint_tools import write_safetensors  # noqa: E402
from quark_jax.checkpoint import load_layer_params, open_checkpoint  # noqa: E402
from quark_jax.schemes import QuarkW4A4MXFP4, QuarkW8A8Fp8  # noqa: E402
from quark_jax.value_checks import check_scale, is_scale_name  # noqa: E402

H, I, KV = 4096, 14336, 1024
PROJ = {"self_attn.q_proj": (H, H), "self_attn.k_proj": (KV, H), "self_attn.v_proj": (KV, H),
        "self_attn.o_proj": (H, H), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}


def tensors(scheme: str, rng) -> dict[str, np.ndarray]:
    out = {}
    for name, (n, k) in PROJ.items():
        p = f"model.layers.0.{name}"
        if scheme == "mxfp4":
            out[f"{p}.weight"] = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
            out[f"{p}.weight_scale"] = rng.integers(100, 130, (n, k // 32), dtype=np.uint8)
        else:
            out[f"{p}.weight"] = rng.integers(0, 126, (n, k), dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
            out[f"{p}.weight_scale"] = rng.uniform(1e-3, 1e-2, (n, 1)).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    results = {}
    for scheme, obj in (("mxfp4", QuarkW4A4MXFP4()), ("fp8_per_channel", QuarkW8A8Fp8("per_channel", "dynamic_per_token"))):
        d = root / scheme
        d.mkdir(parents=True, exist_ok=True)
        t = tensors(scheme, rng)
        write_safetensors(d / "model.safetensors", t)
        (d / "config.json").write_text("{}")
        reader = open_checkpoint(d)
        scales = {n: a for n, a in t.items() if is_scale_name(n)}
        load, check = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for name in PROJ:
                load_layer_params(reader, f"model.layers.0.{name}", obj)
            load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for n, a in scales.items():
                check_scale(a, tensor=n)
            check.append(time.perf_counter() - t0)
        lo, ch = min(load), min(check)
        results[scheme] = {"weight_bytes": int(sum(a.nbytes for n, a in t.items() if n.endswith(".weight"))),
                           "scale_bytes": int(sum(a.nbytes for a in scales.values())),
                           "load_layer_s": lo, "scale_check_s": ch, "share": ch / lo}
        print(f"{scheme}: one 8B-shaped layer, weights {results[scheme]['weight_bytes'] / 1e6:.1f} MB, scales "
              f"{results[scheme]['scale_bytes'] / 1e6:.2f} MB: load_layer_params {1e3 * lo:.1f} ms (incl. checks), "
              f"scale checks alone {1e3 * ch:.2f} ms = {100 * ch / lo:.2f}% of loading")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
