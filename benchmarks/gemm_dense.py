"""Dense (bf16) decode GEMM rows for benchmarks/bench_gemm.py ``--ops dense`` (``kernels.dense_mm``; not a tuner op:
bench_gemm times these rows itself, at each M and shape given, by GPU kernel time):

- ``xla_bf16``: ``dense_mm_xla``, the ``dot_general`` a float ``nnx.Linear`` runs on its [K, N] kernel (baseline);
- ``xla_bf16_nk``: the same product on the weight stored [N, K] (the layout the quantized GEMMs' baseline uses);
- ``pallas``: ``dense_mm_pallas`` with the config ``auto`` would use (``pallas_triton.select``; its name in ``config``);
- with ``--sweep`` (M <= 16): one row per ``SWEEP`` tiling, named ``<inner>_<bn>x<bk>_s<split>_st<stages>_w<warps>``.

Operands: x [M, K] and weights [K, N] bf16 (Gaussian), in ``tuner.copies_for`` weight copies (> 2x the L2 per timed
program, so each call streams its weight from HBM).
"""

from __future__ import annotations

import dataclasses
import functools

# The 8B Llama decode shapes (K, N): fused qkv_proj, o_proj, fused gate_up_proj, down_proj, lm_head.
SHAPES = ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 128256))

# (inner, block_n, block_k, split_k, num_stages, num_warps), around the table's first guesses (pallas_triton._SM90)
SWEEP = (("wx", 64, 128, 4, 4, 4), ("wx", 64, 128, 2, 4, 4), ("wx", 64, 128, 8, 4, 4), ("wx", 64, 256, 4, 3, 4),
         ("wx", 64, 256, 1, 3, 4), ("wx", 32, 256, 4, 4, 4), ("wx", 128, 64, 1, 4, 4), ("wx", 128, 128, 1, 3, 4),
         ("wx", 128, 128, 2, 3, 4), ("wx", 256, 64, 1, 3, 8),
         ("xw", 64, 128, 4, 4, 4), ("xw", 128, 128, 2, 4, 4),
         ("fma", 128, 32, 2, 3, 4), ("fma", 256, 32, 1, 3, 8), ("fma", 64, 64, 4, 3, 4))


def operands(m: int, k: int, n: int, seed: int = 0) -> list[tuple]:
    import jax
    import jax.numpy as jnp

    from quark_jax.kernels.tuning import tuner

    key = jax.random.key(seed * 1_000_003 + m * 7 + k * 3 + n)
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (m, k), jnp.bfloat16)
    copies = tuner.copies_for(2 * k * n)
    return [(x, (jax.random.normal(jax.random.fold_in(kw, i), (k, n), jnp.float32) * 0.02).astype(jnp.bfloat16))
            for i in range(copies)]


def cases(m: int, k: int, n: int, sets, Case, *, sweep: bool = False) -> list:
    """The rows at one point (see the module docstring); ``Case`` is bench_gemm's."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from quark_jax.kernels.dense_mm import pallas_triton
    from quark_jax.kernels.dense_mm.xla import dense_mm_xla

    work = dict(flops=2.0 * m * n * k, bytes=2.0 * (m * k + n * k + m * n))
    nk_sets = [(x, jnp.asarray(w.T)) for x, w in sets]  # materialized [N, K] copies
    nk = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
                 .astype(x.dtype))
    default = pallas_triton.select(m, k, n)
    out = [Case(name="xla_bf16", fn=jax.jit(dense_mm_xla), arg_sets=sets, baseline=True, **work),
           Case(name="xla_bf16_nk", fn=nk, arg_sets=nk_sets, **work),
           Case(name="pallas", fn=jax.jit(functools.partial(pallas_triton.dense_mm_pallas, config=default)),
                arg_sets=sets, **work)]
    print(f"  dense_mm M={m} K={k} N={n}: pallas default = {default.short()}", flush=True)
    if sweep and m <= 16:
        for inner, bn, bk, split, stages, warps in SWEEP:
            if n % bn or k % (split * bk):
                continue
            cfg = pallas_triton.Config(block_m=1 if inner == "fma" else 16, block_n=bn, block_k=bk, split_k=split,
                                       inner=inner, num_stages=stages, num_warps=warps)
            if inner == "fma" and m != 1:
                continue
            cfg = pallas_triton.fit(cfg, m, k, n)
            fn = jax.jit(functools.partial(pallas_triton.dense_mm_pallas, config=cfg))
            out.append(Case(name=f"{inner}_{bn}x{bk}_s{split}_st{stages}_w{warps}", fn=fn, arg_sets=sets, **work))
    return out


def run(ms, shapes, Case, timer, *, sweep: bool = False, deadline=None, log=print) -> tuple[list[dict], dict]:
    """Time every row at every (m, shape); returns (rows as bench_gemm's, extras {(op, m, k, n, name): (flops,
    bytes, baseline)})."""
    import math
    import time

    rows, extras = [], {}
    for m in ms:
        for k, n in shapes:
            if deadline is not None and time.monotonic() > deadline:
                log("deadline reached: dense points left untimed")
                return rows, extras
            sets = operands(m, k, n)
            msg = []
            for c in cases(m, k, n, sets, Case, sweep=sweep):
                extras[("dense_mm", m, k, n, c.name)] = (c.flops, c.bytes, c.baseline)
                row = dict(op="dense_mm", m=m, k=k, n=n, name=c.name, impl=None)
                try:
                    row["seconds"] = float(timer(c))
                except Exception as e:  # a tiling that fails to compile or run is reported, not fatal
                    row.update(seconds=math.nan, error=repr(e)[:300])
                    log(f"  dense_mm M={m} K={k} N={n} {c.name} failed: {e!r}"[:400])
                rows.append(row)
                msg.append(f"{c.name} {row['seconds'] * 1e6:.1f}")
            floor = 2.0 * k * n / 4.3e12 * 1e6
            log(f"dense_mm M={m} K={k} N={n} (floor {floor:.1f} us at 4.3 TB/s): " + ", ".join(msg) + " us")
    return rows, extras
