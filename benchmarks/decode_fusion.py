"""Decode-step fusion and first-call compile time of Llama-shaped models built in memory (random weights, no
checkpoint on disk): per-token decode time, a decode-step profile (``profile_decode``), the first ``generate``
call's compile time split into tracing/lowering and XLA compilation of the prefill and decode programs, and the
Triton kernels the decode program holds (distinct vs call sites).

    python benchmarks/decode_fusion.py --scheme fp8 --shape 8b --out r.json            # on the GPU
    python benchmarks/decode_fusion.py --scheme fp8 --shape 8b --lower-only --platform cuda   # on CPU: HLO counts

``--log-compiles`` records each program's tracing, lowering and XLA compile seconds during the first call (from
JAX's compile log); the decode chunk compiles in a background thread while the prefill compiles, so the phases
overlap and their sum exceeds the wall time.

``--ab`` compiles variants of the decode-chunk program (``VARIANTS``: the split-K epilogue as a reduce or as
elementwise adds, XLA command-buffer options, the fused residual add + RMSNorm ``addnorm``, the decode-attention
kernel ``decattn``, the norms / SiLU-mul in the FP8 GEMMs' prologue ``prologue``, the RoPE + KV-cache write kernel
``ropekv``, FP8 decode-GEMM tilings ``tiles_*``, the SiLU-mul in the gate_up GEMM's epilogue ``mlpepi``) on in-memory
models in one process and reports per variant the
compile time, ms/token, kernels per step and GPU busy time (``--profile``), whether the tokens and cache equal the
scheme's first variant bit for bit, and (``--out-dir``) the compiled HLO of the base, fold and addnorm variants.

``--lower-only`` builds the model abstractly (no memory), lowers the prefill and decode programs for
``--platform`` (cross-lowering for "cuda" works on a CPU host, the Pallas kernels lowered to Triton as on the
GPU, with the H200's ``impl="auto"`` choices) and reports the Triton custom calls and lowering times.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_e2e import SHAPES  # noqa: E402  (one table of model shapes)
QUARK_CONFIG_OF = {"fp8": "w_fp8_a_fp8_pertensor_static", "int8": "w_int8_perchannel_sym_a_int8_pertensor_static_sym"}
FIXTURES = ROOT / "tests" / "fixtures" / "quark_tiny_llama"
INPUT_SCALE = {"fp8": 8.0 / 448.0, "int8": 8.0 / 127.0}


def log(*a):
    print(*a, flush=True)


def build(shape: str, scheme: str, *, abstract: bool, max_positions: int = 4096, seed: int = 0):
    """The decoder of ``shape`` for ``scheme`` ("bf16", "fp8", "int8"), vLLM's fused layout, weights random
    (N(0, 0.02)-like, quantized codes drawn directly) or abstract (ShapeDtypeStructs: lowering only)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from quark_jax.config import QuarkConfig
    from quark_jax.models.config import ModelConfig
    from quark_jax.models.llama import LlamaForCausalLM
    from quark_jax.nn import QuarkLinear
    from quark_jax.nn.substitute import quantize_model

    c = dict(model_type="llama", rms_norm_eps=1e-5, max_position_embeddings=max_positions, dtype="bfloat16",
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu")
    c.update(SHAPES[shape])
    cfg = ModelConfig.from_dict(c)
    model = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                                                    fuse_projections=True))
    if scheme != "bf16":
        qc = json.loads((FIXTURES / QUARK_CONFIG_OF[scheme] / "config.json").read_text())["quantization_config"]
        d, q, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        widths = {"qkv_proj": (q * d, kv * d, kv * d), "gate_up_proj": (cfg.intermediate_size,) * 2}
        quantize_model(model, QuarkConfig.from_dict(qc), logical_widths=widths)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, QuarkLinear):
            m.mark_loaded()
    model.mesh = None
    model.checkpoint_dir = ""
    if DECODE_ATTENTION_IMPL:
        set_decode_attention(model, DECODE_ATTENTION_IMPL)
    if abstract:
        return model
    key = jax.random.PRNGKey(seed)
    counter = [0]

    def fill(path, v):
        counter[0] += 1
        k = jax.random.fold_in(key, counter[0])
        name = ".".join(str(p) for p in path)
        shp, dt = v.shape, jnp.dtype(v.dtype)
        if dt == jnp.float8_e4m3fn:
            return (jax.random.normal(k, shp, jnp.float32) * 64).clip(-448, 448).astype(dt)
        if dt == jnp.int8:
            return jax.random.randint(k, shp, -127, 128, jnp.int32).astype(dt)
        if name.endswith("input_scale"):
            return jnp.full(shp, INPUT_SCALE[scheme], dt)
        if name.endswith("input_scale_reciprocal"):  # what processing stores: true_divide(1, input_scale)
            from quark_jax.quant import true_divide
            return jnp.full(shp, true_divide(1.0, INPUT_SCALE[scheme]), dt)
        if name.endswith("weight_scale"):
            return jnp.full(shp, 0.02 / 64 if scheme == "fp8" else 0.02 / 64, dt)
        if "norm" in name:
            return (1.0 + 0.02 * jax.random.normal(k, shp, jnp.float32)).astype(dt)
        if "embed" in name:
            return jax.random.normal(k, shp, jnp.float32).astype(dt)
        if jnp.issubdtype(dt, jnp.floating):
            return (0.02 * jax.random.normal(k, shp, jnp.float32)).astype(dt)
        return jnp.zeros(shp, dt)

    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        val = var.get_value() if hasattr(var, "get_value") else var
        var.set_value(fill(path, val))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def _args_for(model, *, batch: int, prompt: int, cache_len: int, chunk: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from quark_jax.models import generation as g

    graphdef, state = nnx.split(model)
    sds = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), t)
    cache = jax.eval_shape(lambda: model.init_cache(batch, cache_len))
    bucket = g.prefill_bucket(prompt, cache_len)
    i32 = lambda shape=(): jax.ShapeDtypeStruct(shape, jnp.int32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    samp = (jax.ShapeDtypeStruct((), jnp.float32), i32())
    eos = i32((1,))
    leaves = tuple(jax.tree_util.tree_leaves(state))  # the programs take the state as a flat tuple
    prefill = (sds(leaves), cache, i32((batch, bucket)), i32((batch,)), i32(), key, *samp, eos)
    decode = (chunk, sds(leaves), cache, i32((batch,)), i32(), jax.ShapeDtypeStruct((batch,), bool), i32((batch,)),
              key, *samp, eos, i32())
    return graphdef, prefill, decode


def triton_calls(hlo_text: str) -> dict:
    """Triton custom calls in lowered StableHLO text: call sites and distinct kernels (backend configs)."""
    sites = re.findall(r"custom_call @__gpu\$xla\.gpu\.triton\([^)]*\) \{backend_config = \"\", "
                       r"mhlo\.backend_config = \{(.*?num_warps = \d+ : i32)\}", hlo_text)
    names = re.findall(r'name = "([^"]+)"', "\n".join(sites))
    # jitted kernels lower to private functions called from each use: sites here are per function, and XLA's
    # kernel cache (keyed by the backend config) compiles each distinct config once per module
    return {"call_sites": len(sites), "distinct": len(set(sites)), "names": sorted(set(names)),
            "func_calls": hlo_text.count("call @")}


def lower_only(args) -> dict:
    import jax
    from flax import nnx

    from quark_jax.kernels import _dispatch, tuning
    from quark_jax.models import generation as g

    if args.platform == "cuda" and jax.default_backend() == "cpu":  # pretend the H200 for impl="auto"
        tuning.current_device = lambda: ("NVIDIA H200", "9.0")
        _dispatch.tuning.current_device = tuning.current_device
        _dispatch.pallas_interpret = lambda: False
    t0 = time.perf_counter()
    model = build(args.shape, args.scheme, abstract=True)
    out = {"build_s": time.perf_counter() - t0}
    graphdef, pre, dec = _args_for(model, batch=1, prompt=args.prompt, cache_len=args.prompt + args.new_tokens,
                                   chunk=args.chunk)
    progs = g._Programs(graphdef, jax.tree_util.tree_structure(nnx.split(model)[1]))
    for name, fn, a in (("prefill", progs.prefill, pre), ("decode", progs.decode, dec)):
        t0 = time.perf_counter()
        try:
            tr = fn.trace(*a)
            t1 = time.perf_counter()
            lo = tr.lower(lowering_platforms=(args.platform,))
        except Exception as e:  # e.g. the prefill's cuDNN attention cannot be cross-lowered without cuDNN
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            log(name, json.dumps(out[name]))
            continue
        t2 = time.perf_counter()
        txt = lo.as_text()
        out[name] = {"trace_s": t1 - t0, "lower_s": t2 - t1, "hlo_chars": len(txt), **triton_calls(txt)}
        log(name, json.dumps(out[name]))
    return out


class CompileLog:
    """Per-program timings from JAX's compile log (``jax_log_compiles``): tracing, lowering to MLIR and XLA
    compilation of each jitted program, summed per program name (e.g. ``jit(_prefill)``)."""

    PATTERNS = (("trace_s", r"Finished tracing (?:\+ transforming )?(\S+) for \S+ in ([\d.e-]+) sec"),
                ("lower_s", r"Finished jaxpr to MLIR module conversion (\S+) in ([\d.e-]+) sec"),
                ("xla_compile_s", r"Finished XLA compilation of (\S+) in ([\d.e-]+) sec"))

    def __init__(self):
        import logging

        import jax

        self.times: dict = {}
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                for key, rx in CompileLog.PATTERNS:
                    m = re.search(rx, msg)
                    if m:
                        name = m.group(1) if m.group(1).startswith("jit(") else f"jit({m.group(1)})"
                        d = outer.times.setdefault(name, {})
                        d[key] = d.get(key, 0.0) + float(m.group(2))

        jax.config.update("jax_log_compiles", True)
        logging.getLogger("jax").addHandler(_Handler())

    def programs(self, min_s: float = 0.05) -> dict:
        """Programs with any phase over ``min_s`` seconds."""
        return {k: {p: round(t, 3) for p, t in v.items()} for k, v in self.times.items()
                if max(v.values()) > min_s}


def measure(args) -> dict:
    import jax
    from flax import nnx

    from quark_jax.models import generation as g
    from quark_jax.models.compile_cache import enable_compilation_cache

    if args.cache_dir:
        enable_compilation_cache(args.cache_dir, force=True)
    clog = CompileLog() if args.log_compiles else None
    if args.unfused:  # quantize activations in a separate XLA op (the path before the fused prologue)
        import quark_jax.kernels.fp8_scaled_mm as f8
        import quark_jax.kernels.int8_scaled_mm as i8

        f8.FUSE_PROLOGUE = i8.FUSE_PROLOGUE = False
    out = {"scheme": args.scheme, "shape": args.shape, "device": str(jax.devices()[0].device_kind),
           "jax": jax.__version__, "unfused": bool(args.unfused)}
    t0 = time.perf_counter()
    model = build(args.shape, args.scheme, abstract=False)
    jax.block_until_ready(jax.tree_util.tree_leaves(nnx.state(model)))
    out["build_s"] = time.perf_counter() - t0
    log("built", out["build_s"])
    vocab, plen, n_new = model.config.vocab_size, args.prompt, args.new_tokens
    cache_len = plen + n_new
    ids = np.random.default_rng(1).integers(3, vocab, size=(1, plen), dtype=np.int32)
    if args.split_compile:  # tracing+lowering and XLA compile of each program, timed apart (no overlap)
        graphdef, pre, dec = _args_for(model, batch=1, prompt=plen, cache_len=cache_len, chunk=args.chunk)
        progs = g._programs(model)[0]
        for name, fn, a in (("prefill", progs.prefill, pre), ("decode", progs.decode, dec)):
            t0 = time.perf_counter()
            lo = fn.trace(*a).lower()
            t1 = time.perf_counter()
            lo.compile()
            t2 = time.perf_counter()
            out[f"{name}_lower_s"], out[f"{name}_compile_s"] = t1 - t0, t2 - t1
            out[f"{name}_triton"] = triton_calls(lo.as_text())
            log(name, "lower", round(t1 - t0, 2), "compile", round(t2 - t1, 2), out[f"{name}_triton"]["distinct"],
                "distinct Triton kernels at", out[f"{name}_triton"]["call_sites"], "sites")
    if clog is not None:
        clog.times.clear()  # only what the first call compiles
    t0 = time.perf_counter()
    np.asarray(model.generate(ids, n_new, max_cache_len=cache_len, chunk_size=args.chunk))
    out["first_call_s"] = time.perf_counter() - t0
    log("first call", out["first_call_s"])
    if clog is not None:
        out["compile_log"] = clog.programs()
        log("compile log", json.dumps(out["compile_log"]))
    if args.first_only:
        return out
    runs = []
    for rep in range(3):
        _, st = model.generate(ids, n_new, max_cache_len=cache_len, chunk_size=args.chunk, return_stats=True)
        runs.append(1e3 * float(np.sum(st.decode_s)) / max(len(st.decode_s), 1))
    out["decode_ms_runs"] = runs
    out["decode_ms"] = float(np.median(runs))
    log("decode ms/token", runs)
    if args.profile:
        from benchmarks.profile_decode import profile_decode

        out["profile"] = profile_decode(model, batch=1, prompt_len=plen, max_cache_len=cache_len, steps=8,
                                        chunk_size=8)
        log("profile", json.dumps({k: v for k, v in out["profile"].items() if k != "top"}))
    return out


CMDBUF_ALL = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
VARIANTS = {  # name -> (split-K epilogue as elementwise adds, decode compiler options)
    "base": (False, {}),
    "fold": (True, {}),
    "fold_cmdbuf_while": (True, {"xla_gpu_enable_command_buffer": CMDBUF_ALL, "xla_gpu_graph_min_graph_size": 1}),
    "fold_cmdbuf_off": (True, {"xla_gpu_enable_command_buffer": ""}),
    "fold_autotune1": (True, {"xla_gpu_autotune_level": 1}),  # autotuning without buffer init / checks
}
AB_PLAN = "fp8:base,fp8:fold,fp8:fold_cmdbuf_while,bf16:base,bf16:fold_cmdbuf_while,fp8:fold_cmdbuf_off"
# variants that also set quark_jax.models.llama.DECODE_ADD_NORM (the fused residual add + RMSNorm); the others
# run with it off. An A/B of it: --ab-plan fp8:fold,fp8:addnorm,bf16:fold,bf16:addnorm
VARIANTS.update({"addnorm": (True, {}), "addnorm_xla": (True, {})})
ADD_NORM = {"addnorm": "pallas", "addnorm_xla": "xla"}
# variants that set every Attention's decode_attention_impl = "pallas" (kernels.decode_attention, the
# flash-decoding kernel; others run "xla"), with the kernel's default config (``decattn``: automatic splits and
# an XLA combine) or one split per (row, KV head) (``decattn_s1``: the kernel divides and rounds, no combine).
# An A/B: --ab-plan fp8:fold,fp8:decattn,fp8:decattn_s1,bf16:fold,bf16:decattn,bf16:decattn_s1
VARIANTS.update({"decattn": (True, {}), "decattn_s1": (True, {})})
DECODE_ATTN_SPLITS = {"decattn": 0, "decattn_s1": 1}
# both: the fused add + RMSNorm and the decode attention kernel (automatic splits)
VARIANTS["addnorm_decattn"] = (True, {})
ADD_NORM["addnorm_decattn"] = "pallas"
DECODE_ATTN_SPLITS["addnorm_decattn"] = 0
# the decode step's RMSNorms / SiLU-mul formed in the static-FP8 GEMMs' prologue (llama.DECODE_PROLOGUE_FUSION;
# bf16 unchanged). An A/B: --ab-plan fp8:fold,fp8:prologue
VARIANTS["prologue"] = (True, {})
PROLOGUE = {"prologue"}
# the decode step's q/k RoPE and k/v cache write in one kernel fed the qkv GEMM's split-K sums
# (llama.DECODE_ROPE_CACHE = "pallas": kernels.attention.rope_cache_update). An A/B: --ab-plan fp8:fold,fp8:ropekv
VARIANTS.update({"ropekv": (True, {}), "ropekv_cmdbuf": (True, {"xla_gpu_enable_command_buffer": CMDBUF_ALL,
                                                               "xla_gpu_graph_min_graph_size": 1})})
ROPE_CACHE = {"ropekv": "pallas", "ropekv_cmdbuf": "pallas"}
# decode-GEMM tilings other than the table's (FP8 Pallas kernel, M = 1, the 8B's shapes; keys "1@KxN" as in
# fp8_scaled_mm.pallas_triton's table), each a dict of rows put over the table for the variant. ``wide``: fewer,
# wider programs (16-32 KB of weight per pipeline stage); ``deep``: block_k 512 (half the K steps, twice the
# bytes per stage); ``qkv_s2``: the qkv GEMM's K split 2 (192 programs, half the partial sums); the rest as now.
_TILE = dict(block_m=16, inner="wx", num_warps=4)
TILES = {
    "tiles_wide": {"1@4096x6144": dict(block_n=128, block_k=256, split_k=4, num_stages=3),
                   "1@4096x4096": dict(block_n=64, block_k=256, split_k=4, num_stages=3),
                   "1@14336x4096": dict(block_n=64, block_k=256, split_k=4, num_stages=3)},
    "tiles_deep": {"1@4096x6144": dict(block_n=64, block_k=512, split_k=4, num_stages=3),
                   "1@4096x4096": dict(block_n=32, block_k=512, split_k=2, num_stages=3),
                   "1@14336x4096": dict(block_n=32, block_k=512, split_k=4, num_stages=3)},
    "tiles_qkv_s2": {"1@4096x6144": dict(block_n=64, block_k=256, split_k=2, num_stages=4)},
}
VARIANTS.update({name: (True, {}) for name in TILES})
# ropekv with each tiling
for _t in list(TILES):
    VARIANTS[f"ropekv_{_t}"] = (True, {})
    ROPE_CACHE[f"ropekv_{_t}"] = "pallas"
    TILES[f"ropekv_{_t}"] = TILES[_t]
# the fused add + RMSNorm (as ``addnorm``) with more warps per row program: the kernel measured 3.7-4.5 us with
# 4 warps at H = 4096 (session 7), ~1 us more than its loads need; 8 / 16 warps hold a row's 16 KB of split-K sums
# in fewer registers per thread. ``ropekv_addnorm_w16``: both kernels.
VARIANTS.update({"addnorm_w8": (True, {}), "addnorm_w16": (True, {}), "ropekv_addnorm_w16": (True, {})})
ADD_NORM.update({"addnorm_w8": "pallas", "addnorm_w16": "pallas", "ropekv_addnorm_w16": "pallas"})
ADD_NORM_WARPS = {"addnorm_w8": 8, "addnorm_w16": 16, "ropekv_addnorm_w16": 16}
ROPE_CACHE["ropekv_addnorm_w16"] = "pallas"
# XLA command buffers for the loop body's kernel sequences only (the decode program compiles with none today:
# hlo_command_buffers 0 in session 9), and with the while loop inside (``fold_cmdbuf_while``, above)
VARIANTS["fold_cmdbuf_body"] = (True, {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN",
                                       "xla_gpu_graph_min_graph_size": 1})
# the SiLU-mul and down_proj's FP8 quantizer in the gate_up GEMM's epilogue (llama.DECODE_MLP_EPILOGUE,
# kernels.fp8_gate_up_silu), alone and with the other two
MLP_EPILOGUE = {"mlpepi", "ropekv_mlpepi", "ropekv_mlpepi_addnorm_w16"}
VARIANTS.update({name: (True, {}) for name in MLP_EPILOGUE})
ROPE_CACHE.update({"ropekv_mlpepi": "pallas", "ropekv_mlpepi_addnorm_w16": "pallas"})
ADD_NORM["ropekv_mlpepi_addnorm_w16"] = "pallas"
ADD_NORM_WARPS["ropekv_mlpepi_addnorm_w16"] = 16
DECODE_ATTENTION_IMPL = None  # not --ab: the decode attention impl build() sets (--decode-attention)


_TABLE_ROWS = {}  # the FP8 sm90 table's rows a tiling variant replaced (restored by set_tiles(None))


def set_tiles(rows: dict | None):
    """Put ``rows`` (table key -> Config fields, over ``_TILE``) over the FP8 Pallas GEMM's sm90 table; None
    restores the table."""
    from quark_jax.kernels.fp8_scaled_mm import pallas_triton

    table = pallas_triton.TUNED["sm90"]
    for key, cfg in _TABLE_ROWS.items():
        if cfg is None:
            table.pop(key, None)
        else:
            table[key] = cfg
    _TABLE_ROWS.clear()
    for key, fields in (rows or {}).items():
        _TABLE_ROWS[key] = table.get(key)
        table[key] = pallas_triton.Config(**_TILE, **fields)


_ADD_NORM_SELECT = []


def set_add_norm_warps(warps: int | None):
    """The fused add + RMSNorm kernel's warps per row program (None: its own ``select``)."""
    from quark_jax.kernels.add_rmsnorm import pallas_triton

    if not _ADD_NORM_SELECT:
        _ADD_NORM_SELECT.append(pallas_triton.select)
    pallas_triton.select = _ADD_NORM_SELECT[0] if warps is None else (lambda h: pallas_triton.Config(num_warps=warps))


def set_decode_attention(model, impl: str, splits: int = 0):
    """Every Attention of ``model`` decodes with ``impl``; the Pallas kernel's default config gets ``splits``
    (0: automatic)."""
    import dataclasses

    from flax import nnx

    from quark_jax.kernels.attention import pallas_triton
    from quark_jax.models import llama

    pallas_triton.DEFAULT = dataclasses.replace(pallas_triton.DEFAULT, splits=splits)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, llama.Attention):
            m.decode_attention_impl = impl


def ab_decode(args) -> dict:
    """A/B of decode-step variants (``--ab-plan``: scheme:variant, in priority order) on one in-memory model per
    scheme: each variant's decode-chunk program traced afresh (jax.clear_caches), compiled with its options, run
    from an empty cache at slot ``prompt`` (the decode step's work does not depend on the cache contents) as
    ``generate`` runs it (chunks dispatched back to back), timed per token (median of 3 runs of ``new_tokens``)
    and profiled (kernels per step); the generated tokens and the final cache are compared with the scheme's first
    variant (bit for bit)."""
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from quark_jax.kernels import tiling
    from quark_jax.models import generation as g
    from quark_jax.models import llama

    t_start = time.perf_counter()
    fold_fn = tiling.sum_splits
    out = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "variants": {}}
    budget = float(args.ab_budget_s)
    models, refs, interleave = {}, {}, {}
    for item in args.ab_plan.split(","):
        scheme, name = item.split(":")
        if time.perf_counter() - t_start > budget:
            log("budget spent, skipping", item)
            continue
        if scheme not in models:
            t0 = time.perf_counter()
            model = build(args.shape, scheme, abstract=False)
            graphdef, state = nnx.split(model)
            jax.block_until_ready(jax.tree_util.tree_leaves(state))
            models[scheme] = (model, graphdef, state)
            out[f"build_s_{scheme}"] = time.perf_counter() - t0
        model, graphdef, state = models[scheme]
        chunk, n_new = args.chunk, args.new_tokens
        if True:  # one variant
            fold, opts = VARIANTS[name]
            tiling.sum_splits = fold_fn if fold else (lambda p: jnp.sum(p, axis=0))
            llama.DECODE_ADD_NORM = ADD_NORM.get(name)
            llama.DECODE_PROLOGUE_FUSION = name in PROLOGUE
            llama.DECODE_ROPE_CACHE = ROPE_CACHE.get(name)
            set_tiles(TILES.get(name))
            set_add_norm_warps(ADD_NORM_WARPS.get(name))
            llama.DECODE_MLP_EPILOGUE = name in MLP_EPILOGUE
            set_decode_attention(model, "pallas" if name in DECODE_ATTN_SPLITS else "xla",
                                 DECODE_ATTN_SPLITS.get(name, 0))
            graphdef = nnx.split(model)[0]  # the impl is static: part of the graph definition
            jax.clear_caches()
            res = {"scheme": scheme, "options": opts}
            try:
                fn = jax.jit(functools.partial(g._decode_chunk, graphdef), static_argnums=(0,), donate_argnums=(2,),
                             compiler_options=opts or None)
                b = 1
                tok0 = jnp.full((b,), 5, jnp.int32)
                first = jnp.zeros((b,), jnp.int32)
                done0 = jnp.zeros((b,), bool)
                key = jax.random.PRNGKey(0)
                eos = jnp.array([-1], jnp.int32)  # never produced: every step runs
                cache_len = args.prompt + n_new
                mk = lambda: model.init_cache(b, cache_len)
                temp, topk, steps = jnp.float32(0.0), jnp.int32(1), jnp.int32(chunk)
                t0 = time.perf_counter()
                compiled = fn.lower(chunk, state, mk(), tok0, jnp.int32(args.prompt), done0, first, key,
                                    jnp.float32(0.0), jnp.int32(1), eos, jnp.int32(chunk)).compile()
                res["compile_s"] = time.perf_counter() - t0
                hlo = compiled.as_text()
                res["hlo_fusions"] = len(re.findall(r"^\s*\S+ = \S+ fusion\(", hlo, flags=re.M))
                res["hlo_custom_calls"] = hlo.count(" custom-call(")
                res["hlo_command_buffers"] = hlo.count("command_buffer")
                if args.out_dir and name in ("base", "fold", "addnorm", "decattn", "prologue", "ropekv"):
                    import gzip
                    Path(args.out_dir).mkdir(parents=True, exist_ok=True)  # (a missing one cost session 6 its baseline)
                    with gzip.open(Path(args.out_dir) / f"decode_hlo_{scheme}_{name}.txt.gz", "wt") as f:
                        f.write(hlo)

                def gen(n, cache=None):
                    cache = mk() if cache is None else cache
                    tok, slot, done = tok0, jnp.int32(args.prompt), done0
                    outs = []
                    for _ in range(n // chunk):
                        # the jitted function (C++ dispatch), not ``compiled``: Compiled.__call__ flattens the
                        # model state in Python on every call (~5 ms per chunk on the H200 host: host-bound)
                        o, _, tok, slot, done, cache = fn(chunk, state, cache, tok, slot, done, first, key,
                                                          temp, topk, eos, steps)
                        outs.append(o)
                    return jnp.concatenate(outs, axis=1), cache

                if args.ab_rounds:  # the compiled program, kept for the interleaved rounds below (jax.clear_caches
                    # drops the jitted function's); a Compiled call flattens the state in Python: the same few ms per
                    # chunk for every variant

                    def timed(compiled=compiled, mk=mk, tok0=tok0, done0=done0, first=first, key=key, temp=temp,
                              topk=topk, eos=eos, steps=steps, state=state):
                        cache, tok, slot, done = mk(), tok0, jnp.int32(args.prompt), done0
                        jax.block_until_ready(cache)
                        t0 = time.perf_counter()
                        for _ in range(n_new // chunk):
                            o, _, tok, slot, done, cache = compiled(state, cache, tok, slot, done, first, key, temp,
                                                                    topk, eos, steps)
                        jax.block_until_ready((o, cache))
                        return 1e3 * (time.perf_counter() - t0) / n_new

                toks, cache = gen(n_new)
                jax.block_until_ready(cache)
                runs = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    toks, cache = gen(n_new)
                    jax.block_until_ready((toks, cache))
                    runs.append(1e3 * (time.perf_counter() - t0) / n_new)
                res["decode_ms_runs"] = runs
                res["decode_ms"] = float(np.median(runs))
                if args.ab_rounds:  # it ran: time it again in the interleaved rounds
                    interleave[f"{scheme}/{name}"] = timed
                toks_np = np.asarray(toks)
                kv = np.concatenate([np.asarray(jnp.asarray(a).astype(jnp.float32)).ravel()[:: 97]
                                     for a in jax.tree_util.tree_leaves(cache)])
                ref = refs.setdefault(scheme, (toks_np, kv, name))
                res["same_as"] = ref[2]
                res["same_tokens_and_cache"] = bool(np.array_equal(toks_np, ref[0])
                                                    and np.array_equal(kv.view(np.uint32), ref[1].view(np.uint32)))
                res["same_tokens"] = bool(np.array_equal(toks_np, ref[0]))
                res["tokens_equal_frac"] = float(np.mean(toks_np == ref[0])) if toks_np.shape == ref[0].shape else 0.0
                res["first_token_diff"] = int(np.argmax(toks_np.ravel() != ref[0].ravel())) if (
                    toks_np.shape == ref[0].shape and not res["same_tokens"]) else -1
                res["cache_max_abs_diff"] = float(np.max(np.abs(kv - ref[1]))) if kv.shape == ref[1].shape else -1.0
                if args.profile:
                    from benchmarks.profile_decode import _gpu_events, summarize
                    import shutil
                    import tempfile
                    d = tempfile.mkdtemp(prefix="ab_prof_")
                    cache = jax.block_until_ready(mk())  # made outside the trace (its memsets are no step's)
                    with jax.profiler.trace(d, create_perfetto_trace=True):
                        toks, cache = gen(chunk, cache)
                        jax.block_until_ready((toks, cache))
                    ev = _gpu_events(d)
                    shutil.rmtree(d, ignore_errors=True)
                    prof = summarize(ev, chunk)
                    step = ev[: max(1, len(ev) // chunk)]
                    prof["one_step_kernels"] = [(n[:60], round(dur, 2)) for _, dur, n in step]
                    res["profile"] = prof
            except Exception as e:  # keep the other variants
                res["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            log(scheme, name, json.dumps({k: v for k, v in res.items() if k != "profile"}))
            if "profile" in res:
                log("  profile", json.dumps({k: v for k, v in res["profile"].items()
                                             if k not in ("top", "one_step_kernels")}))
            out["variants"][f"{scheme}/{name}"] = res
            out["elapsed_s"] = time.perf_counter() - t_start
            if args.out:
                Path(args.out).write_text(json.dumps(out, indent=1))
    if interleave:  # drift-robust timing: every variant once per round, round after round
        for key in list(interleave):
            try:
                interleave[key]()  # warm (the Compiled call path)
            except Exception as e:  # keep the others
                out["variants"][key]["interleaved_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                del interleave[key]
        for r in range(args.ab_rounds):
            for key, timed in (interleave.items() if r % 2 == 0 else reversed(list(interleave.items()))):
                res = out["variants"][key]
                res.setdefault("decode_ms_interleaved", []).append(timed())
        for key in interleave:
            res = out["variants"][key]
            res["decode_ms_interleaved_median"] = float(np.median(res["decode_ms_interleaved"]))
            log(key, "interleaved ms/token", json.dumps(res["decode_ms_interleaved"]))
        out["elapsed_s"] = time.perf_counter() - t_start
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))
    tiling.sum_splits = fold_fn
    llama.DECODE_ADD_NORM = None
    llama.DECODE_PROLOGUE_FUSION = False
    llama.DECODE_ROPE_CACHE = None
    set_tiles(None)
    set_add_norm_warps(None)
    llama.DECODE_MLP_EPILOGUE = False
    for model, _, _ in models.values():
        set_decode_attention(model, "xla")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scheme", choices=("bf16", "fp8", "int8"), default="fp8")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=128, help="decode steps per device call (generate's default)")
    ap.add_argument("--lower-only", action="store_true")
    ap.add_argument("--platform", default="cuda")
    ap.add_argument("--split-compile", action="store_true")
    ap.add_argument("--first-only", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--unfused", action="store_true")
    ap.add_argument("--log-compiles", action="store_true", help="per-program trace / lower / XLA compile seconds")
    ap.add_argument("--ab", action="store_true", help="A/B the decode variants (VARIANTS) per scheme")
    ap.add_argument("--ab-plan", default=AB_PLAN, help="scheme:variant,... in priority order")
    ap.add_argument("--ab-budget-s", type=float, default=1e9, help="skip the remaining variants after this")
    ap.add_argument("--ab-rounds", type=int, default=0,
                    help="after the variants, time each again in this many interleaved rounds (alternating order; "
                         "decode_ms_interleaved_median), against drift between the variants' own runs")
    ap.add_argument("--out-dir", default=None, help="--ab: where the compiled decode HLO goes")
    ap.add_argument("--add-norm", choices=("pallas", "xla"), default=None,
                    help="not --ab: set quark_jax.models.llama.DECODE_ADD_NORM (the fused residual add + RMSNorm)")
    ap.add_argument("--decode-prologue", action="store_true",
                    help="not --ab: set quark_jax.models.llama.DECODE_PROLOGUE_FUSION")
    ap.add_argument("--rope-cache", choices=("pallas", "xla"), default=None,
                    help="not --ab: set quark_jax.models.llama.DECODE_ROPE_CACHE (RoPE + KV-cache write kernel)")
    ap.add_argument("--mlp-epilogue", action="store_true",
                    help="not --ab: set quark_jax.models.llama.DECODE_MLP_EPILOGUE (SiLU-mul + quantize in gate_up)")
    ap.add_argument("--tiles", choices=sorted(TILES), default=None,
                    help="not --ab: put the FP8 decode-GEMM tiling variant's rows over the sm90 table")
    ap.add_argument("--decode-attention", choices=("pallas", "xla"), default=None,
                    help="not --ab: every Attention's decode_attention_impl (kernels.decode_attention)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    global DECODE_ATTENTION_IMPL
    DECODE_ATTENTION_IMPL = args.decode_attention
    if args.add_norm:
        from quark_jax.models import llama

        llama.DECODE_ADD_NORM = args.add_norm
    if args.decode_prologue:
        from quark_jax.models import llama

        llama.DECODE_PROLOGUE_FUSION = True
    if args.rope_cache:
        from quark_jax.models import llama

        llama.DECODE_ROPE_CACHE = args.rope_cache
    if args.tiles:
        set_tiles(TILES[args.tiles])
    if args.mlp_epilogue:
        from quark_jax.models import llama

        llama.DECODE_MLP_EPILOGUE = True
    res = ab_decode(args) if args.ab else lower_only(args) if args.lower_only else measure(args)
    print("RESULT " + json.dumps({k: v for k, v in res.items() if k not in ("profile", "variants")}))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
