"""The first ``generate``'s compile order and the persistent cache's executable form (issue 14 item 2, session 10).

* Kernel warm-ups in flight never hold the first call's compiles back.
* With ``compile_cache.AOT_COMPILED_THUNKS`` (off by default) and the persistent cache on a GPU backend the
  programs compile with ``xla_gpu_experimental_aot_compiled_thunks`` where the running jaxlib knows it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quark_jax.models import compile_cache, from_pretrained
from quark_jax.models import generation as g
from quark_jax.nn import warmup

FIXTURE = Path(__file__).parent / "fixtures" / "quark_tiny_llama" / "w_mxfp4_a_mxfp4"


@pytest.fixture
def pretend_gpu(monkeypatch, tmp_path):
    """A GPU backend as far as the option functions can tell, with a cache directory set (restored after)."""
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_entry_size_bytes",
             "jax_persistent_cache_min_compile_time_secs")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    jax_cache.reset_cache()  # a compile under the fixture initialized jax's cache there: not for later tests


def test_cache_options_on_a_gpu_with_the_cache_and_explicit_options_win(pretend_gpu, monkeypatch):
    aot = {"xla_gpu_experimental_aot_compiled_thunks": True}
    assert compile_cache.AOT_COMPILED_THUNKS is False  # off by default: jaxlib 0.11.2 (CUDA) has no such option
    assert compile_cache.cache_compiler_options() == {}
    monkeypatch.setattr(compile_cache, "AOT_COMPILED_THUNKS", True)
    assert compile_cache.cache_compiler_options() == aot
    assert g.decode_compiler_options() == aot
    assert g.prefill_compiler_options() == {"xla_gpu_enable_triton_gemm": False, **aot}
    monkeypatch.setattr(g, "DECODE_COMPILER_OPTIONS", {"xla_gpu_experimental_aot_compiled_thunks": False})
    assert g.decode_compiler_options() == {"xla_gpu_experimental_aot_compiled_thunks": False}
    monkeypatch.setattr(compile_cache, "AOT_COMPILED_THUNKS", False)
    assert compile_cache.cache_compiler_options() == {}
    assert g.prefill_compiler_options() == {"xla_gpu_enable_triton_gemm": False}
    jax.config.update("jax_compilation_cache_dir", None)  # no cache: the legacy form (nothing is stored)
    monkeypatch.setattr(compile_cache, "AOT_COMPILED_THUNKS", True)
    assert compile_cache.cache_compiler_options() == {}


def test_the_aot_option_is_used_only_where_this_jaxlib_knows_it(pretend_gpu, monkeypatch):
    """Compiled on the CPU backend (DebugOptions are shared). The CPU jaxlib 0.10.2 knows the option; a jaxlib
    without it (the H200 image's 0.11.2) gets no option and a warning, never a failing compile."""
    monkeypatch.setattr(compile_cache, "AOT_COMPILED_THUNKS", True)
    known = compile_cache.option_known
    monkeypatch.setattr(compile_cache, "option_known", lambda name: False)
    with pytest.warns(RuntimeWarning, match="has no XLA option 'xla_gpu_experimental_aot_compiled_thunks'"):
        assert compile_cache.cache_compiler_options() == {}
    monkeypatch.setattr(compile_cache, "option_known", known)
    assert compile_cache.option_known("xla_gpu_experimental_aot_compiled_thunkz") is False
    if not compile_cache.option_known("xla_gpu_experimental_aot_compiled_thunks"):
        pytest.skip("this jaxlib has no xla_gpu_experimental_aot_compiled_thunks")
    opts = compile_cache.cache_compiler_options()
    assert opts
    f = jax.jit(lambda x: x * 3 + 1, compiler_options=opts)
    assert np.asarray(f(jnp.arange(4.0))).tolist() == [1.0, 4.0, 7.0, 10.0]
    with pytest.raises(Exception, match="No such compile option"):  # the check above can fail
        jax.jit(lambda x: x + 1, compiler_options={"xla_gpu_experimental_aot_compiled_thunkz": True})(1.0)


def test_enabling_the_cache_gives_the_warmups_its_options(pretend_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(warmup, "COMPILER_OPTIONS", {})
    monkeypatch.setattr(compile_cache, "AOT_COMPILED_THUNKS", True)
    assert compile_cache.enable_compilation_cache() == str(tmp_path / "cache")  # already set: kept
    assert warmup.COMPILER_OPTIONS == {"xla_gpu_experimental_aot_compiled_thunks": True}
    monkeypatch.setattr(compile_cache, "AOT_COMPILED_THUNKS", False)
    assert compile_cache.enable_compilation_cache(tmp_path / "other", force=True) == str(tmp_path / "other")
    assert warmup.COMPILER_OPTIONS == {}
    # the warm-up programs are jitted with the options in force when they are listed
    assert warmup._jitted((("xla_gpu_experimental_aot_compiled_thunks", True),)) is warmup._jitted(
        (("xla_gpu_experimental_aot_compiled_thunks", True),))
    assert warmup._jitted(()) is not warmup._jitted((("xla_gpu_experimental_aot_compiled_thunks", True),))


def test_compile_phases_probe_parses_jax_and_xla_log_lines():
    """``benchmarks/compile_phases.py``: the JAX compile records (two wordings of the tracing line) and XLA's
    absl-timestamped LLVM re-initialization lines it reads."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import compile_phases as cp

    lines = {"Finished tracing + transforming prefill for pjit in 0.512 sec": ("trace_s", "prefill", 0.512),
             "Finished tracing decode for jit in 1.5e-03 sec": ("trace_s", "decode", 0.0015),
             "Finished jaxpr to MLIR module conversion jit(decode) in 3.48 sec": ("lower_s", "decode", 3.48),
             "Finished XLA compilation of jit(_linear_call) in 1.25 sec": ("compile_s", "_linear_call", 1.25)}
    for line, (phase, name, secs) in lines.items():
        m = cp._RECORD.search(line)
        assert (cp._PHASE[m.group(1)], m.group(2), float(m.group(3))) == (phase, name, secs)
    start = time.mktime((2026, 12, 3, 15, 17, 3, 0, 0, -1)) + 0.25  # local 15:17:03.25
    err = ("I1203 15:17:04.750000  123 llvm_command_line_options.cc:50] XLA (re)initializing LLVM with options "
           "fingerprint: 42\nW1203 15:17:05.000000 other line\n"
           "I1203 15:17:13.250000  124 llvm_command_line_options.cc:50] XLA (re)initializing LLVM with options x\n")
    assert cp.llvm_switches(err, start) == [1.5, 10.0]


def test_first_generate_never_waits_for_kernel_warmups(monkeypatch, tmp_path):
    """Warm-ups in flight (``nn.warmup.DECODE_KERNEL_WARMUP``, an opt-in) never hold the first call's compiles
    back (a wait for them measured slower on the H200, session 10); one-token calls start none."""
    from jax._src import compiler

    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", str(tmp_path / "user"))
    monkeypatch.setattr(g, "_PROGRAMS", {})  # programs of an earlier test's model (same graph) not reused
    jax.clear_caches()
    model = from_pretrained(FIXTURE)
    starts = []
    real = compiler.backend_compile_and_load
    monkeypatch.setattr(compiler, "backend_compile_and_load", lambda backend, module, *a, **k: (
        starts.append((str(module.operation.attributes["sym_name"]), time.perf_counter())),
        real(backend, module, *a, **k))[1])
    gate = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    monkeypatch.setattr(g, "_warm_kernels", lambda m, b, at="generate": [pool.submit(gate.wait, 30)]
                        if at == "generate" else [])
    t0 = time.perf_counter()
    np.asarray(g.generate(model, np.array([[3, 5, 7, 9]], np.int32), 4))
    assert not gate.is_set() and any("prefill" in n for n, _ in starts)  # compiled without waiting
    gate.set()
    pool.shutdown()
    assert time.perf_counter() - t0 < 30
    np.asarray(g.generate(model, np.array([[3, 5, 7]], np.int32), 1))  # n = 1: no warm-ups, no event
