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


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _resolve_dir(name: str) -> Path:
    from quark_jax.data import BUNDLED, bundled_checkpoint

    return Path(name) if Path(name).is_dir() or name not in BUNDLED else bundled_checkpoint(name)


def _inspect(args) -> int:
    """Which scheme each layer of a checkpoint gets, its bytes, what is excluded and what is unsupported."""
    from quark_jax.checkpoint import open_checkpoint
    from quark_jax.config import QuarkConfig
    from quark_jax.errors import CheckpointError, QuarkConfigError

    ckpt = _resolve_dir(args.checkpoint)
    try:
        reader = open_checkpoint(ckpt)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(reader.nbytes(n) for n in reader.names())
    print(f"checkpoint: {ckpt}  ({len(reader)} tensors in {len(reader.files)} file(s), {_size(total)})")
    qc = reader.config.get("quantization_config")
    if qc is None:
        print("no quantization_config: an unquantized checkpoint")
        return 0
    try:
        cfg = QuarkConfig(qc, checkpoint_dir=ckpt)
    except QuarkConfigError as e:
        print(f"unsupported quantization_config: {e}", file=sys.stderr)
        return 1
    g = cfg.global_quant_config
    print(f"quant_method: quark (version {qc.get('version', '?')}); global: "
          f"{g.brief() if g else 'None (only layer_quant_config entries quantize)'}")
    if cfg.layer_quant_config:
        print(f"layer_quant_config: {list(cfg.layer_quant_config)}")
    if cfg.layer_type_quant_config:
        print(f"layer_type_quant_config: {list(cfg.layer_type_quant_config)}")
    print(f"exclude: {list(cfg.exclude)}")
    if cfg.kv_cache is not None:
        print(f"KV cache: {cfg.kv_cache.dtype_name} {cfg.kv_cache.qscheme}, scales from the "
              f"{list(cfg.kv_cache.group)} output_scale tensors")

    paths = cfg.layer_paths()
    plans = [cfg.plan(p) for p in paths]
    sizes = {p: sum(reader.nbytes(n) for n in reader.tensors_of(p)) for p in paths}
    width = max([len(p) for p in paths] + [5])
    print()
    print(f"{'layer':<{width}}  {'bytes':>9}  scheme")
    for plan in plans:
        what = plan.scheme_name() if plan.status != "unsupported" else f"UNSUPPORTED: {plan.reason}"
        if plan.status in ("excluded", "unquantized") and plan.source:
            what += f" ({plan.source})"
        if plan.kv_cache:
            what += "  + KV-cache scale"
        print(f"{plan.path:<{width}}  {_size(sizes[plan.path]):>9}  {what}")

    by_status = {}
    for plan in plans:
        by_status.setdefault(plan.status, []).append(plan)
    layer_bytes = sum(sizes.values())
    print()
    for status in ("quantized", "excluded", "unquantized", "unsupported"):
        group = by_status.get(status, [])
        if group:
            print(f"{status}: {len(group)} layer(s), {_size(sum(sizes[p.path] for p in group))}")
    print(f"other tensors (norms, ...): {_size(total - layer_bytes)}; total {_size(total)}")
    unsupported = by_status.get("unsupported", [])
    for plan in unsupported:
        print(f"unsupported {plan.path}: {plan.reason}")
    return 1 if unsupported else 0


def _parse_ids(text: str) -> list[list[int]]:
    """``"1,5,9"`` -> [[1, 5, 9]]; ``"1,5;2,6"`` -> two rows of one batch (rows must have one length)."""
    rows = []
    for row in text.split(";"):
        try:
            rows.append([int(t) for t in row.replace(" ", "").split(",") if t != ""])
        except ValueError:
            raise argparse.ArgumentTypeError(f"--prompt-ids: expected comma-separated integers (rows separated by "
                                             f"';'), got {text!r}") from None
    if not rows or not all(rows) or len({len(r) for r in rows}) != 1:
        raise argparse.ArgumentTypeError(f"--prompt-ids: expected one or more rows of the same non-zero length, "
                                         f"got {text!r}")
    return rows


def _run(args) -> int:
    """Load a checkpoint (default: the bundled one), generate with jitted prefill + decode, print ids and timing."""
    import numpy as np

    from quark_jax.data import DEFAULT_CHECKPOINT, bundled_checkpoint
    from quark_jax.errors import CheckpointError, QuarkConfigError
    from quark_jax.models import UnsupportedModelError, from_pretrained
    from quark_jax.nn import QuarkLinear

    name = args.checkpoint or DEFAULT_CHECKPOINT
    ckpt = _resolve_dir(name) if args.checkpoint else bundled_checkpoint(DEFAULT_CHECKPOINT)
    options = {"impl": args.impl} if args.impl else {}
    t0 = time.perf_counter()
    try:
        model = from_pretrained(ckpt, dtype=args.dtype, progress=None if args.progress is None else args.progress,
                                **options)
    except (CheckpointError, QuarkConfigError, UnsupportedModelError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    cfg = model.config
    schemes = {}
    from flax import nnx

    for _, m in nnx.iter_modules(model):
        if isinstance(m, QuarkLinear):
            schemes[type(m.scheme).__name__] = schemes.get(type(m.scheme).__name__, 0) + 1
    quant = ", ".join(f"{k} x{v}" for k, v in schemes.items()) or "none (float checkpoint)"
    from quark_jax.data import BUNDLED

    print(f"checkpoint: {ckpt}" + (f"  (bundled '{name}')" if name in BUNDLED and not Path(name).is_dir() else ""))
    print(f"model: {cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, {model.dtype.name}; Quark layers: {quant}; KV cache {model.kv_cache_dtype.name}")
    print(f"loaded in {load_s:.2f} s")
    ids = np.asarray(args.prompt_ids, np.int32)
    gen = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed, eos_token_id=args.eos_token_id)
    try:
        t0 = time.perf_counter()
        out, first = model.generate(ids, args.max_new_tokens, return_stats=True, **gen)
        cold_s = time.perf_counter() - t0
        out, stats = model.generate(ids, args.max_new_tokens, return_stats=True, **gen)  # compiled: steady timing
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = np.asarray(out)
    for row_in, row_out in zip(ids, out):
        print(f"prompt ids:    {row_in.tolist()}")
        print(f"generated ids: {row_out[len(row_in):].tolist()}")
    n_dec = len(stats.decode_s)
    print(f"first call (compiles prefill and decode): {cold_s:.2f} s")
    print(f"prefill: {1e3 * stats.prefill_s:.2f} ms for {stats.prompt_tokens} tokens x {ids.shape[0]} "
          f"(bucket {stats.prefill_bucket}, cache {stats.cache_len} slots)")
    if n_dec:
        print(f"decode:  {1e3 * stats.per_token_s:.2f} ms/token over {n_dec} steps "
              f"({ids.shape[0] / stats.per_token_s:.0f} tokens/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quark-jax", description="Run AMD Quark-quantized models in JAX.")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="quantize activations per layer of a bundled checkpoint and report the error")
    d.add_argument("checkpoint", nargs="?", help="bundled name or checkpoint directory (default: all bundled)")
    d.set_defaults(func=_demo)
    i = sub.add_parser("inspect", help="which scheme each layer of a checkpoint gets, bytes, excluded, unsupported")
    i.add_argument("checkpoint", help="checkpoint directory (config.json + safetensors) or a bundled name")
    i.set_defaults(func=_inspect)
    r = sub.add_parser("run", help="load a checkpoint and generate (jitted prefill + decode); prints ids and timing")
    r.add_argument("checkpoint", nargs="?", help="checkpoint directory or bundled name (default: the bundled "
                   "tiny-llama-mxfp4)")
    r.add_argument("--prompt-ids", type=_parse_ids, default=[[1, 5, 9]],
                   help="comma-separated token ids; ';' separates the rows of a batch (default: 1,5,9)")
    r.add_argument("--max-new-tokens", type=int, default=16)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-k", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--eos-token-id", type=int, default=None, help="stop once every row produced it")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="activation dtype (default: the checkpoint's)")
    r.add_argument("--impl", choices=["auto", "pallas", "xla"], default=None, help="GEMM implementation")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="loading progress line (default: for checkpoints over 256 MiB)")
    r.set_defaults(func=_run)
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
