"""The ``quark-jax`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _demo(args) -> int:
    """Quantize random activations the way each quantized layer of a checkpoint would, and report the error."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from quark_jax import quant
    from quark_jax.data import BUNDLED, bundled_checkpoint
    from quark_jax.io import SafetensorsFile

    names = [args.checkpoint] if args.checkpoint else sorted(BUNDLED)
    for name in names:
        ckpt = Path(name) if Path(name).is_dir() else bundled_checkpoint(name)
        qcfg = json.loads((ckpt / "config.json").read_text())["quantization_config"]["global_quant_config"]
        f = SafetensorsFile(ckpt / "model.safetensors")
        layers = sorted(n[: -len(".weight_scale")] for n in f.names() if n.endswith(".weight_scale"))
        wspec, ispec = qcfg["weight"], qcfg["input_tensors"]
        print(f"{name}: weight {wspec['dtype']}/{wspec['qscheme']}, input "
              f"{ispec and ispec['dtype']}/{ispec and ispec['qscheme']} ({len(layers)} quantized layers)")
        print(f"  {'layer':<36} {'rel. error of y':>16} {'time':>9}")
        key = jax.random.PRNGKey(0)
        for layer in layers:
            w, s = f.get(layer + ".weight"), f.get(layer + ".weight_scale")
            t0 = time.perf_counter()
            if wspec["dtype"] == "fp4":
                wd = quant.dequantize_mxfp4(jnp.asarray(w), jnp.asarray(s), jnp.float32)
            else:
                wd = jnp.asarray(w).astype(jnp.float32) * jnp.asarray(s, jnp.float32).reshape(-1, 1)
            x = jax.random.normal(key, (8, wd.shape[1]), jnp.float32)
            if ispec is None:
                xd = x
            elif ispec["dtype"] == "fp4":
                xd = quant.qdq_mxfp4(x)
            elif ispec["is_dynamic"]:
                q, sx = quant.scaled_fp8_quant(x, per_token=True)
                xd = q.astype(jnp.float32) * sx
            else:  # static per-tensor with the checkpoint's calibrated input scale
                q, sx = quant.scaled_fp8_quant(x, jnp.asarray(f.get(layer + ".input_scale")))
                xd = q.astype(jnp.float32) * sx
            y, yref = xd @ wd.T, x @ wd.T
            err = float(jnp.linalg.norm(y - yref) / jnp.linalg.norm(yref))
            print(f"  {layer:<36} {err:>16.3e} {1e3 * (time.perf_counter() - t0):>7.1f}ms")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quark-jax", description="Run AMD Quark-quantized models in JAX.")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="quantize activations per layer of a bundled checkpoint and report the error")
    d.add_argument("checkpoint", nargs="?", help="bundled name or checkpoint directory (default: all bundled)")
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
