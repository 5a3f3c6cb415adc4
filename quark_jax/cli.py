"""The ``quark-jax`` command line.

Conventions every subcommand follows (add new ones with :func:`add_checkpoint_argument` and
:func:`resolve_checkpoint_arg`, and let errors propagate to :func:`main`):

* a checkpoint argument is a directory or a bundled name; an existing local path wins over a bundled name, and a
  missing one gets one error text (:func:`quark_jax.io.resolve_checkpoint`; Hub ids too);
* exit status: 0 success; 1 the command ran and found problems (``check``, ``inspect``); 2 a user error (missing
  path, bad argument, unreadable or unsupported checkpoint: any :class:`~quark_jax.errors.QuarkJaxError`,
  ``ValueError``, ``TypeError`` or ``OSError``), printed as one ``error: ...`` line on stderr; 3 an internal error
  (a bug: one line too). ``--debug`` (before or after the subcommand) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_PROBLEMS, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 0, 1, 2, 3


def add_checkpoint_argument(parser: argparse.ArgumentParser, *, optional: bool = False, default_help: str = ""):
    """The positional ``checkpoint`` argument of a subcommand: a directory or a bundled name."""
    from quark_jax.data import BUNDLED

    text = f"checkpoint directory (config.json + safetensors) or bundled name ({', '.join(sorted(BUNDLED))})"
    parser.add_argument("checkpoint", nargs="?" if optional else None, help=text + default_help)


def resolve_checkpoint_arg(name) -> Path:
    """The directory of a checkpoint argument (a local path wins over a bundled name); a missing one raises
    :class:`~quark_jax.errors.CheckpointNotFoundError`."""
    from quark_jax.io import resolve_checkpoint

    return resolve_checkpoint(name)


def _bundled_label(name: str) -> str:
    from quark_jax.data import BUNDLED

    return f"  (bundled '{name}')" if name in BUNDLED and not Path(name).is_dir() else ""


def _demo(args) -> int:
    """Per quantized layer: output and weight error against the float model, compile and run time
    (:mod:`quark_jax.demo`)."""
    from quark_jax.data import BUNDLED
    from quark_jax.demo import default_reference, layer_errors

    names = [args.checkpoint] if args.checkpoint else sorted(BUNDLED)
    for name in names:
        ckpt = resolve_checkpoint_arg(name)
        reference = resolve_checkpoint_arg(args.reference) if args.reference else default_reference(ckpt)
        rows = layer_errors(ckpt, reference=reference, rows=args.rows, seed=args.seed)
        print(f"{name}{_bundled_label(name)}: {len(rows)} quantized layers; reference: "
              + (f"float weights of {reference}" if reference else
                 "the checkpoint's dequantized weights (activation error only; --reference FLOAT_DIR for the "
                 "weight error)"))
        print(f"  {args.rows} activation rows per layer in its calibrated range (seed {args.seed})")
        print(f"  {'layer':<36} {'output err':>10} {'weight err':>10} {'compile':>9} {'run':>9}  scheme")
        fmt = lambda v: f"{v:>10.3e}" if v is not None else f"{'n/a':>10}"  # noqa: E731
        for r in rows:
            print(f"  {r.layer:<36} {fmt(r.output_error)} {fmt(r.weight_error)} {r.compile_ms:>7.1f}ms "
                  f"{r.run_ms:>7.3f}ms  {r.scheme}")
        print()
    return EXIT_OK


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _kernel_shapes(reader, plans) -> list[tuple[str, str, int, int]]:
    """(layer path, kernel entry, K, N) of every quantized layer whose scheme calls a kernels entry."""
    from quark_jax.config import kernel_shape

    return [(p.path, *shape) for p in plans if (shape := kernel_shape(p, reader))]


def _tune(args) -> int:
    """Time the GEMM implementations on this device at a checkpoint's layer shapes (or the standard benchmark
    shapes) for decode and prefill M, and write the user table that ``impl="auto"`` reads first."""
    import jax

    from quark_jax.kernels.tuning import tuner

    if args.checkpoint:
        from quark_jax.checkpoint import open_checkpoint
        from quark_jax.config import QuarkConfig

        reader = open_checkpoint(resolve_checkpoint_arg(args.checkpoint))
        if reader.config.get("quantization_config") is None:
            print("error: an unquantized checkpoint: no layer calls a quark_jax.kernels GEMM", file=sys.stderr)
            return EXIT_USER_ERROR
        cfg = QuarkConfig.from_pretrained(reader)
        plans = [cfg.plan(p) for p in reader.weight_layer_paths()]
        shapes = {(op, k, n) for _, op, k, n in _kernel_shapes(reader, plans)}
        if not shapes:
            print("error: no layer of this checkpoint calls a quark_jax.kernels GEMM", file=sys.stderr)
            return EXIT_USER_ERROR
    else:
        shapes = {(op, k, n) for op in tuner.tuning.OPS for k, n in tuner.STANDARD_SHAPES}
    if jax.default_backend() != "gpu":
        print("warning: no GPU: Pallas runs in interpret mode and the table says nothing about speed",
              file=sys.stderr)
    path = Path(args.out) if args.out else None
    table, rows = tuner.tune(tuner.points(shapes, args.m), path=path)
    path = path or tuner.user_table_path(table["device_kind"])
    print(f"tuned {len({(r['op'], r['m'], r['k'], r['n']) for r in rows})} shape(s); wrote {path}")
    for op, entries in tuner.compact(table)["impl"].items():
        print(f"  {op}: " + ", ".join(f"{key} {impl}" for key, impl in entries.items()))
    return EXIT_OK


def _inspect(args) -> int:
    """Which scheme each layer of a checkpoint gets, its bytes, what is excluded and what is unsupported."""
    from quark_jax.checkpoint import open_checkpoint
    from quark_jax.kernels import describe_auto
    from quark_jax.config import QuarkConfig
    from quark_jax.errors import QuarkConfigError

    ckpt = resolve_checkpoint_arg(args.checkpoint)
    reader = open_checkpoint(ckpt)
    total = sum(reader.nbytes(n) for n in reader.names())
    print(f"checkpoint: {ckpt}  ({len(reader)} tensors in {len(reader.files)} file(s), {_size(total)})")
    qc = reader.config.get("quantization_config")
    if qc is None:
        print("no quantization_config: an unquantized checkpoint")
        return EXIT_PROBLEMS if _inspect_problems(args, ckpt) else EXIT_OK
    try:
        cfg = QuarkConfig.from_pretrained(reader)
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

    paths = reader.weight_layer_paths()
    plans = [cfg.plan(p) for p in paths]
    sizes = {p: sum(reader.nbytes(n) for n in reader.tensors_of(p)) for p in paths}
    width = max([len(p) for p in paths] + [5])
    auto = {path: describe_auto(op, k, n) for path, op, k, n in _kernel_shapes(reader, plans)}
    print()
    print(f"{'layer':<{width}}  {'bytes':>9}  scheme")
    for plan in plans:
        what = plan.scheme_name() if plan.status != "unsupported" else f"UNSUPPORTED: {plan.reason}"
        if plan.status in ("excluded", "unquantized") and plan.source:
            what += f" ({plan.source})"
        if plan.kv_cache:
            what += "  + KV-cache scale"
        if auto.get(plan.path):  # on a GPU: what impl="auto" runs at decode and prefill, and why
            what += f"  [auto: {auto[plan.path]}]"
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
    problems = _inspect_problems(args, ckpt, skip_layers={p.path for p in unsupported})
    return EXIT_PROBLEMS if unsupported or problems else EXIT_OK


def _inspect_problems(args, ckpt, skip_layers=()) -> list:
    """inspect's validation (structure and scale values; ``--no-check`` skips it), printed; the problems."""
    if not args.check:
        return []
    from quark_jax.validation import validate_checkpoint

    problems = [p for p in validate_checkpoint(ckpt, weights=False) if p.layer not in skip_layers]
    for p in problems:
        print(f"problem: {p}")
    print(f"check (structure and scales): {len(problems)} problem(s)" if problems
          else "check (structure and scales): no problems found")
    return problems


def _check(args) -> int:
    """Read every tensor of a checkpoint, print every problem (one per line), exit 1 when there is any."""
    from quark_jax.validation import validate_checkpoint

    ckpt = resolve_checkpoint_arg(args.checkpoint)
    problems = validate_checkpoint(ckpt)
    for p in problems:
        print(f"problem: {p}")
    print(f"checkpoint: {ckpt}{_bundled_label(args.checkpoint)}: "
          + (f"{len(problems)} problem(s)" if problems else "no problems found"))
    return EXIT_PROBLEMS if problems else EXIT_OK


def _parse_ids(text: str) -> list[list[int]]:
    """``"1,5,9"`` -> [[1, 5, 9]]; ``"1,5;2,6"`` -> two rows of one batch (rows must have one length)."""
    rows = []
    for row in text.split(";"):
        try:
            rows.append([int(t) for t in row.replace(" ", "").split(",") if t != ""])
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers (rows separated by "
                                             f"';'), got {text!r}") from None
    if not rows or not all(rows) or len({len(r) for r in rows}) != 1:
        raise argparse.ArgumentTypeError(f"expected one or more rows of the same non-zero length, got {text!r}")
    negative = [t for r in rows for t in r if t < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"token ids must be >= 0, got {negative[0]} in {text!r}")
    return rows


def _token_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token id (an integer >= 0), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"token ids must be >= 0, got {value}")
    return value


_ID_OPTIONS = ("--prompt-ids", "--eos-token-id")
_NEGATIVE_IDS = re.compile(r"^-[0-9][0-9,; ]*$")


def _join_negative_ids(argv: list[str]) -> list[str]:
    """``--prompt-ids -1,5`` -> ``--prompt-ids=-1,5``: argparse would take ``-1,5`` for an option and report
    "expected one argument"; joined, the ids parser says what is wrong with them."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _ID_OPTIONS and i + 1 < len(argv) and _NEGATIVE_IDS.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _run(args) -> int:
    """Load a checkpoint (default: the bundled one) and generate: text with --prompt / --chat (the default when the
    checkpoint has tokenizer files), ids with --prompt-ids; then the timing."""
    import numpy as np

    from quark_jax.data import DEFAULT_CHECKPOINT
    from quark_jax.errors import InvalidArgumentError
    from quark_jax.models import from_pretrained
    from quark_jax.nn import QuarkLinear

    if args.system is not None and args.chat is None:
        raise ValueError("--system: a system message goes with --chat MESSAGE (the chat template's turns)")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size: expected a positive integer, got {args.chunk_size}")
    name = args.checkpoint or DEFAULT_CHECKPOINT
    ckpt = resolve_checkpoint_arg(name)
    if args.prompt_ids is None and args.prompt is None and args.chat is None and (ckpt / "tokenizer.json").is_file():
        args.prompt = _DEFAULT_PROMPT  # the default run shows text when it can
    tok = _load_tokenizer(ckpt) if args.prompt is not None or args.chat is not None else None  # before the model
    options = {"impl": args.impl} if args.impl else {}
    t0 = time.perf_counter()
    model = from_pretrained(ckpt, dtype=args.dtype, progress=None if args.progress is None else args.progress,
                            **options)
    load_s = time.perf_counter() - t0
    cfg = model.config
    schemes = {}
    from flax import nnx

    for _, m in nnx.iter_modules(model):
        if isinstance(m, QuarkLinear):
            schemes[type(m.scheme).__name__] = schemes.get(type(m.scheme).__name__, 0) + 1
    quant = ", ".join(f"{k} x{v}" for k, v in schemes.items()) or "none (float checkpoint)"
    print(f"checkpoint: {ckpt}" + _bundled_label(name))
    print(f"model: {cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, {model.dtype.name}; Quark layers: {quant}; KV cache {model.kv_cache_dtype.name}")
    print(f"loaded in {load_s:.2f} s")
    if args.checks and tok is not None:
        raise InvalidArgumentError("--checks: runs with --prompt-ids (token ids), not with text prompts")
    if tok is not None:
        return _run_text(args, model, tok)
    ids = np.asarray(args.prompt_ids or _DEFAULT_PROMPT_IDS, np.int32)
    gen = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed, eos_token_id=args.eos_token_id)
    if args.checks:  # first, so that a failure is reported before any timing
        model.generate(ids, args.max_new_tokens, checks=True, **gen)
    t0 = time.perf_counter()
    out, first = model.generate(ids, args.max_new_tokens, return_stats=True, **gen)
    cold_s = time.perf_counter() - t0
    out, stats = model.generate(ids, args.max_new_tokens, return_stats=True, **gen)  # compiled: steady timing
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
    produced = 1 + n_dec  # prefill samples the first new token, each decode step one more
    if args.eos_token_id is not None and produced < args.max_new_tokens:
        print(f"stopped early: every row produced eos id {args.eos_token_id} within {produced} of "
              f"{args.max_new_tokens} new tokens; the last {args.max_new_tokens - produced} ids of each row are "
              f"eos padding")
    return 0


_DEFAULT_PROMPT = "Once upon a time"
_DEFAULT_PROMPT_IDS = [[1, 5, 9]]


def _load_tokenizer(ckpt: Path):
    from quark_jax.models import Tokenizer

    try:
        return Tokenizer.from_pretrained(ckpt)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (use --prompt-ids)") from None
    except ImportError as e:  # the text extra is not installed: a user error, not a bug
        raise ValueError(str(e)) from None


def _run_text(args, model, tok) -> int:
    """``run --prompt / --chat``: encode with the checkpoint's tokenizer, print the continuation while the device
    loop produces it (chunks of ``--chunk-size`` tokens, decoded without splitting a UTF-8 character), stop at
    the tokenizer's EOS / end-of-turn ids (or ``--eos-token-id``), then the timing."""
    import numpy as np

    from quark_jax.models.text import prompt_ids
    from quark_jax.models.tokenizer import split_at_stop

    if args.chat is not None:
        ids = prompt_ids(tok, args.chat, system=args.system, chat=True)
        what = f"chat: {'system + ' if args.system is not None else ''}user turn through the chat template"
    else:
        ids = prompt_ids(tok, args.prompt)
        what = f"prompt: {args.prompt!r}"
    stops = tok.eos_token_ids if args.eos_token_id is None else (args.eos_token_id,)
    print(f"tokenizer: vocab {tok.vocab_size}, chat template {'yes' if tok.chat_template else 'no'}, "
          f"stop ids {list(stops)}")
    print(f"{what} ({len(ids)} tokens)")
    gen = dict(chunk_size=args.chunk_size, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
               eos_token_id=list(stops) or None)
    prompt = np.asarray([ids], np.int32)
    t0 = time.perf_counter()
    warm = model.generate_stream(prompt, args.max_new_tokens, **gen)
    for _, _ in zip(range(3), warm):  # compile the prefill and the decode loop (the first chunks), then stop
        pass
    warm.close()
    print(f"compiled (prefill and the decode chunk, first call) in {time.perf_counter() - t0:.2f} s")
    print("-" * 40)
    chunks = model.generate_stream(prompt, args.max_new_tokens, **gen)
    decoder = tok.stream_decoder()
    n = n_first = 0
    stopped = False
    t0 = time.perf_counter()
    t_first = None
    for new, stopped in split_at_stop(chunks, stops):
        n += len(new) + stopped  # the stop token was generated too
        if t_first is None:
            t_first, n_first = time.perf_counter(), n
        print(decoder.push(new), end="", flush=True)
    t_end = time.perf_counter()
    print(decoder.flush())
    print("-" * 40)
    end = f"stopped at a stop id after {n} tokens" if stopped else f"{n} tokens (--max-new-tokens)"
    print(f"generated {end}; first chunk ({n_first} token{'s' * (n_first != 1)}, prefill included) after "
          f"{1e3 * ((t_first or t0) - t0):.1f} ms")
    if n > n_first and t_end > t_first:
        print(f"decode: {n - n_first} tokens in {1e3 * (t_end - t_first):.1f} ms "
              f"({(n - n_first) / (t_end - t_first):.1f} tokens/s)")
    return EXIT_OK


def _quantize(args) -> int:
    """Quantize a float checkpoint into a Quark checkpoint (quark_jax.ptq.quantize_checkpoint)."""
    import json

    import numpy as np

    from quark_jax.ptq import preset_config, quantize_checkpoint

    float_dir = resolve_checkpoint_arg(args.float_dir)
    if args.preset is not None:
        qc = preset_config(args.preset, kv_cache=args.kv_cache)
    else:
        if args.kv_cache is not None:
            raise ValueError("--kv-cache goes with --preset; a --config file says its own KV-cache group")
        try:
            qc = json.loads(Path(args.config).read_text())
        except ValueError as e:
            raise ValueError(f"--config {args.config}: not valid JSON ({e})") from None
        if isinstance(qc, dict) and "quantization_config" in qc:  # a whole config.json
            qc = qc["quantization_config"]
    ids = None
    if args.calibration is not None:
        path = Path(args.calibration)
        ids = np.asarray(json.loads(path.read_text())) if path.suffix == ".json" else np.load(path)
    out = quantize_checkpoint(float_dir, args.out_dir, qc, ids, dtype=args.dtype, batch_size=args.batch_size,
                              progress=args.progress, numerics=args.numerics)
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {out}: {', '.join(files)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from quark_jax import __version__

    p = argparse.ArgumentParser(prog="quark-jax", description="Run AMD Quark-quantized models in JAX.",
                                epilog="exit status: 0 ok, 1 problems found (check, inspect), 2 user error, "
                                       "3 internal error")
    p.add_argument("--version", action="version", version=f"quark-jax {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    def command(name, func, help):
        c = sub.add_parser(name, help=help, description=help, parents=[common])
        c.set_defaults(func=func)
        return c

    d = command("demo", _demo, "per quantized layer: output and weight error against the float model (each "
                               "scheme's own activation quantizer), compile and run time")
    add_checkpoint_argument(d, optional=True, default_help=" (default: every bundled one)")
    d.add_argument("--reference", default=None, help="float checkpoint with the same layer names (default: the "
                   "bundled float model for the bundled checkpoints)")
    d.add_argument("--rows", type=int, default=8, help="activation rows per layer (default 8)")
    d.add_argument("--seed", type=int, default=0)
    i = command("inspect", _inspect, "which scheme each layer of a checkpoint gets, bytes, excluded, unsupported; "
                                     "then the problems check finds in its structure and scales (exit 1 if any)")
    add_checkpoint_argument(i)
    i.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the validation (it reads every layer's tensors)")
    c = command("check", _check, "read every tensor of a checkpoint and report every problem (exit 1 if any)")
    add_checkpoint_argument(c)
    r = command("run", _run, "load a checkpoint and generate (jitted prefill + decode); prints the text (or ids) "
                             "and timing")
    add_checkpoint_argument(r, optional=True, default_help=" (default: tiny-llama-mxfp4); or a Hugging Face Hub "
                            "id (org/name)")
    prompt = r.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="prompt text; the continuation is printed as it is generated "
                        f"(needs tokenizer.json; default when the checkpoint has one: {_DEFAULT_PROMPT!r})")
    prompt.add_argument("--chat", default=None, metavar="MESSAGE",
                        help="a user message through the checkpoint's chat template (tokenizer_config.json)")
    prompt.add_argument("--prompt-ids", type=_parse_ids, default=None,
                        help="comma-separated token ids; ';' separates the rows of a batch (default without a "
                             "tokenizer: 1,5,9); prints ids")
    r.add_argument("--system", default=None, help="a system message before the --chat message")
    r.add_argument("--chunk-size", type=int, default=32, help="decode steps per device call, i.e. tokens per "
                   "printed chunk of --prompt / --chat (default 32, models.generation.DEFAULT_CHUNK)")
    r.add_argument("--max-new-tokens", type=int, default=16)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-k", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--eos-token-id", type=_token_id, default=None,
                   help="stop once every row produced it (text: replaces the tokenizer's EOS / end-of-turn ids)")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="activation dtype (default: the checkpoint's)")
    r.add_argument("--impl", choices=["auto", "pallas", "xla"], default=None, help="GEMM implementation")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="loading progress line (default: for checkpoints over 256 MiB)")
    r.add_argument("--checks", action="store_true", help="debugging: generate once with checks=True (checkify), "
                   "naming the layer where activations first become non-finite (exit 2)")
    q = command("quantize", _quantize, "quantize a float checkpoint into a Quark checkpoint (as amd-quark's "
                                       "export_safetensors writes it), calibrating static scales in JAX")
    q.add_argument("float_dir", help="float checkpoint directory (config.json + safetensors)")
    q.add_argument("out_dir", help="output directory for the Quark checkpoint")
    how = q.add_mutually_exclusive_group(required=True)
    how.add_argument("--config", help="JSON file: a Quark quantization_config (or a config.json holding one)")
    how.add_argument("--preset", choices=["fp8", "ptpc_fp8", "int8", "mxfp4", "mxfp4_fp8", "mxfp4_weight_only"],
                     help="one of Quark's LLM template schemes")
    q.add_argument("--kv-cache", choices=["fp8"], default=None, help="with --preset: add the FP8 KV cache")
    q.add_argument("--calibration", help="token ids [N, T] (.npy, or .json list of lists); needed for static "
                                         "input or KV-cache scales")
    q.add_argument("--batch-size", type=int, default=8, help="calibration rows per forward pass (default 8)")
    q.add_argument("--numerics", choices=("torch", "xla"), default="torch",
                   help="calibration forward pass: torch = Quark's roundings, scales equal amd-quark's (default; "
                        "slower), xla = the model's own forward (fast, scales a few ulps off)")
    q.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="model dtype (default: the checkpoint's); scales follow it as in Quark")
    q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over layers (default: when stderr is a terminal)")
    t = command("tune", _tune, "time the GEMM implementations on this GPU at a checkpoint's layer shapes (default: "
                               "the standard benchmark shapes) and write the table impl=\"auto\" reads first")
    add_checkpoint_argument(t, optional=True, default_help=" (default: the standard benchmark shapes)")
    t.add_argument("--m", type=lambda v: tuple(int(x) for x in v.split(",")), default=(1, 16, 64, 256, 2048),
                   help="row counts to time (default 1,16,64,256,2048: decode, medium, prefill)")
    t.add_argument("--out", default=None, help="table path (default: the user cache, $QUARK_JAX_TUNING_DIR or "
                   "$XDG_CACHE_HOME/quark_jax/<device>.json)")
    return p


class _Parser(argparse.ArgumentParser):
    """Subcommand parser: a bad argument is one ``quark-jax CMD: error: ...`` line (exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USER_ERROR)


def main(argv=None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, map errors to exit statuses (module doc)."""
    from quark_jax.errors import QuarkJaxError

    argv = _join_negative_ids(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except (QuarkJaxError, ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
