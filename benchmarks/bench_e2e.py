"""End-to-end benchmark: Llama-shaped checkpoints with random weights, written per scheme through quark_jax's own
quantizers, loaded with ``from_pretrained`` and run with ``generate`` (issue 14).

For each scheme, one at a time (write, measure, delete: the checkpoints of an 8B shape are 5-16 GB):

* ``load_gbs``: checkpoint bytes / ``from_pretrained`` seconds (the files were just written: page cache);
* ``first_call_s``: the first ``generate`` (prompt 128, 128 new tokens, batch 1): compilation included;
* ``prefill_tok_s``: prompt tokens / prefill seconds at 128 and 2048 tokens (``generate`` of one token, median of
  3 after a compile);
* ``decode``: per batch, ms per token and tokens/s of the device-side decode loop (``GenerationStats``, 128 new
  tokens, median of 2 runs), the HBM floor (bytes read per step / the measured copy bandwidth) and the fraction
  of it reached.

Schemes: ``bf16``; ``fp8`` (FP8 per-tensor weights, static per-tensor FP8 input scale); ``fp8_dyn`` (FP8
per-channel weights, dynamic per-token inputs); ``int8`` (INT8 per-channel weights, static per-tensor symmetric
inputs); ``mxfp4`` (MXFP4 W4A4); ``w4a16`` (MXFP4 weights, bf16 activations). Static input scales are a constant
(``INPUT_SCALE``: the random model's RMSNorm outputs are O(1)). ``--torch`` measures the peer: Hugging Face
``LlamaForCausalLM`` bf16 with a static cache and a one-token step under ``torch.compile(mode="reduce-overhead")``.

    python benchmarks/bench_e2e.py --shape 8b --schemes bf16,fp8,mxfp4 --batches 1 --out results.json
    python benchmarks/bench_e2e.py --shape tiny            # CPU, seconds (a test runs it)

Results go to ``--out`` as JSON, rewritten after every scheme (a cut-off run keeps what it measured).
"""

from __future__ import annotations

import argparse
import functools
import gc
from functools import partial
import json
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True),
    "mid": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16,
                num_key_value_heads=4, vocab_size=32000, rope_theta=10000.0),  # ~180M params: CPU load profiles
    # 32 layers as 8b (the same kernels per decode step) at ~1/16 the bytes: is a decode step host-bound?
    "narrow32": dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=32, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=32000, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, rope_theta=10000.0),
}
FIXTURES = ROOT / "tests" / "fixtures" / "quark_tiny_llama"
QUARK_CONFIG_OF = {  # the Quark fixture whose quantization_config each scheme reuses
    "fp8": "w_fp8_a_fp8_pertensor_static",
    "fp8_dyn": "w_fp8_perchannel_a_fp8_pertoken_dynamic",
    "int8": "w_int8_perchannel_sym_a_int8_pertensor_static_sym",
    "mxfp4": "w_mxfp4_a_mxfp4",
    "w4a16": "w_mxfp4_weight_only",
    "int4": "issue19/w_int4_pergroup32_weight_only",  # its group_size replaced by int4_group(shape)
}
INT4_GROUP = 128  # vLLM's usual W4A16 group (QuarkW4A16Int4); 32 where a width is no multiple of it (tiny)


def int4_group(cfg: dict) -> int:
    """The INT4 group size written for a model config: 128 where the hidden and intermediate widths allow it."""
    return INT4_GROUP if cfg["hidden_size"] % INT4_GROUP == 0 and cfg["intermediate_size"] % INT4_GROUP == 0 else 32
SCHEMES = ("bf16",) + tuple(QUARK_CONFIG_OF)
INPUT_SCALE = 8.0 / 448.0  # static FP8 input scale (INT8: 8 / 127)
ST_DTYPE = {"bfloat16": "BF16", "float32": "F32", "float8_e4m3fn": "F8_E4M3", "uint8": "U8", "int8": "I8",
            "int32": "I32"}


def log(*a):
    print(*a, flush=True)


# --- writing checkpoints ------------------------------------------------------------------------------------------

def write_safetensors(path: Path, tensors: dict) -> int:
    """A safetensors file from numpy arrays (bf16/fp8 as ml_dtypes); returns its size in bytes."""
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": ST_DTYPE[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return 8 + len(head) + offset


def quantize_int4_group(w, group_size: int = INT4_GROUP):
    """Symmetric INT4 per group along K in Quark's export layout: W [N, K] float32 -> (packed int32 [K, N/8]
    ("reorder"), scales float32 [K / group_size, N], zero points int32 [K / group_size, N/8] (zeros)); scale =
    amax / 7.5 per group (Quark's symmetric observer), codes rne(w / s) clamped to -8..7."""
    import jax.numpy as jnp

    from quark_jax import formats

    n, k = w.shape
    g = w.astype(jnp.float32).reshape(n, k // group_size, group_size)
    s = jnp.maximum(jnp.max(jnp.abs(g), axis=-1) / 7.5, 1e-8)  # [N, G]
    q = jnp.clip(jnp.round(g / s[..., None]), -8, 7).astype(jnp.int32).reshape(n, k)
    return (formats.pack_int4(q.T, "reorder"), s.T, jnp.zeros((k // group_size, n // 8), jnp.int32))


@functools.lru_cache(maxsize=None)
def _quantizer(scheme: str, group_size: int = INT4_GROUP):
    """The jitted quantizer of a scheme (one jit object per scheme: compiled once per weight shape)."""
    import jax

    from quark_jax.quant import quantize_mxfp4, scaled_fp8_quant, scaled_int8_quant

    return {"fp8": jax.jit(scaled_fp8_quant),  # per-tensor scale amax / 448
            "fp8_dyn": jax.jit(partial(scaled_fp8_quant, per_token=True)),  # one scale per output channel
            "int8": jax.jit(scaled_int8_quant),  # per output channel, symmetric
            "mxfp4": jax.jit(quantize_mxfp4), "w4a16": jax.jit(quantize_mxfp4),
            "int4": jax.jit(partial(quantize_int4_group, group_size=group_size))}[scheme]


def quantized_linear(scheme: str, w, *, on_device: bool = False, group_size: int = INT4_GROUP):
    """The checkpoint tensors of one linear layer (suffix -> numpy array) from its float32 weight [out, in] (a jax
    array), through quark_jax's quantizers (jitted: one compile per weight shape). ``on_device``: jax arrays left
    on the device (the writer fetches a whole shard at once)."""
    import jax
    import jax.numpy as jnp

    if scheme == "bf16":
        out = {"weight": w.astype(jnp.bfloat16)}
    elif scheme not in QUARK_CONFIG_OF:
        raise ValueError(f"unknown scheme {scheme!r}")
    else:
        q = _quantizer(scheme, group_size)(w)
        if scheme == "fp8":
            out = {"weight": q[0], "weight_scale": q[1].astype(jnp.float32).reshape(()),
                   "input_scale": np.float32(INPUT_SCALE).reshape(())}
        elif scheme == "fp8_dyn":
            out = {"weight": q[0], "weight_scale": q[1].astype(jnp.float32).reshape(-1)}
        elif scheme == "int8":
            n = w.shape[0]
            out = {"weight": q[0], "weight_scale": q[1].astype(jnp.float32).reshape(-1),
                   "weight_zero_point": np.zeros((n,), np.int8),
                   "input_scale": np.float32(8.0 / 127.0).reshape(()), "input_zero_point": np.zeros((), np.int8)}
        elif scheme == "int4":
            out = {"weight": q[0], "weight_scale": q[1], "weight_zero_point": q[2]}
        else:  # mxfp4, w4a16
            out = {"weight": q[0], "weight_scale": q[1]}
    return out if on_device else {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def model_config(shape: str, max_positions: int) -> dict:
    c = dict(model_type="llama", rms_norm_eps=1e-5, max_position_embeddings=max_positions, dtype="bfloat16",
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu")
    c.update(SHAPES[shape])
    return c


def _fetch_and_write(path: Path, tensors: dict) -> int:
    """One shard: its device arrays fetched together (the copies overlap), then written."""
    import jax

    return write_safetensors(path, {k: np.asarray(v) for k, v in jax.device_get(tensors).items()})


def write_checkpoint(d: Path, shape: str, scheme: str, *, max_positions: int, seed: int = 0) -> int:
    """Random weights N(0, 0.02) generated on the default device, one safetensors shard per 4 layers (bounded host
    memory); returns the bytes written."""
    import jax
    import jax.numpy as jnp

    cfg = model_config(shape, max_positions)
    if scheme != "bf16":
        qc = json.loads((FIXTURES / QUARK_CONFIG_OF[scheme] / "config.json").read_text())["quantization_config"]
        if scheme == "int4":
            qc["global_quant_config"]["weight"]["group_size"] = int4_group(cfg)
        cfg["quantization_config"] = qc
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    h, i, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = h // cfg["num_attention_heads"]
    nq, nkv, v = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["vocab_size"]
    key = jax.random.PRNGKey(seed)
    counter = [0]

    def rand(shape_):
        counter[0] += 1
        return jax.random.normal(jax.random.fold_in(key, counter[0]), shape_, jnp.float32) * 0.02

    def bf16(a):
        return a.astype(jnp.bfloat16)

    from concurrent.futures import ThreadPoolExecutor

    total, weight_map = 0, {}
    per_shard = 4
    shards = [list(range(s, min(s + per_shard, L))) for s in range(0, L, per_shard)]
    n_files = len(shards) + 1
    writer = ThreadPoolExecutor(max_workers=1)  # a shard's file is written while the next one is generated
    written = []
    for si, layers in enumerate(shards):
        t = {}
        for li in layers:
            p = f"model.layers.{li}."
            for name, shp in (("self_attn.q_proj", (nq, h)), ("self_attn.k_proj", (nkv, h)),
                              ("self_attn.v_proj", (nkv, h)), ("self_attn.o_proj", (h, nq)),
                              ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)), ("mlp.down_proj", (h, i))):
                for suffix, a in quantized_linear(scheme, rand(shp), on_device=True,
                                                  group_size=int4_group(cfg)).items():
                    t[f"{p}{name}.{suffix}"] = a
            t[p + "input_layernorm.weight"] = bf16(1.0 + rand((h,)))
            t[p + "post_attention_layernorm.weight"] = bf16(1.0 + rand((h,)))
        fname = f"model-{si + 1:05d}-of-{n_files:05d}.safetensors"
        for w in written[:-1]:  # at most one shard waits for the disk (bounded host memory)
            total += w.result()
        written = written[-1:] + [writer.submit(_fetch_and_write, d / fname, t)]
        weight_map.update({n: fname for n in t})
        del t
    t = {"model.embed_tokens.weight": bf16(rand((v, h)) * 50), "model.norm.weight": bf16(1.0 + rand((h,)))}
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = bf16(rand((v, h)))
    fname = f"model-{n_files:05d}-of-{n_files:05d}.safetensors"
    written.append(writer.submit(_fetch_and_write, d / fname, t))
    total += sum(w.result() for w in written)
    writer.shutdown()
    weight_map.update({n: fname for n in t})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return total


# --- measuring ----------------------------------------------------------------------------------------------------

def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB buffer; 0 on the CPU."""
    import jax
    import jax.numpy as jnp

    if jax.default_backend() == "cpu":
        return 0.0
    x = jnp.ones((1 << 28,), jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    f(x).block_until_ready()
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * x.nbytes / min(ts)


def decode_bytes(model, batch: int, cache_len: int) -> int:
    """Bytes one decode step must read: every parameter but the embedding table (B rows of it), plus the KV
    cache (all slots: the kernels read the whole cache)."""
    from flax import nnx

    total = 0
    for path, v in nnx.to_flat_state(nnx.state(model)):
        v = v.get_value() if hasattr(v, "get_value") else v
        if not hasattr(v, "shape"):
            continue
        n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        if "embed_tokens" in map(str, path) and not model.config.tie_word_embeddings:
            n = batch * v.shape[-1] * np.dtype(v.dtype).itemsize
        total += n
    c = model.config
    kv = 2 * c.num_hidden_layers * batch * cache_len * c.num_key_value_heads * c.head_dim
    return total + kv * np.dtype(model.kv_cache_dtype).itemsize


def prompt(batch: int, length: int, vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, length), dtype=np.int32)


def decode_runs(model, batch: int, plen: int, n_new: int, vocab: int, *, reps: int = 2) -> list[float]:
    """Seconds per decode step of ``reps`` generations of ``n_new`` tokens from ``batch`` prompts of ``plen`` tokens
    (cache ``plen + n_new``, prompt seed = the run's index): each run's mean step time."""
    per = []
    for rep in range(reps):
        _, st = model.generate(prompt(batch, plen, vocab, seed=rep), n_new, max_cache_len=plen + n_new,
                               return_stats=True)
        per.append(float(np.sum(st.decode_s)) / max(len(st.decode_s), 1))
    return per


def prefill_runs(model, plen: int, n_new: int, vocab: int, *, reps: int = 4) -> tuple[float, float]:
    """``(median_s, first_s)`` of ``reps`` one-token generations from batch-1 prompts of ``plen`` tokens (cache
    ``plen + n_new``, a fresh prompt each run): the median prefill time of the runs after the first, and the first
    run's (compile included)."""
    ts = []
    for rep in range(reps):
        _, st = model.generate(prompt(1, plen, vocab, seed=10 + rep), 1, max_cache_len=plen + n_new,
                               return_stats=True)
        ts.append(st.prefill_s)
    return statistics.median(ts[1:]), ts[0]


def make_mesh(spec: str):
    """``"DATAxMODEL"`` (e.g. ``"1x8"``) -> a ``jax.sharding.Mesh`` over the first DATA*MODEL devices with axes
    ("data", "model"); ``""`` -> None (one device)."""
    if not spec:
        return None
    import jax
    from jax.sharding import Mesh

    d, m = (int(x) for x in spec.lower().split("x"))
    if d * m > len(jax.devices()):
        raise SystemExit(f"--mesh {spec}: needs {d * m} devices, {len(jax.devices())} available")
    return Mesh(np.array(jax.devices()[: d * m]).reshape(d, m), ("data", "model"))


def measure_scheme(ckpt: Path, ckpt_bytes: int, args, bandwidth: float, result: dict, save) -> None:
    import jax
    from flax import nnx

    from quark_jax.models import from_pretrained

    scheme = result["scheme"]
    options = {"impl": args.impl[scheme]} if scheme in args.impl and scheme != "bf16" else {}
    from quark_jax.models.loading import LOAD_PHASES
    from quark_jax.nn.load import PIPELINE_STATS

    t0 = time.perf_counter()
    model = from_pretrained(ckpt, progress=False, mesh=make_mesh(args.mesh), **options)
    t1 = time.perf_counter()
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    load_s = time.perf_counter() - t0
    result.update(checkpoint_gb=ckpt_bytes / 1e9, load_s=load_s, load_gbs=ckpt_bytes / 1e9 / load_s,
                  load_phases=dict(LOAD_PHASES, device_tail=time.perf_counter() - t1, **{
                      f"pipeline_{k}": v for k, v in PIPELINE_STATS.items()}))
    log(f"  loaded {ckpt_bytes / 1e9:.2f} GB in {load_s:.2f} s ({result['load_gbs']:.2f} GB/s); phases "
        + json.dumps({k: round(v, 3) for k, v in result["load_phases"].items()}))
    save()
    if args.reload:  # a second load in this process: page cache and the loading programs' compiles warm
        del model
        gc.collect()
        t0 = time.perf_counter()
        model = from_pretrained(ckpt, progress=False, mesh=make_mesh(args.mesh), **options)
        jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
        s2 = time.perf_counter() - t0
        result.update(reload_s=s2, reload_gbs=ckpt_bytes / 1e9 / s2)
        log(f"  loaded again in {s2:.2f} s ({ckpt_bytes / 1e9 / s2:.2f} GB/s)")
        save()
    if args.load_only:
        del model
        gc.collect()
        return
    vocab, n_new, plen = model.config.vocab_size, args.new_tokens, args.prompt
    cache_len = plen + n_new

    t0 = time.perf_counter()
    try:
        np.asarray(model.generate(prompt(1, plen, vocab), n_new, max_cache_len=cache_len))
    except Exception as e:  # the fused prefill attention failed here: record it, measure the float32 path
        result["attention_error"] = f"{type(e).__name__}: {e}"[:1500]
        log(f"  first call failed ({type(e).__name__}); retrying with the float32 attention path")
        _set_attention(model, "float32")
        t0 = time.perf_counter()
        np.asarray(model.generate(prompt(1, plen, vocab), n_new, max_cache_len=cache_len))
    result["first_call_s"] = time.perf_counter() - t0
    log(f"  first generate call {result['first_call_s']:.2f} s")
    save()

    if args.profile:
        from benchmarks.profile_decode import profile_decode

        result["profile_b1"] = profile_decode(model, batch=1, prompt_len=plen, max_cache_len=cache_len,
                                              steps=min(args.profile_steps, n_new - 1), chunk_size=8)
        log("  profile: " + json.dumps({k: v for k, v in result["profile_b1"].items() if k != "top"}))
        save()

    result["decode"] = {}
    for b in args.batches:
        per = decode_runs(model, b, plen, n_new, vocab)
        ms = 1e3 * min(per)
        floor_bytes = decode_bytes(model, b, cache_len)
        floor_ms = 1e3 * floor_bytes / bandwidth if bandwidth else None
        result["decode"][str(b)] = dict(ms_per_token=ms, tok_s=1e3 * b / ms, step_tok_s=1e3 / ms,
                                        bytes_per_step=floor_bytes, floor_ms=floor_ms,
                                        floor_fraction=(floor_ms / ms) if floor_ms else None, runs_ms=[1e3 * p for p in per])
        log(f"  decode batch {b}: {ms:.3f} ms/step ({1e3 * b / ms:.1f} tok/s)"
            + (f", floor {floor_ms:.3f} ms ({100 * floor_ms / ms:.0f}%)" if floor_ms else ""))
        save()

    result["prefill"] = {}
    for plen_p in args.prefill:
        if plen_p + 1 > model.config.max_position_embeddings:
            continue
        s, first = prefill_runs(model, plen_p, n_new, vocab)
        result["prefill"][str(plen_p)] = dict(ms=1e3 * s, tok_s=plen_p / s, compile_and_first_s=first)
        log(f"  prefill {plen_p}: {1e3 * s:.2f} ms ({plen_p / s:.0f} tok/s); first {first:.2f} s")
        save()
        if args.compare_attention and scheme == "bf16" and plen_p == max(args.prefill):
            _set_attention(model, "float32")
            s32, first32 = prefill_runs(model, plen_p, n_new, vocab)
            _set_attention(model, "float32" if "attention_error" in result else "auto")
            result["prefill"][str(plen_p)]["float32_path"] = dict(ms=1e3 * s32, tok_s=plen_p / s32,
                                                                  compile_and_first_s=first32)
            log(f"  prefill {plen_p}, float32 attention path: {1e3 * s32:.2f} ms; first {first32:.2f} s")
            save()
        if args.profile and plen_p == max(args.prefill):
            from benchmarks.profile_decode import profile_prefill

            result["profile_prefill"] = profile_prefill(model, prompt_len=plen_p, max_cache_len=plen_p + n_new)
            log("  prefill profile: " + json.dumps({k: v for k, v in result["profile_prefill"].items()
                                                    if k != "top"}))
            save()
    if args.long_prefill and scheme in args.long_prefill_schemes:
        n = args.long_prefill
        try:
            ts = []
            for rep in range(2):
                _, st = model.generate(prompt(1, n, vocab, seed=20 + rep), 1, max_cache_len=n + 64,
                                       return_stats=True)
                ts.append(st.prefill_s)
            result["prefill"][str(n)] = dict(ms=1e3 * ts[1], tok_s=n / ts[1], compile_and_first_s=ts[0])
            log(f"  prefill {n}: {1e3 * ts[1]:.1f} ms ({n / ts[1]:.0f} tok/s); first {ts[0]:.2f} s")
        except Exception as e:  # e.g. out of memory: recorded, the other numbers kept
            result["prefill"][str(n)] = {"error": f"{type(e).__name__}: {e}"[:1500]}
            log(f"  prefill {n}: ERROR {type(e).__name__}")
        save()
    del model
    gc.collect()


def _set_attention(model, impl: str) -> None:
    """The prefill attention path of every layer ("auto": fused where it applies; "float32": the float32 path)."""
    for layer in model.model.layers:
        layer.self_attn.attention_impl = impl


def second_process(ckpt: Path, args, result: dict) -> dict:
    """Load and run the first generate call in a fresh Python process (the persistent compilation cache is warm)."""
    import subprocess

    from benchmarks import knobs

    scheme = result["scheme"]
    options = {"impl": args.impl[scheme]} if scheme in args.impl and scheme != "bf16" else {}
    code = (
        "import json, resource, time, numpy as np, jax\n"
        "from quark_jax.models import from_pretrained\n"
        + knobs.set_code(args.set) +
        "jax.devices()\n"
        "rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "t0 = time.perf_counter()\n"
        f"m = from_pretrained({str(ckpt)!r}, progress=False, **{options!r})\n"
        "jax.block_until_ready(jax.tree_util.tree_leaves(__import__('flax').nnx.state(m)))\n"
        "load = {'load_s': time.perf_counter() - t0, 'peak_rss_gb_before_load': rss0 / 1e9,\n"
        "        'peak_rss_gb_after_load': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}\n"
        f"ids = np.random.default_rng(1).integers(3, m.config.vocab_size, size=(1, {args.prompt}), dtype=np.int32)\n"
        "t0 = time.perf_counter()\n"
        f"np.asarray(m.generate(ids, {args.new_tokens}, max_cache_len={args.prompt + args.new_tokens}))\n"
        "print('RESULT', json.dumps(dict(load, first_call_s=time.perf_counter() - t0)))\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    out = {"process_s": time.perf_counter() - t0}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    if p.returncode:
        out["error"] = p.stderr[-1500:]
    return out


def torch_peer(shape: str, args, result: dict, save) -> None:
    """HF LlamaForCausalLM bf16 (random init), static KV cache, the one-token decode step under
    ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), greedy; batch 1. On a machine without CUDA it runs
    eagerly on the CPU (the tiny configuration's check of this code)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    c = model_config(shape, args.prompt + args.new_tokens + 64)
    cfg = LlamaConfig(**{k: v for k, v in c.items() if k not in ("model_type", "dtype")})
    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).eval()
    result.update(init_s=time.perf_counter() - t0, device=torch.cuda.get_device_name() if cuda else "cpu",
                  torch=torch.__version__, compiled=cuda)
    max_len = args.prompt + args.new_tokens
    try:  # transformers >= 5: the layers allocate on their first update
        cache = StaticCache(config=cfg, max_cache_len=max_len)
    except TypeError:
        cache = StaticCache(config=cfg, max_batch_size=1, max_cache_len=max_len, device=dev, dtype=torch.bfloat16)
    ids = torch.tensor(prompt(1, args.prompt, cfg.vocab_size), device=dev, dtype=torch.long)

    def step(tok, pos):
        return model(tok, past_key_values=cache, cache_position=pos, use_cache=True).logits

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def prefill():
        logits = model(ids, past_key_values=cache, cache_position=torch.arange(args.prompt, device=dev),
                       use_cache=True).logits
        return logits[:, -1:].argmax(-1)

    with torch.no_grad():
        # the peer as issue 14 measured it: fullgraph reduce-overhead; if this transformers version breaks the
        # graph, without fullgraph (recorded in "compile_mode")
        modes = (("reduce-overhead", True), ("reduce-overhead", False)) if cuda else ((None, None),)
        for mode, fullgraph in modes:
            run = step if mode is None else torch.compile(step, mode=mode, fullgraph=fullgraph)
            try:
                cache.reset()
                tok = prefill()
                t0 = time.perf_counter()
                for j in range(3):  # compile + CUDA-graph capture
                    tok = run(tok, torch.tensor([args.prompt + j], device=dev))[:, -1:].argmax(-1)
                sync()
                result["compile_s"] = time.perf_counter() - t0
                result["compile_mode"] = f"{mode}, fullgraph={fullgraph}" if mode else "eager"
                break
            except Exception as e:  # noqa: BLE001 - recorded, next mode
                result.setdefault("compile_errors", []).append(f"{mode}/{fullgraph}: {type(e).__name__}: {e}"[:800])
                torch._dynamo.reset()
        else:
            raise RuntimeError("torch.compile failed in every mode: " + "; ".join(result["compile_errors"]))
        save()
        n = args.new_tokens - 1  # slots prompt .. prompt+n-1 (the cache holds prompt + new_tokens)
        best, toks = None, None
        for rep in range(2):
            cache.reset()
            tok = prefill()
            sync()
            t0 = time.perf_counter()
            out = []
            for j in range(n):
                tok = run(tok, torch.tensor([args.prompt + j], device=dev))[:, -1:].argmax(-1)
                out.append(tok)
            sync()
            ms = 1e3 * (time.perf_counter() - t0) / n
            best = ms if best is None else min(best, ms)
            toks = torch.cat(out, 1)[0].tolist()
        if cuda:  # the prefill, timed like bench_e2e's (prompt in, first token out)
            for plen in args.prefill:
                if plen + 1 > cfg.max_position_embeddings:
                    continue
                p_ids = torch.tensor(prompt(1, plen, cfg.vocab_size), device=dev, dtype=torch.long)
                ts = []
                for _ in range(4):
                    sync()
                    t0 = time.perf_counter()
                    model(p_ids, use_cache=False, logits_to_keep=1).logits.argmax(-1).tolist()
                    ts.append(time.perf_counter() - t0)
                result.setdefault("prefill", {})[str(plen)] = dict(ms=1e3 * statistics.median(ts[1:]))
    result.update(ms_per_token=best, tok_s=1e3 / best, tokens=toks[:16])
    log(f"  torch peer: {best:.3f} ms/token ({1e3 / best:.1f} tok/s), compile {result['compile_s']:.1f} s")
    save()


def torch_peer_process(args, timeout_s: float) -> dict:
    """:func:`torch_peer` in a fresh process (run before this process initializes JAX's GPU backend, so that the
    two do not share the device's memory); its JSON or the error."""
    import subprocess

    out = Path(tempfile.mkdtemp(prefix="torch_peer_")) / "peer.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch", "--shape", args.shape, "--prompt",
           str(args.prompt), "--new-tokens", str(args.new_tokens), "--prefill", ",".join(map(str, args.prefill)),
           "--out", str(out)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        err = p.stderr[-1500:] if p.returncode else None
    except subprocess.TimeoutExpired:
        err = f"timed out after {timeout_s} s"
    res = json.loads(out.read_text()).get("torch_peer", {}) if out.exists() else {}
    res["process_s"] = time.perf_counter() - t0
    if err:
        res["error"] = err
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="module.ATTR=value",
                    help="set a library switch before anything runs (benchmarks/knobs.py), e.g. "
                         "quark_jax.models.llama.DECODE_ROPE_CACHE=auto; repeatable; recorded in the results")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--batches", default="1")
    ap.add_argument("--prefill", default="128,2048")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--impl", default="", help="QuarkConfig impl per scheme, e.g. 'mxfp4=pallas,fp8=xla' "
                    "(default: the library's)")
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="results JSON (rewritten after every measurement)")
    ap.add_argument("--mesh", default="", help="tensor-parallel: DATAxMODEL devices, e.g. 1x8 (from_pretrained(mesh=); "
                    "batches must be multiples of DATA); default one device")
    ap.add_argument("--profile", action="store_true", help="also profile one decode step (batch 1)")
    ap.add_argument("--profile-steps", type=int, default=8)
    ap.add_argument("--torch", action="store_true", help="measure only the torch.compile peer (bf16), in this process")
    ap.add_argument("--torch-peer", action="store_true",
                    help="also measure the torch.compile peer, first, in a subprocess (before JAX takes the GPU)")
    ap.add_argument("--torch-timeout", type=float, default=240.0)
    ap.add_argument("--bandwidth", type=float, default=4300.0,
                    help="HBM bandwidth (GB/s) for the floor; default: the H200 copy bandwidth of shared/BASELINES.md")
    ap.add_argument("--reload", action="store_true", help="also time a second from_pretrained in this process")
    ap.add_argument("--load-only", action="store_true", help="write, load (GB/s) and delete; nothing else")
    ap.add_argument("--compare-attention", action="store_true",
                    help="bf16: also time the longest prefill with the float32 attention path (attention_impl)")
    ap.add_argument("--long-prefill", type=int, default=0,
                    help="also time the prefill of one prompt this long (e.g. 32768: must fit in memory)")
    ap.add_argument("--long-prefill-schemes", default="bf16", help="schemes the --long-prefill runs for")
    ap.add_argument("--second-process", action="store_true",
                    help="also time the first generate call of a fresh process (warm persistent compilation cache)")
    ap.add_argument("--fp8-epilogue", default=None, choices=("separate", "cublaslt"),
                    help="kernels.fp8_scaled_mm.xla.EPILOGUE for this process (not passed to --second-process)")
    ap.add_argument("--prefill-options", default=None,
                    help="generation.PREFILL_COMPILER_OPTIONS as JSON (e.g. '{}': XLA's defaults), set before any run")
    ap.add_argument("--clamp-first", default=None, choices=("0", "1"), help="quant.fp8.CLAMP_FIRST, likewise")
    ap.add_argument("--decode-prologue", action="store_true",
                    help="llama.DECODE_PROLOGUE_FUSION: the decode step's RMSNorm / SiLU-mul in the FP8 GEMMs' "
                         "prologue (set before any model runs; not passed to --second-process)")
    ap.add_argument("--dense-gemm", default=None, choices=("auto", "layers", "xla"),
                    help="llama.DENSE_DECODE_GEMM (the float projections' decode GEMM; 'layers': not the LM head), "
                         "set before any run (not passed to --second-process)")
    ap.add_argument("--warm-kernels", default=None, choices=("generate", "compile", "load", "off"),
                    help="nn.warmup.DECODE_KERNEL_WARMUP: when the Mosaic MXFP4 decode kernels compile ahead ('off': "
                         "inside the decode program, the session-9 baseline; not passed to --second-process)")
    args = ap.parse_args(argv)
    from benchmarks import knobs

    knob_values = {} if args.torch else knobs.apply_sets(args.set)
    if args.warm_kernels is not None:
        from quark_jax.nn import warmup

        warmup.DECODE_KERNEL_WARMUP = None if args.warm_kernels == "off" else args.warm_kernels  # read when used
    if args.decode_prologue and not args.torch:
        from quark_jax.models import llama

        llama.DECODE_PROLOGUE_FUSION = True  # read when the decode step is traced
    if args.dense_gemm is not None and not args.torch:
        from quark_jax.models import llama

        llama.DENSE_DECODE_GEMM = args.dense_gemm  # read when traced
    if args.prefill_options is not None:
        from quark_jax.models import generation

        generation.PREFILL_COMPILER_OPTIONS = json.loads(args.prefill_options)  # read when programs are built
    if not args.torch and (args.fp8_epilogue is not None or args.clamp_first is not None):
        from quark_jax.kernels.fp8_scaled_mm import xla as fp8_xla
        from quark_jax.quant import fp8 as fp8_quant

        fp8_xla.EPILOGUE = args.fp8_epilogue or fp8_xla.EPILOGUE  # read when traced: set before any model runs
        fp8_quant.CLAMP_FIRST = fp8_quant.CLAMP_FIRST if args.clamp_first is None else args.clamp_first == "1"
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.prefill = [int(p) for p in args.prefill.split(",") if p]
    args.impl = dict(kv.split("=") for kv in args.impl.split(",") if kv)
    args.long_prefill_schemes = args.long_prefill_schemes.split(",")
    if args.shape == "tiny":
        args.prefill = [p for p in args.prefill if p <= 64] or [16]
        args.prompt, args.new_tokens = min(args.prompt, 16), min(args.new_tokens, 8)

    if args.torch:  # no JAX in this process
        results = {"shape": args.shape, "date": time.strftime("%Y-%m-%d"), "torch_peer": {}}

        def save_peer():
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))

        torch_peer(args.shape, args, results["torch_peer"], save_peer)
        return results
    peer = torch_peer_process(args, args.torch_timeout) if args.torch_peer else None

    import jax

    results = {"shape": args.shape, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%d"), "set": knob_values,
               "mesh": args.mesh or None, "prompt": args.prompt, "new_tokens": args.new_tokens,
               "schemes": {}}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))

    if args.dense_gemm is not None:
        results["dense_decode_gemm"] = args.dense_gemm
    if args.warm_kernels is not None:
        results["warm_kernels"] = args.warm_kernels
    if peer is not None:
        results["torch_peer"] = peer
        save()
    results["copy_bandwidth_gbs"] = copy_bandwidth() / 1e9  # a+1 over 1 GiB f32, read + write
    results["floor_bandwidth_gbs"] = args.bandwidth if results["copy_bandwidth_gbs"] else 0.0
    log(f"{results['device']}, measured a+1 bandwidth {results['copy_bandwidth_gbs']:.0f} GB/s, floor uses "
        f"{results['floor_bandwidth_gbs']:.0f} GB/s")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    max_positions = max([args.prompt + args.new_tokens] + [p + args.new_tokens for p in args.prefill]
                        + [args.long_prefill + 64])
    for scheme in args.schemes.split(","):
        log(f"{args.shape} {scheme}")
        r = results["schemes"][scheme] = {"scheme": scheme}
        ckpt = base / f"{args.shape}_{scheme}"
        try:
            t0 = time.perf_counter()
            nbytes = write_checkpoint(ckpt, args.shape, scheme, max_positions=max(max_positions, 256))
            r["write_s"] = time.perf_counter() - t0
            log(f"  wrote {nbytes / 1e9:.2f} GB in {r['write_s']:.1f} s")
            measure_scheme(ckpt, nbytes, args, results["floor_bandwidth_gbs"] * 1e9, r, save)
            if args.second_process:
                r["second_process"] = second_process(ckpt, args, r)
                log(f"  second process: {json.dumps(r['second_process'])}")
        except Exception as e:  # keep the other schemes' numbers
            r["error"] = f"{type(e).__name__}: {e}"[:2000]
            log("  ERROR", r["error"])
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
            save()
    return results


if __name__ == "__main__":
    main()
