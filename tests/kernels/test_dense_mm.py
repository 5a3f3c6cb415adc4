"""The dense decode GEMM (``kernels.dense_mm``): the Pallas-Triton kernel (interpret mode on CPU, compiled on a CUDA
GPU) against float64 numpy and the XLA reference, its config rules and ``auto`` dispatch, and the model's
``llama.DenseLinear`` (bit for bit ``nnx.Linear`` off the kernel path; the kernel path when forced).

"grid" data (multiples of 1/8 in [-2, 2], K <= 512: every float32 partial sum is exact, in any order and any K
split) must equal the float64 product rounded once to the output dtype, exactly; Gaussian data must match float64
to the output dtype's rounding plus float32 summation error, and the XLA reference to one output ulp.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kernels.base import ON_GPU, rng
from quark_jax import kernels
from quark_jax.kernels import _dispatch, tuning
from quark_jax.kernels.dense_mm import pallas_triton
from quark_jax.kernels.dense_mm.xla import dense_mm_xla
from quark_jax.models import llama

dense_mod = importlib.import_module("quark_jax.kernels.dense_mm")  # the package (kernels.dense_mm is the entry)

C = pallas_triton.Config
DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}
CONFIGS = {  # (config, K, N): several column blocks and K steps per program
    "wx": (C(block_n=32, block_k=64, inner="wx"), 256, 96),
    "wx_split3": (C(block_n=32, block_k=32, split_k=3, inner="wx"), 288, 64),
    "xw_split2": (C(block_n=64, block_k=64, split_k=2, inner="xw"), 512, 128),
    "fma_split2": (C(block_m=1, block_n=32, block_k=32, split_k=2, inner="fma"), 256, 64),
    "fma": (C(block_m=1, block_n=16, block_k=64, inner="fma"), 192, 48),
}


def grid_data(r, m, k, n, dtype, with_bias):
    x = jnp.asarray(r.integers(-16, 17, (m, k)) / 8, jnp.float32).astype(dtype)
    w = jnp.asarray(r.integers(-16, 17, (k, n)) / 8, jnp.float32).astype(dtype)
    b = jnp.asarray(r.integers(-64, 65, n) / 8, jnp.float32).astype(jnp.bfloat16) if with_bias else None
    return x, w, b


def f64_ref(x, w, b):
    y = np.asarray(x.astype(jnp.float32), np.float64) @ np.asarray(w.astype(jnp.float32), np.float64)
    return y if b is None else y + np.asarray(b.astype(jnp.float32), np.float64)


def as_f64(a):
    return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


def exact_rounded(y64, dtype):
    """The float64 value rounded once to ``dtype`` (y64 is exact in float32 here, so via float32 is one rounding)."""
    assert np.array_equal(np.float32(y64).astype(np.float64), y64)
    return as_f64(jnp.asarray(np.float32(y64)).astype(dtype))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_grid_data_exact(name, dtype):
    cfg, k, n = CONFIGS[name]
    r = rng("dense", name, dtype)
    for m, with_bias in ((1, True), (5, False), (16, True)):
        if cfg.inner == "fma" and m > 1 and m != 5:
            continue
        x, w, b = grid_data(r, m, k, n, DTYPES[dtype], with_bias)
        for out in (None, jnp.float32) if m == 1 else (None,):
            got = pallas_triton.dense_mm_pallas(x, w, b, out_dtype=out, config=cfg)
            want_dtype = DTYPES[dtype] if out is None else out
            assert got.dtype == want_dtype and got.shape == (m, n)
            np.testing.assert_array_equal(as_f64(got), exact_rounded(f64_ref(x, w, b), want_dtype),
                                          err_msg=f"{name} M={m} bias={with_bias} out={out}")


@pytest.mark.parametrize("m", range(1, 17))
def test_kernel_ragged_m(m):
    """Every M of the decode range, one 16-row block masked to M, a K split, a bias; M = 1 also the fma tile."""
    r = rng("ragged", m)
    x, w, b = grid_data(r, m, 128, 64, jnp.bfloat16, True)
    want = exact_rounded(f64_ref(x, w, b), jnp.bfloat16)
    configs = [C(block_n=32, block_k=32, split_k=2, inner="wx")]
    if m == 1:
        configs.append(C(block_m=1, block_n=32, block_k=32, inner="fma"))
    for cfg in configs:
        np.testing.assert_array_equal(as_f64(pallas_triton.dense_mm_pallas(x, w, b, config=cfg)), want)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_kernel_gaussian_vs_f64_and_xla(dtype):
    """Realistic data: within one output rounding (plus f32 summation error) of float64, one ulp of XLA."""
    r = rng("gauss", dtype)
    m, k, n = 3, 1024, 128
    x = jnp.asarray(r.standard_normal((m, k)), DTYPES[dtype])
    w = jnp.asarray(r.standard_normal((k, n)) * 0.02, DTYPES[dtype])
    b = jnp.asarray(r.standard_normal(n) * 0.1, DTYPES[dtype])
    eps = float(jnp.finfo(DTYPES[dtype]).eps)
    y64 = f64_ref(x, w, b)
    mag = np.abs(as_f64(x)) @ np.abs(as_f64(w)) + np.abs(as_f64(b))
    for cfg in (None, C(block_n=64, block_k=128, split_k=4, inner="xw")):
        got = as_f64(pallas_triton.dense_mm_pallas(x, w, b, config=cfg))
        assert np.all(np.abs(got - y64) <= eps * np.abs(y64) + k * 2.0**-24 * mag), cfg
        ref = as_f64(dense_mm_xla(x, w, b))
        assert np.all(np.abs(got - ref) <= eps * np.maximum(np.abs(ref), np.abs(got))), cfg
        assert np.mean(got == ref) > 0.9  # mostly the very same rounding


def test_entry_impls_agree_and_validate():
    r = rng("entry")
    x, w, b = grid_data(r, 4, 256, 96, jnp.bfloat16, True)
    want = exact_rounded(f64_ref(x, w, b), jnp.bfloat16)
    for impl in ("xla", "pallas", "auto"):
        np.testing.assert_array_equal(as_f64(kernels.dense_mm(x, w, b, impl=impl)), want, err_msg=impl)
    assert kernels.dense_mm(x, w, out_dtype=jnp.float32, impl="pallas").dtype == jnp.float32
    with pytest.raises(ValueError, match="w_kn: contraction size 96"):
        kernels.dense_mm(x, w.T, impl="xla")
    with pytest.raises(TypeError, match="w_kn: expected dtype bfloat16"):
        kernels.dense_mm(x, w.astype(jnp.float16))
    with pytest.raises(ValueError, match="bias: expected shape"):
        kernels.dense_mm(x, w, b[:3])
    with pytest.raises(ValueError, match="K = 8 must be a multiple of 16"):
        kernels.dense_mm(jnp.ones((1, 8), jnp.bfloat16), jnp.ones((8, 16), jnp.bfloat16), impl="pallas")
    with pytest.raises(ValueError, match="impl: expected one of"):
        kernels.dense_mm(x, w, impl="mosaic")


def _one_device():
    if jax.device_count() != 1:
        pytest.skip("DenseLinear keeps XLA with more than one device (no tensor-parallel pallas_call)")


def _pretend_h200(monkeypatch):
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setattr(_dispatch, "pallas_interpret", lambda: False)


def test_dense_mm_impl(monkeypatch):
    assert dense_mod.dense_mm_impl(1, 4096, 4096, jnp.bfloat16) == ("pallas" if ON_GPU and
                                                               tuning.current_device()[1].startswith("9.") else "xla")
    _pretend_h200(monkeypatch)
    assert [dense_mod.dense_mm_impl(m, 4096, 6144, jnp.bfloat16) for m in (1, 16, 17)] == ["pallas", "pallas", "xla"]
    assert dense_mod.dense_mm_impl(1, 4096, 4096, jnp.float16) == "pallas"
    assert dense_mod.dense_mm_impl(1, 4096, 4096, jnp.float32) == "xla"
    assert dense_mod.dense_mm_impl(1, 4096, 4104, jnp.bfloat16) == "xla"
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA A100", "8.0"))
    assert dense_mod.dense_mm_impl(1, 4096, 4096, jnp.bfloat16) == "xla"


def test_config_rules():
    with pytest.raises(ValueError, match="inner='fma' needs block_m == 1"):
        C(inner="fma")
    with pytest.raises(ValueError, match="power of two"):
        C(block_n=48)
    with pytest.raises(ValueError, match="Config.inner"):
        C(inner="nn")
    assert pallas_triton.fit(C(block_m=1, inner="fma"), m=2, k=64, n=64).inner == "wx"
    for (k, n), cfg in [((int(s.split("@")[1].split("x")[0]), int(s.split("x")[-1])), c)
                        for s, c in pallas_triton.TUNED["sm90"].items()]:
        f = pallas_triton.fit(cfg, 1, k, n)
        assert f == dataclass_replace_blocks(cfg, f), (k, n)  # the table's rows fit their shapes as written
        assert (k // f.split_k) % f.block_k == 0 and n % f.block_n == 0
    # the default for an untabled decode shape splits K until ~2 programs per SM
    assert pallas_triton.select(1, 4096, 4096, table={}).grid_programs(1, 4096) >= 264


def dataclass_replace_blocks(cfg, fitted):
    import dataclasses

    return dataclasses.replace(cfg, block_m=fitted.block_m)


# --- the model's DenseLinear ---------------------------------------------------------------------------------

def test_dense_linear_is_nnx_linear_off_the_kernel_path(monkeypatch):
    """On CPU (and with the switch at "xla") every call is nnx.Linear's computation, bit for bit; the params are
    nnx.Linear's (names, shapes, dtypes)."""
    kw = dict(use_bias=True, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
    ours = llama._linear(64, 32, True, jnp.bfloat16, nnx.Rngs(3))
    plain = nnx.Linear(64, 32, rngs=nnx.Rngs(3), **kw)
    assert isinstance(ours, nnx.Linear)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(ours, nnx.Param)) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(plain, nnx.Param))
    x = jnp.asarray(rng("lin").standard_normal((1, 1, 64)), jnp.bfloat16)
    for switch in ("auto", "xla"):
        monkeypatch.setattr(llama, "DENSE_DECODE_GEMM", switch)
        if not ON_GPU:
            assert not ours.uses_kernel(x)
        if switch == "xla" or not ON_GPU:
            got, want = ours(x), plain(x)
            assert got.dtype == want.dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    monkeypatch.setattr(llama, "DENSE_DECODE_GEMM", "pallas")
    with pytest.raises(ValueError, match="DENSE_DECODE_GEMM"):
        ours(x)


def test_dense_linear_kernel_path(monkeypatch):
    """Where the switch applies (``dense_mm_impl`` says "pallas", as on an H200; the kernel in interpret mode on CPU): the decode-sized call runs
    dense_mm and returns what _proj makes of nnx.Linear's output; a prefill-sized call, a "layers" head and the
    "xla" switch do not."""
    _one_device()
    monkeypatch.setattr(llama, "dense_mm_impl", lambda m, k, n, dtype: "pallas" if m <= 16 else "xla")
    monkeypatch.setattr(pallas_triton, "select", lambda m, k, n, table=None: pallas_triton.fit(
        C(block_n=32, block_k=64, split_k=2), m, k, n))
    layer = llama._linear(128, 64, True, jnp.bfloat16, nnx.Rngs(1))
    head = llama._linear(128, 64, False, jnp.bfloat16, nnx.Rngs(2), head=True)
    r = rng("kernelpath")
    layer.kernel.set_value(jnp.asarray(r.integers(-16, 17, (128, 64)) / 8, jnp.bfloat16))
    layer.bias.set_value(jnp.asarray(r.integers(-16, 17, 64) / 8, jnp.bfloat16))
    x = jnp.asarray(r.integers(-16, 17, (2, 1, 128)) / 8, jnp.bfloat16)
    monkeypatch.setattr(llama, "DENSE_DECODE_GEMM", "auto")
    assert layer.uses_kernel(x) and head.uses_kernel(x) and not layer.uses_kernel(jnp.zeros((1, 17, 128),
                                                                                                   jnp.bfloat16))
    got = layer(x)
    assert got.dtype == jnp.bfloat16 and got.shape == (2, 1, 64)
    want = llama._proj(nnx.Linear.__call__.__get__(layer), x)  # nnx.Linear's computation, rounded by _proj
    np.testing.assert_array_equal(as_f64(got), as_f64(want))
    np.testing.assert_array_equal(as_f64(llama._proj(layer, x)), as_f64(want))
    monkeypatch.setattr(llama, "DENSE_DECODE_GEMM", "layers")
    assert layer.uses_kernel(x) and not head.uses_kernel(x)
    monkeypatch.setattr(llama, "DENSE_DECODE_GEMM", "xla")
    assert not layer.uses_kernel(x)
    assert layer(x).dtype == jnp.float32


@pytest.mark.parametrize("key", sorted(pallas_triton.TUNED["sm90"]))
def test_table_rows_lower_for_cuda(key):
    """Each sm90 table row, at its own 8B shape and M = 1, lowers to one Triton kernel for CUDA (the Triton IR is
    built on the CPU too) with the grid its config says; the other inner forms (xw, fma) lower at the same shape."""
    k, n = (int(v) for v in key.split("@")[1].split("x"))
    cfg = pallas_triton.fit(pallas_triton.TUNED["sm90"][key], 1, k, n)
    args = (jax.ShapeDtypeStruct((1, k), jnp.bfloat16), jax.ShapeDtypeStruct((k, n), jnp.bfloat16))
    others = [C(block_n=64, block_k=128, split_k=2, inner="xw"), C(block_m=1, block_n=128, block_k=32, inner="fma")]
    for c in [cfg] + (others if key == "16@4096x4096" else []):
        f = jax.jit(lambda x, w, c=c: pallas_triton.dense_mm_pallas(x, w, config=c, interpret=False))
        text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        calls = [ln for ln in text.splitlines() if "xla.gpu.triton" in ln]
        assert len(calls) == 1, c
        assert f"grid_x = {n // c.block_n} : i32, grid_y = {c.split_k} : i32" in calls[0], (c, calls[0][:300])


def test_model_decode_step_lowers_to_dense_kernels(monkeypatch):
    """A fused-projection bf16 Llama on a pretend H200, lowered for CUDA: a one-token step runs its GEMMs as
    dense_mm Triton kernels, one lowered kernel per weight shape (qkv, o, gate_up, down; the LM head shares qkv's
    128x256), the LM head's call only under "auto"; a 32-token step and the "xla" switch none. (The layers' shared jit caches
    the switch: it is read when traced, hence ``jax.clear_caches()``.)"""
    _one_device()
    import re

    from quark_jax.models.config import ModelConfig

    cfg = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 256, "hidden_size": 128,
                                 "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                                 "num_key_value_heads": 2})
    model = llama.LlamaForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), fuse_projections=True)
    _pretend_h200(monkeypatch)
    monkeypatch.setattr(llama, "fused_prefill_impl", lambda *a, **k: None)  # no cuDNN attention on this host
    graph, state = nnx.split(model)
    got = {}
    for switch in ("auto", "layers", "xla"):
        monkeypatch.setattr(llama, "DENSE_DECODE_GEMM", switch)
        for t in (1, 32):
            jax.clear_caches()
            f = jax.jit(lambda st, ids: nnx.merge(graph, st)(ids))
            text = f.trace(state, jnp.zeros((1, t), jnp.int32)).lower(lowering_platforms=("cuda",)).as_text()
            kernels_ = re.findall(r'name = "(dense_mm_[^"]+)"',
                                  "\n".join(ln for ln in text.splitlines() if "xla.gpu.triton" in ln))
            got[switch, t] = (len(kernels_), text.count("call @dense_mm_pallas"))
    jax.clear_caches()
    assert got["auto", 1][0] == got["layers", 1][0] == 4  # 128x256 (qkv, head), 128x128, 128x512, 256x128
    assert got["auto", 1][1] == got["layers", 1][1] + 1  # the head's call
    assert all(got[s, 32] == (0, 0) for s in ("auto", "layers", "xla")) and got["xla", 1] == (0, 0)
