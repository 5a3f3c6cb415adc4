"""End-to-end MoE benchmark (issue 22 item 4): Mixtral-8x7B- and Qwen3-30B-A3B-shaped checkpoints with random
weights (as many layers as ``--layers``, default 8), written per expert scheme through quark_jax's quantizers in
the layout Quark exports (``mlp.experts.{i}.{gate,up,down}_proj``), loaded with ``from_pretrained`` and run with
``generate``.

Per scheme, one at a time (write, measure, delete: 8 Mixtral-shaped layers are 23 GB in bf16):

* ``load_gbs``, ``load_phases`` (host seconds of ``from_pretrained``'s phases, the device tail after it, and
  the loading pipeline's jobs, wait and peak bytes in flight), ``first_call_s`` (the first ``generate``:
  compilation included);
* ``prefill``: prompt tokens / prefill seconds at each ``--prefill`` length (median of 3 after a compile);
* ``decode``: per batch, ms per step of the device-side decode loop (min of 2 runs of ``--new-tokens``), and
  the **active floor**: the bytes one step must read -- attention, norms, router, lm_head, one embedding row per
  token, the KV cache, and of each MoE layer only the experts the batch can select (``min(E, B * k)`` of E; at
  batch 1 the top-k) -- at 4.3 TB/s (H200 HBM, ``floor_ms``) and at the measured copy bandwidth
  (``floor_measured_ms``); ``all_experts_ms``: the same with every expert read (what a kernel that reads unselected
  experts would approach).

Schemes (the attention and dense layers use the same scheme as the experts; the router and lm_head stay bf16):
``bf16``; ``fp8`` (FP8 per-tensor weights, static per-tensor input scale ``bench_e2e.INPUT_SCALE``); ``fp8_dyn`` (FP8
per-channel weights, dynamic per-token inputs); ``mxfp4`` (MXFP4 W4A4). Targets (issue 22, H200, batch 1, the
Mixtral shape): decode within 2x of the active floor for FP8 experts, 2.5x for MXFP4; prefill at 2048 tokens with
FP8 experts >= 1.0x bf16 experts.

    python benchmarks/bench_moe.py --shape mixtral --schemes bf16,fp8,mxfp4 --out results.json
    python benchmarks/bench_moe.py --shape qwen3-moe --layers 8
    python benchmarks/bench_moe.py --shape tiny-mixtral     # CPU, seconds (a test runs it)

Results go to ``--out`` as JSON, rewritten after every step (a cut-off run keeps what it measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quark_jax.kernels.grouped_mm.pallas_triton import FP8_PREFILL_MMA as DEFAULT_FP8_PREFILL  # noqa: E402
from benchmarks.bench_e2e import (copy_bandwidth, decode_runs, prefill_runs, prompt,  # noqa: E402
                                  quantized_linear, write_safetensors)

HBM_BYTES_PER_S = 4.3e12  # H200
SHAPES = {  # full depth in comments; --layers picks how many are built
    "mixtral": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                    num_experts_per_tok=2, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                    rope_theta=1e6, num_hidden_layers=32),
    "qwen3-moe": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                      num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, num_attention_heads=32,
                      num_key_value_heads=4, head_dim=128, vocab_size=151936, rope_theta=1e6,
                      num_hidden_layers=48),
    "tiny-mixtral": dict(model_type="mixtral", hidden_size=64, intermediate_size=64, num_local_experts=4,
                         num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                         rope_theta=1e4, num_hidden_layers=2),
    "tiny-qwen3-moe": dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                           num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=32, vocab_size=256, rope_theta=1e4,
                           num_hidden_layers=2),
}
MOE_FIXTURES = ROOT / "tests" / "fixtures" / "quark_tiny_moe" / "mixtral"
QUARK_CONFIG_OF = {"fp8": "w_fp8_a_fp8_pertensor_static", "fp8_dyn": "w_fp8_perchannel_a_fp8_pertoken_dynamic",
                   "mxfp4": "w_mxfp4_a_mxfp4"}
SCHEMES = ("bf16",) + tuple(QUARK_CONFIG_OF)


def log(*a):
    print(*a, flush=True)


def model_config(shape: str, layers: int | None, max_positions: int) -> dict:
    c = dict(rms_norm_eps=1e-6, max_position_embeddings=max_positions, dtype="bfloat16", tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2, hidden_act="silu")
    c.update(SHAPES[shape])
    if layers:
        c["num_hidden_layers"] = int(layers)
    return c


def geometry(cfg: dict) -> dict:
    """Sizes the writer and the floor need: hidden, heads x head_dim, experts, top-k, expert intermediate."""
    h = cfg["hidden_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    e = cfg.get("num_local_experts") or cfg.get("num_experts")
    i = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    return dict(h=h, hd=hd, nq=cfg["num_attention_heads"] * hd, nkv=cfg["num_key_value_heads"] * hd, e=e,
                k=cfg["num_experts_per_tok"], i=i, v=cfg["vocab_size"], layers=cfg["num_hidden_layers"])


def write_checkpoint(d: Path, shape: str, scheme: str, *, layers: int | None, max_positions: int,
                     seed: int = 0) -> int:
    """Random weights N(0, 0.02) (router N(0, 1): varied routing), one safetensors shard per layer; returns bytes."""
    import jax
    import jax.numpy as jnp

    cfg = model_config(shape, layers, max_positions)
    if scheme != "bf16":
        cfg["quantization_config"] = json.loads(
            (MOE_FIXTURES / QUARK_CONFIG_OF[scheme] / "config.json").read_text())["quantization_config"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    g = geometry(cfg)
    h, i, e = g["h"], g["i"], g["e"]
    key = jax.random.PRNGKey(seed)
    counter = [0]

    def rand(shape_, std=0.02):
        counter[0] += 1
        return jax.random.normal(jax.random.fold_in(key, counter[0]), shape_, jnp.float32) * std

    def bf16(a):
        return np.asarray(a.astype(jnp.bfloat16))

    total, weight_map = 0, {}
    n_files = g["layers"] + 1
    for li in range(g["layers"]):
        t = {}
        p = f"model.layers.{li}."
        linears = [("self_attn.q_proj", (g["nq"], h)), ("self_attn.k_proj", (g["nkv"], h)),
                   ("self_attn.v_proj", (g["nkv"], h)), ("self_attn.o_proj", (h, g["nq"]))]
        linears += [(f"mlp.experts.{x}.{proj}", shp) for x in range(e)
                    for proj, shp in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i)))]
        for name, shp in linears:
            for suffix, a in quantized_linear(scheme, rand(shp)).items():
                t[f"{p}{name}.{suffix}"] = a
        t[p + "mlp.gate.weight"] = bf16(rand((e, h), 1.0))
        t[p + "input_layernorm.weight"] = bf16(1.0 + rand((h,)))
        t[p + "post_attention_layernorm.weight"] = bf16(1.0 + rand((h,)))
        if cfg["model_type"] == "qwen3_moe":
            t[p + "self_attn.q_norm.weight"] = bf16(1.0 + rand((g["hd"],)))
            t[p + "self_attn.k_norm.weight"] = bf16(1.0 + rand((g["hd"],)))
        fname = f"model-{li + 1:05d}-of-{n_files:05d}.safetensors"
        total += write_safetensors(d / fname, t)
        weight_map.update({n: fname for n in t})
        del t
    t = {"model.embed_tokens.weight": bf16(rand((g["v"], h)) * 50), "model.norm.weight": bf16(1.0 + rand((h,))),
         "lm_head.weight": bf16(rand((g["v"], h)))}
    fname = f"model-{n_files:05d}-of-{n_files:05d}.safetensors"
    total += write_safetensors(d / fname, t)
    weight_map.update({n: fname for n in t})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return total


def step_bytes(model, batch: int, cache_len: int) -> tuple[int, int]:
    """(active, all-experts) bytes one decode step reads: every parameter but the embedding table (B rows of it)
    and the experts (``min(E, B * k) / E`` of each QuarkExperts module for the active floor), plus the KV cache."""
    from flax import nnx

    from quark_jax.nn import QuarkExperts

    c = model.config
    active_frac = min(c.num_experts, batch * c.num_experts_per_tok) / c.num_experts
    expert_paths = {tuple(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, QuarkExperts)}
    active = everything = 0
    for path, v in nnx.to_flat_state(nnx.state(model)):
        v = v.get_value() if hasattr(v, "get_value") else v
        if not hasattr(v, "shape"):
            continue
        n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        path = tuple(map(str, path))
        if "embed_tokens" in path:
            n = batch * v.shape[-1] * np.dtype(v.dtype).itemsize
        if path[:-1] in expert_paths:
            active += int(n * active_frac)
        else:
            active += n
        everything += n
    kv = 2 * c.num_hidden_layers * batch * cache_len * c.num_key_value_heads * c.head_dim
    kv *= np.dtype(model.kv_cache_dtype).itemsize
    return active + kv, everything + kv


def _drop_programs() -> None:
    """Forget every traced and compiled program (generate's and the kernels'): the next call retraces."""
    import jax

    from quark_jax.models import generation

    generation._PROGRAMS.clear()
    jax.clear_caches()


def measure_scheme(ckpt: Path, ckpt_bytes: int, args, bandwidth: float, result: dict, save) -> None:
    import jax
    from flax import nnx

    from quark_jax.models import from_pretrained
    from quark_jax.models.loading import LOAD_PHASES
    from quark_jax.nn.load import PIPELINE_STATS

    t0 = time.perf_counter()
    model = from_pretrained(ckpt, progress=False)
    t1 = time.perf_counter()
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    load_s = time.perf_counter() - t0
    result.update(checkpoint_gb=ckpt_bytes / 1e9, load_s=load_s, load_gbs=ckpt_bytes / 1e9 / load_s,
                  load_phases=dict(LOAD_PHASES, device_tail=time.perf_counter() - t1,
                                   **{f"pipeline_{k}": v for k, v in PIPELINE_STATS.items()}))
    log(f"  loaded {ckpt_bytes / 1e9:.2f} GB in {load_s:.2f} s ({result['load_gbs']:.2f} GB/s); phases "
        + json.dumps({k: round(v, 3) for k, v in result["load_phases"].items()}))
    save()
    vocab, n_new, plen = model.config.vocab_size, args.new_tokens, args.prompt
    cache_len = plen + n_new
    t0 = time.perf_counter()
    np.asarray(model.generate(prompt(1, plen, vocab), n_new, max_cache_len=cache_len))
    result["first_call_s"] = time.perf_counter() - t0
    log(f"  first generate call {result['first_call_s']:.2f} s")
    save()

    from quark_jax.kernels.grouped_mm import pallas_triton

    result["decode"] = {}
    mx_variants = args.mxfp4_decode if result["scheme"] == "mxfp4" else ["default"]
    for variant, b in ((v, b) for v in mx_variants for b in args.batches):
        if variant != pallas_triton.MXFP4_DECODE_CFG:  # read at trace time: drop the compiled programs
            pallas_triton.MXFP4_DECODE_CFG = variant
            _drop_programs()
        per = decode_runs(model, b, plen, n_new, vocab)
        ms = 1e3 * min(per)
        active, everything = step_bytes(model, b, cache_len)
        floor_ms = 1e3 * active / HBM_BYTES_PER_S
        key = str(b) if variant == "default" else f"{b}@mxfp4_cfg={variant}"
        result["decode"][key] = dict(
            ms_per_token=ms, tok_s=1e3 * b / ms, active_bytes=active, all_expert_bytes=everything,
            floor_ms=floor_ms, x_floor=ms / floor_ms, all_experts_ms=1e3 * everything / HBM_BYTES_PER_S,
            floor_measured_ms=(1e3 * active / bandwidth) if bandwidth else None, runs_ms=[1e3 * p for p in per])
        log(f"  decode {key}: {ms:.3f} ms/step ({1e3 * b / ms:.1f} tok/s); active floor {floor_ms:.3f} ms "
            f"({ms / floor_ms:.2f}x), all experts {1e3 * everything / HBM_BYTES_PER_S:.3f} ms")
        save()
    if pallas_triton.MXFP4_DECODE_CFG != "default":
        pallas_triton.MXFP4_DECODE_CFG = "default"
        _drop_programs()

    if args.profile:  # one decode step's kernels (batch 1): where the time goes against the active floor
        from benchmarks.profile_decode import profile_decode

        result["decode_profile"] = profile_decode(model, batch=1, prompt_len=plen, max_cache_len=cache_len,
                                                  steps=min(8, n_new - 1), chunk_size=8)
        log("  decode profile " + json.dumps({k: v for k, v in result["decode_profile"].items() if k != "top"}))
        log("  top kernels " + json.dumps(result["decode_profile"].get("top", [])))
        save()

    result["prefill"] = {}
    variants = args.fp8_prefill if result["scheme"].startswith("fp8") else [DEFAULT_FP8_PREFILL]
    for variant in variants:
        if variant != pallas_triton.FP8_PREFILL_MMA:  # read at trace time: drop the compiled programs
            pallas_triton.FP8_PREFILL_MMA = variant
            _drop_programs()
        for plen_p in args.prefill:
            if plen_p + 1 > model.config.max_position_embeddings:
                continue
            s, first = prefill_runs(model, plen_p, n_new, vocab)
            key = str(plen_p) if variant == DEFAULT_FP8_PREFILL else f"{plen_p}@fp8_mma={variant}"
            result["prefill"][key] = dict(ms=1e3 * s, tok_s=plen_p / s, compile_and_first_s=first)
            log(f"  prefill {key}: {1e3 * s:.2f} ms ({plen_p / s:.0f} tok/s)")
            save()
    if pallas_triton.FP8_PREFILL_MMA != DEFAULT_FP8_PREFILL:
        pallas_triton.FP8_PREFILL_MMA = DEFAULT_FP8_PREFILL
        _drop_programs()
    del model
    gc.collect()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="mixtral")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers to build (default 8; tiny: 2)")
    ap.add_argument("--schemes", default="bf16,fp8,mxfp4")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill", default="128,2048")
    ap.add_argument("--fp8-prefill", default=DEFAULT_FP8_PREFILL,
                    help="FP8 expert prefill variants to time, in order (kernels.grouped_mm.pallas_triton."
                         f"FP8_PREFILL_MMA): {DEFAULT_FP8_PREFILL} (the library's default), native (Pallas' FP8 "
                         "dot), bf16 (bf16 MMAs on upcast tiles), wgmma (FP8 wgmma, promotion every 32), a name of "
                         "pallas_triton.CANDIDATES or 'candidates' (all); rows of a variant other than the "
                         "default are keyed '<len>@fp8_mma=<variant>'")
    ap.add_argument("--mxfp4-decode", default="default",
                    help="MXFP4 expert decode tilings to time, in order (kernels.grouped_mm.pallas_triton."
                         "MXFP4_DECODE_CFG): default, names of pallas_triton.MXFP4_DECODE or 'candidates' (all); "
                         "rows of a tiling other than the default are keyed '<batch>@mxfp4_cfg=<name>'; the "
                         "profile and prefill run with the default")
    ap.add_argument("--profile", action="store_true", help="also profile 8 decode steps at batch 1 (GPU)")
    ap.add_argument("--set", action="append", default=[], metavar="module.ATTR=value",
                    help="set a library switch before anything runs (benchmarks/knobs.py); repeatable")
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from benchmarks import knobs

    knobs.apply_sets(args.set)
    tiny = args.shape.startswith("tiny")
    if args.layers is None:
        args.layers = None if tiny else 8
    if tiny:
        args.prompt, args.new_tokens = min(args.prompt, 8), min(args.new_tokens, 8)
        args.prefill = str(args.prompt)  # the decode run's cache length: no extra compile
    args.batches = [int(b) for b in str(args.batches).split(",") if b]
    args.prefill = [int(p) for p in str(args.prefill).split(",") if p]
    from quark_jax.kernels.grouped_mm.pallas_triton import CANDIDATES, FP8_PREFILL_CHOICES

    args.fp8_prefill = list(dict.fromkeys(w for v in str(args.fp8_prefill).split(",") if v
                                          for w in (CANDIDATES if v == "candidates" else [v])))
    if not args.fp8_prefill or any(v not in FP8_PREFILL_CHOICES for v in args.fp8_prefill):
        raise SystemExit(f"--fp8-prefill: expected a list of {', '.join(FP8_PREFILL_CHOICES)} or 'candidates', "
                         f"got {args.fp8_prefill}")
    from quark_jax.kernels.grouped_mm.pallas_triton import MXFP4_DECODE

    args.mxfp4_decode = list(dict.fromkeys(w for v in str(args.mxfp4_decode).split(",") if v
                                           for w in (MXFP4_DECODE if v == "candidates" else [v])))
    if not args.mxfp4_decode or any(v not in MXFP4_DECODE for v in args.mxfp4_decode):
        raise SystemExit(f"--mxfp4-decode: expected a list of {', '.join(MXFP4_DECODE)} or 'candidates', "
                         f"got {args.mxfp4_decode}")
    schemes = [s for s in args.schemes.split(",") if s]
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        raise SystemExit(f"--schemes: unknown {bad} (known: {', '.join(SCHEMES)})")
    import jax

    max_pos = max([args.prompt + args.new_tokens] + [p + args.new_tokens for p in args.prefill]) + 64
    res = {"shape": args.shape, "layers": args.layers or SHAPES[args.shape]["num_hidden_layers"],
           "config": model_config(args.shape, args.layers, max_pos), "device": str(jax.devices()[0]),
           "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"), "schemes": {}}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))

    bandwidth = copy_bandwidth()
    res["copy_bandwidth_gbs"] = bandwidth / 1e9
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_moe_"))
    for scheme in schemes:
        log(f"{args.shape} x {res['layers']} layers, {scheme}")
        r = res["schemes"][scheme] = {"scheme": scheme}
        ckpt = base / f"{args.shape}_{scheme}"
        try:
            t0 = time.perf_counter()
            nbytes = write_checkpoint(ckpt, args.shape, scheme, layers=args.layers, max_positions=max_pos)
            r["write_s"] = time.perf_counter() - t0
            measure_scheme(ckpt, nbytes, args, bandwidth, r, save)
        except Exception as e:  # noqa: BLE001  (a failed scheme is reported, the others still run)
            r["error"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"  FAILED: {r['error']}")
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
            save()
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
