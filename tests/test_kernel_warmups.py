"""The first ``generate`` compiles the Mosaic GPU MXFP4 decode kernels ahead (issue 14 item 2, session 9): the
Mosaic custom call compiles each distinct kernel once per process, keyed by the sha256 of its serialized module
(``kernel_hash``), so a warm-up program per distinct layer geometry takes those compiles off the decode program's
critical path only if its kernels hash exactly as the decode program's do. Checked by cross-lowering both for CUDA
on this CPU host (the Pallas kernels lowered for the GPU, not interpreted), on a pretend H200 where ``auto`` runs
the Mosaic kernel at decode."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from quark_jax.kernels import _dispatch, tuning
from quark_jax.models import from_pretrained
from quark_jax.models import generation as g
from quark_jax.nn import QuarkLinear
from quark_jax.nn import linear as linear_mod

FIXTURE = Path(__file__).parent / "fixtures" / "quark_tiny_llama" / "w_mxfp4_a_mxfp4"


@pytest.fixture(autouse=True)
def fresh_shape_caches():
    """Layer geometries are cached per process (the device does not change in one): a pretend device must not
    leave its layouts to the next test."""
    linear_mod._processed_shapes.cache_clear()
    jax.clear_caches()  # jitted traces too (process_params': its layout depends on the device)
    yield
    linear_mod._processed_shapes.cache_clear()
    jax.clear_caches()


@pytest.fixture
def pretend_h200(monkeypatch, tmp_path):
    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", str(tmp_path / "user"))
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setattr(_dispatch, "pallas_interpret", lambda: False)  # lower the kernels for the GPU


def _mosaic_hashes(text: str) -> list[str]:
    """The ``kernel_hash`` of each Mosaic GPU custom call in lowered StableHLO text."""
    return re.findall(r'custom_call @mosaic_gpu_v2\(.*?kernel_hash = "((?:[^"\\]|\\.)*)"', text)


def _decode_text(model, batch: int) -> str:
    progs, state = g._programs(model)
    sds = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), t)
    cache = jax.eval_shape(lambda: model.init_cache(batch, 64))
    i32 = lambda shape=(): jax.ShapeDtypeStruct(shape, jnp.int32)
    args = (8, sds(state), cache, i32((batch,)), i32(), jax.ShapeDtypeStruct((batch,), bool), i32((batch,)),
            jax.ShapeDtypeStruct((2,), jnp.uint32), jax.ShapeDtypeStruct((), jnp.float32), i32(), i32((1,)), i32())
    return progs.decode.trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_warmup_kernels_hash_as_the_decode_programs(pretend_h200):
    model = from_pretrained(FIXTURE)
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, QuarkLinear)]
    assert all("weight_scale_kn" in m.param_names for m in layers)  # the Mosaic decode layout on this device
    # one layer's fold decision differs: a distinct kernel (a different module) the warm-up must cover too
    layers[-1].scheme = layers[-1].scheme.replace(mosaic_fold=not layers[-1].scheme.mosaic_fold)
    decode = _mosaic_hashes(_decode_text(model, 1))
    kernel_texts = [fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
                           for fn, args in g.kernel_warmups(model, 1)]
    warm = [h for t in kernel_texts for h in _mosaic_hashes(t)]
    geometries = {(m.in_features, m.out_features, m.scheme.mosaic_fold) for m in layers}
    # qkv, o, gate_up, down (+ the flipped layer's fold): one warm-up program and one kernel per distinct one
    assert len(warm) == len(set(warm)) == len(geometries) == 5
    # the decode program holds each distinct kernel once per lowered function (its layers share one), and no
    # kernel the warm-ups miss: the Mosaic compile cache then hits for every one
    assert set(decode) == set(warm)
    assert len(set(decode)) == len(geometries)


def test_no_warmups_off_the_mosaic_path(monkeypatch, tmp_path):
    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", str(tmp_path / "user"))
    model = from_pretrained(FIXTURE)  # CPU: auto = XLA, no [K/32, N] scales, nothing process-cached
    assert g.kernel_warmups(model, 1) == []
    assert g._warm_kernels(model, 1) == []  # and nothing submitted on a CPU backend


class _Recorder:
    def __init__(self):
        self.calls = []

    def submit(self, fn, *args):
        self.calls.append(args)
        return None


def test_warmups_submitted_once_per_geometry_from_load_or_generate(pretend_h200, monkeypatch):
    """``DECODE_KERNEL_WARMUP = "load"``: ``load_weights`` submits each distinct geometry's warm-up once, as its
    first layer loads (8 layers, 4 geometries), and the first ``generate`` finds them all submitted (one record
    per process); "generate" (the default): the load submits nothing, the first ``generate`` the 4; None: none."""
    from quark_jax.nn import warmup

    pool = _Recorder()
    monkeypatch.setattr(warmup, "_on_gpu", lambda: True)
    monkeypatch.setattr(warmup, "_POOL", pool)
    for point, at_load, at_generate, at_compile in (("load", 4, 0, 0), ("generate", 0, 4, 0),
                                                    ("compile", 0, 0, 4), (None, 0, 0, 0)):
        monkeypatch.setattr(warmup, "DECODE_KERNEL_WARMUP", point)
        monkeypatch.setattr(warmup, "_SUBMITTED", set())
        pool.calls.clear()
        model = from_pretrained(FIXTURE)
        assert len(pool.calls) == at_load, point
        g._warm_kernels(model, 1)
        assert len(pool.calls) == at_load + at_generate, point
        g._warm_kernels(model, 1, "compile")
        assert len(pool.calls) == at_load + at_generate + at_compile, point
        if pool.calls:  # the programs kernel_warmups lists (their kernels' hashes: the first test)
            assert [a for _, a in g.kernel_warmups(model, 1)] == [c[1] for c in pool.calls]
    assert warmup.warm_decode_kernels([], 17) == []
    monkeypatch.setattr(warmup, "DECODE_KERNEL_WARMUP", "sometimes")
    with pytest.raises(ValueError, match="DECODE_KERNEL_WARMUP"):
        warmup.warm_decode_kernels([])


def test_slow_decode_compile_starts_the_compile_point_warmups(monkeypatch, tmp_path):
    """``warm_up_decode(args, slow=f)`` calls ``f`` once the decode program's compile has run ``WARM_AFTER_S``
    without finishing, and not when it finishes sooner."""
    import threading
    import time

    from quark_jax.nn import warmup

    class Lowered:
        def __init__(self, s):
            self.s = s

        def compile(self):
            time.sleep(self.s)
            return "compiled"

    class Decode:
        def __init__(self, s):
            self.s = s

        def lower(self, *args):
            return Lowered(self.s)

    monkeypatch.setattr(warmup, "WARM_AFTER_S", 0.2)
    for seconds, want in ((0.6, 1), (0.0, 0)):
        progs = g._Programs.__new__(g._Programs)
        progs.decode, progs._warm = Decode(seconds), {}
        called = []
        done = threading.Event()
        fut = progs.warm_up_decode((8, jnp.zeros((2,))), slow=lambda: (called.append(1), done.set()))
        assert fut.result() == "compiled"
        done.wait(0.5 if want else 0.4)
        assert len(called) == want, seconds


def test_first_generate_does_not_resubmit_the_loads_warmups(pretend_h200, monkeypatch):
    """``DECODE_KERNEL_WARMUP = "load"``: the first ``generate`` submits nothing the load submitted, whether those
    compiles are still running or done."""
    import concurrent.futures

    from quark_jax.nn import warmup

    class Pool:
        def __init__(self):
            self.futures = []

        def submit(self, fn, *args):
            self.futures.append(concurrent.futures.Future())
            return self.futures[-1]

    pool = Pool()
    monkeypatch.setattr(warmup, "_on_gpu", lambda: True)
    monkeypatch.setattr(warmup, "_POOL", pool)
    monkeypatch.setattr(warmup, "_SUBMITTED", set())
    monkeypatch.setattr(warmup, "DECODE_KERNEL_WARMUP", "load")
    model = from_pretrained(FIXTURE)
    assert len(pool.futures) == 4  # one per geometry, at load
    pool.futures[0].set_result(None)
    assert g._warm_kernels(model, 1) == [] and len(pool.futures) == 4  # nothing new; 3 still running
    assert g._warm_kernels(model, 1, "compile") == []
    for f in pool.futures[1:]:
        f.set_result(None)
    assert g._warm_kernels(model, 1) == []
