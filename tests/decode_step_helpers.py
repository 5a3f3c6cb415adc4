"""Shared by the decode-fusion tests (``test_decode_*``): the static-FP8 fixture model with every GEMM on the Pallas
kernel at a fixed tiling, and three greedy decode steps through ``forward_cached``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import variant_dir
from quark_jax.kernels.fp8_scaled_mm import pallas_triton as fp8_pallas
from quark_jax.models import from_pretrained
from quark_jax.nn import QuarkLinear


def fp8_pallas_model(monkeypatch, *, split_k: int):
    """The "bf16_w_fp8_a_fp8_pertensor_static" fixture in vLLM's fused layout, every ``QuarkLinear`` on
    ``impl="pallas"``, the FP8 kernel's tiling fixed to 16x32x32 with ``split_k`` (as o_proj / down run at decode
    on the H200 with 2)."""
    model = from_pretrained(variant_dir("bf16_w_fp8_a_fp8_pertensor_static"), fuse_projections=True)
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, QuarkLinear):
            layer.scheme = layer.scheme.replace(impl="pallas")
    cfg = fp8_pallas.Config(block_m=16, block_n=32, block_k=32, split_k=split_k, inner="wx")
    monkeypatch.setattr(fp8_pallas, "select", lambda m, k, n: fp8_pallas.fit(cfg, m, k, n))
    return model


def greedy_cached_steps(model):
    """(first logits f32, cache leaves f32, greedy tokens) of three decode steps at slots 2..4 of an 8-slot cache
    holding random (seeded) earlier keys / values, traced afresh (``jax.clear_caches``) so module flags set by the
    caller apply."""
    jax.clear_caches()
    graphdef, state = nnx.split(model)
    cache = model.init_cache(1, 8)
    r = np.random.default_rng(0)
    cache = jax.tree_util.tree_map(lambda a: jnp.asarray(r.standard_normal(a.shape) * 0.5).astype(a.dtype), cache)
    step = jax.jit(lambda st, ids, c, s: nnx.merge(graphdef, st).forward_cached(ids, c, s))
    tok, first, toks = jnp.asarray([[7]], jnp.int32), None, []
    for slot in range(2, 5):
        logits, cache = step(state, tok, cache, jnp.int32(slot))
        first = np.asarray(logits.astype(jnp.float32)) if first is None else first
        tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
        toks.append(int(tok[0, 0]))
    return first, [np.asarray(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(cache)], toks
