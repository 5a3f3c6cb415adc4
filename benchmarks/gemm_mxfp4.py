"""MXFP4 extra rows for benchmarks/bench_gemm.py (the entry's W4A4 pallas / xla-emulation / auto rows come from the
tuner): ``xla_bf16_dense`` (the dequantized weight in bf16; the baseline), the weight-only W4A16 rows
(``pallas_w4a16``, ``xla_emulation_w4a16``, and ``auto_w4a16``: ``impl="auto"`` on the load-time [K/32, N] scales
with the fold where the bytes allow it, what a W4A16 layer runs) at decode, the experimental Mosaic GPU decode kernel at M <= 16
(``pallas_mosaic`` W4A4 incl. its activation quantization, ``pallas_mosaic_w4a16``, both with the PTX decode, and
``pallas_mosaic_jnp_decode`` W4A4 with the portable decode, ``pallas_mosaic_ws`` W4A4 warp-specialized), and ``jax.nn.scaled_matmul``
on pre-quantized float4_e2m1fn operands with float8_e8m0fnu scales (its activation quantization is not timed).

``sweep_cases`` (``bench_gemm.py --sweep``): the decode sweep of issue 16 at M <= 16 (benchmarks/NOTES.md, session 7
"MXFP4 decode sweep"): Mosaic configs ``mx_*`` (W4A16 on scales pre-transposed to [K/32, N] as a load-time repack
would store them, except ``mx_base`` and ``mx_fold_w4a4``), incl. the timing probe ``mx_probe`` (no decode: wrong
values, timing only), and the Triton kernel with the folded-scale decode ``tr_fold``; above M = 16 the prefill
sweep of the dequantize-then-GEMM path (``PREFILL_SWEEP``, ``PREFILL_PROBES``; NOTES "Session 9, helper mxdeq").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from gemm_int8 import bf16_case

from quark_jax import quant
from quark_jax.kernels import mxfp4_mm
from quark_jax.kernels.mxfp4_mm import pallas_mosaic_gpu, pallas_triton
from quark_jax.kernels.tuning import tuner

SCALED_MATMUL = True  # time jax.nn.scaled_matmul (benchmarks/tune_mxfp4.py turns it off to save device time)


def to_scaled_matmul_operands(packed, scales):
    """(values float4_e2m1fn [1, R, K], scales float8_e8m0fnu [1, R, K/32]) from packed bytes and E8M0 bytes."""
    ones = jnp.full(scales.shape, 127, jnp.uint8)
    vals = quant.dequantize_mxfp4(packed, ones, jnp.float32).astype(jnp.float4_e2m1fn)
    return vals[None], lax.bitcast_convert_type(scales, jnp.float8_e8m0fnu)[None]


def cases(point, sets, Case):
    m, k, n = point.m, point.k, point.n
    flops, nbytes = 2.0 * m * n * k, n * k // 2 + n * k // 32 + 2 * m * k + 2 * m * n
    out = [bf16_case(point, sets, Case, name="xla_bf16_dense")]
    if m <= 16:
        for impl, name in (("pallas", "pallas_w4a16"), ("xla", "xla_emulation_w4a16")):
            fn = jax.jit(functools.partial(mxfp4_mm, quantize_input=False, impl=impl))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
        # what a W4A16 MXFP4 layer runs under impl="auto" (session 8: Mosaic at M <= 16 on Hopper), on the scales
        # the scheme stores at load ([K/32, N] copy; folded decode where the bytes allow it)
        def auto_w4a16(x, w, s, s_kn=None):
            return mxfp4_mm(x, w, s, quantize_input=False, impl="auto", scales_kn=s_kn, fold=s_kn is not None)

        out.append(Case(name="auto_w4a16", fn=jax.jit(auto_w4a16), arg_sets=tuner.mxfp4_load_time_sets(sets),
                        flops=flops, bytes=nbytes))
        for q, name in ((True, "pallas_mosaic"), (False, "pallas_mosaic_w4a16")):
            fn = jax.jit(functools.partial(mxfp4_mm, quantize_input=q, impl="mosaic"))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
        cfg = dataclasses.replace(pallas_mosaic_gpu.default_config(k, n), decode="jnp", step_wgmma=False)
        fn = jax.jit(functools.partial(pallas_mosaic_gpu.mxfp4_mm_mosaic, quantize_input=True, config=cfg))
        out.append(Case(name="pallas_mosaic_jnp_decode", fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
        cfg = pallas_mosaic_gpu.default_config(k, n, warp_specialized=True)
        fn = jax.jit(functools.partial(pallas_mosaic_gpu.mxfp4_mm_mosaic, quantize_input=True, config=cfg))
        out.append(Case(name="pallas_mosaic_ws", fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
    if not SCALED_MATMUL:
        return out
    try:
        sm = [(*to_scaled_matmul_operands(*jax.jit(quant.quantize_mxfp4)(x)), *to_scaled_matmul_operands(p, s))
              for x, p, s in sets]
        fn = jax.jit(lambda xv, xs, wv, ws: jax.nn.scaled_matmul(xv, wv, xs, ws, preferred_element_type=jnp.bfloat16))
        out.append(Case(name="jax_nn_scaled_matmul", fn=fn, arg_sets=sm, flops=flops, bytes=nbytes))
    except Exception as e:  # older jax or a backend without it: reported, not hidden
        print(f"[mxfp4 m={m} k={k} n={n}] jax.nn.scaled_matmul unavailable: {e!r}", flush=True)
    return out


# name -> (Config changes on default_config(k, n), quantize_input, scales_kn); a name ending in "split2x" also
# doubles the K split
SWEEP = {
    "mx_base": ({}, False, False),  # = pallas_mosaic_w4a16 (the per-call scale transpose included)
    "mx_kn": ({}, False, True),  # scales pre-transposed: the transpose kernel's cost
    "mx_fold": (dict(decode="ptx_fold"), False, True),  # one bf16 multiply per element instead of two
    "mx_probe": (dict(decode="probe"), False, True),  # NO decode (timing probe): the stream + wgmma skeleton
    "mx_probe_st8": (dict(decode="probe", stages=8), False, True),
    "mx_st8": (dict(stages=8), False, True),  # ring depth 4 -> 8: bytes in flight x2
    "mx_bk512": (dict(block_k=512), False, True),  # 16 KB weight tiles, half the pipeline steps
    "mx_bk512_st3": (dict(block_k=512, stages=3), False, True),
    "mx_bn128_split2x": (dict(block_n=128), False, True),  # 2 wgmmas per fence, 2x the ILP per wait, same grid
    "mx_split2x": ({}, False, True),  # twice the programs (3.4-3.9 CTAs per SM instead of 1.7-1.9)
    "mx_fold_split2x": (dict(decode="ptx_fold"), False, True),
    "mx_fold_bk512": (dict(decode="ptx_fold", block_k=512), False, True),
    "mx_fold_w4a4": (dict(decode="ptx_fold"), True, True),  # the metric (activation qdq timed)
    # one wgmma call (one register fence + opt. barrier) per plane per step instead of per MX block
    "mx_step": (dict(step_wgmma=True), False, True),
    "mx_probe_step": (dict(decode="probe", step_wgmma=True), False, True),
    "mx_fold_step": (dict(decode="ptx_fold", step_wgmma=True), False, True),
    "mx_fold_step_split2x": (dict(decode="ptx_fold", step_wgmma=True), False, True),
}


# The prefill sweep (M > 16; benchmarks/NOTES.md "Session 9, helper mxdeq"): name -> dequant_gemm.Config changes on
# the H200 table's config (32x512, 4 warps), all W4A4 from bf16 x (activation quant-dequant timed)
PREFILL_SWEEP = {
    "dq_base": dict(act="xla"),  # the table entry until session 10 (XLA activation ops); equality reference
    "dq_default": {},  # = the table entry today (act="pallas" since session 10)
    "dq_act_pallas": dict(act="pallas"),  # the one-pass Pallas activation quant-dequant + permutation (16 x 512 tiles)
    "dq_act_xla_pairs": dict(act="xla_pairs"),  # the XLA hedge: the permutation as the qdq pass's output index
    "dq_act_pallas_bm32_w8": dict(act="pallas", act_block_m=32, act_num_warps=8),
    "dq_act_pallas_bm8": dict(act="pallas", act_block_m=8),
    "dq_act_pallas_bm64_w8": dict(act="pallas", act_block_m=64, act_num_warps=8),
    "dq_64x512_act_pallas": dict(block_n=64, act="pallas"),  # dequant tiles: 2x the bytes per program
    "dq_32x1024_w8_act_pallas": dict(block_k=1024, num_warps=8, act="pallas"),
    "dq_16x512_act_pallas": dict(block_n=16, act="pallas"),  # half the bytes per program, 2x the programs
    "dq_scaled_act_pallas": dict(decode="asm_scaled", act="pallas"),  # the block scale multiplied in the asm
}
# Timing probes of the same path's parts (their outputs are not the GEMM's): the dequant kernel alone, and each
# activation preparation alone; with xla_bf16_dense (the GEMM alone) they split dq_base's time
PREFILL_PROBES = ("probe_dequant", "probe_act_xla", "probe_act_pallas")


def prefill_sweep_cases(point, sets, Case):
    """The prefill rows (M > 16): ``PREFILL_SWEEP`` configs through ``pallas_triton.mxfp4_mm_pallas`` and the
    ``PREFILL_PROBES``."""
    from quark_jax.kernels.mxfp4_mm import dequant_gemm

    m, k, n = point.m, point.k, point.n
    flops, nbytes = 2.0 * m * n * k, n * k // 2 + n * k // 32 + 2 * m * k + 2 * m * n
    base = pallas_triton.default_config(m, k, n)
    if not isinstance(base, dequant_gemm.Config):
        base = dequant_gemm.fit(dequant_gemm.Config(block_n=32, block_k=512), k, n)
    out = []
    for name, change in PREFILL_SWEEP.items():
        cfg = dequant_gemm.fit(dataclasses.replace(base, **change), k, n)
        fn = jax.jit(functools.partial(pallas_triton.mxfp4_mm_pallas, quantize_input=True, config=cfg))
        out.append(Case(name=name, fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
    interpret = jax.default_backend() != "gpu"
    if interpret:
        base = dataclasses.replace(base, decode="jnp")
    dq = jax.jit(lambda x, w, s: dequant_gemm.dequantize_permuted(w, s, jnp.bfloat16, cfg=base, interpret=interpret))
    out.append(Case(name="probe_dequant", fn=dq, arg_sets=sets, flops=0.0, bytes=n * k * 2.53125))
    act_x = jax.jit(lambda x, w, s: dequant_gemm.permute_activations(quant.qdq_mxfp4(x).astype(jnp.bfloat16),
                                                                     base.block_k))
    out.append(Case(name="probe_act_xla", fn=act_x, arg_sets=sets, flops=0.0, bytes=4.0 * m * k))
    pcfg = dataclasses.replace(base, act="pallas")
    if dequant_gemm.act_rows(pcfg, m):
        act_p = jax.jit(lambda x, w, s: dequant_gemm.prepare_activations_pallas(x, jnp.bfloat16, cfg=pcfg,
                                                                                interpret=interpret))
        out.append(Case(name="probe_act_pallas", fn=act_p, arg_sets=sets, flops=0.0, bytes=4.0 * m * k))
    return out


def sweep_cases(point, sets, Case):
    """The issue-16 sweep rows: at M <= 16 the decode sweep (``SWEEP`` on the Mosaic kernel and ``tr_fold``), above
    it the prefill sweep (:func:`prefill_sweep_cases`)."""
    m, k, n = point.m, point.k, point.n
    if m > 16:
        return prefill_sweep_cases(point, sets, Case)
    flops, nbytes = 2.0 * m * n * k, n * k // 2 + n * k // 32 + 2 * m * k + 2 * m * n
    out = []
    kn_sets = [(x, p, jax.block_until_ready(jax.jit(jnp.transpose)(s))) for x, p, s in sets]  # [K/32, N]
    base = pallas_mosaic_gpu.default_config(k, n)
    for name, (change, q, kn) in SWEEP.items():
        cfg = dataclasses.replace(base, **change)
        if name.endswith("split2x"):
            cfg = dataclasses.replace(cfg, split_k=cfg.split_k * 2)
        fn = jax.jit(functools.partial(pallas_mosaic_gpu.mxfp4_mm_mosaic, quantize_input=q, config=cfg,
                                       scales_kn=kn))
        out.append(Case(name=name, fn=fn, arg_sets=kn_sets if kn else sets, flops=flops, bytes=nbytes))
    tcfg = pallas_triton.default_config(m, k, n)
    if isinstance(tcfg, pallas_triton.Config):
        for name, dec in (("tr_asm", tcfg.decode), ("tr_fold", "asm_fold")):
            fn = jax.jit(functools.partial(pallas_triton.mxfp4_mm_pallas, quantize_input=False,
                                           config=dataclasses.replace(tcfg, decode=dec)))
            out.append(Case(name=name, fn=fn, arg_sets=sets, flops=flops, bytes=nbytes))
    return out
