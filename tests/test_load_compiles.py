"""What ``from_pretrained`` compiles while it loads (issue 14 item 4, session 9): MXFP4 layers are processed on
the host (numpy: the [K/32, N] scale copy, the fold check), so the load runs no ``process_params`` program and no
device reduction per layer shape, and the processed params equal the jitted processing's bit for bit; schemes that
process on the device (FP8) compile ``process_params`` once per distinct layer geometry (ahead, in parallel), not
once per layer. On CPU the device is a pretend H200 where the Mosaic decode layout matters (``tuning.current_device``
patched, as ``tests/kernels/test_mxfp4_auto_mosaic.py`` does)."""

from __future__ import annotations

import collections
import logging

import jax
import numpy as np
import pytest

from quark_jax.kernels import MXFP4_FOLD_MAX_SCALE_BYTE, tuning
from quark_jax.models import from_pretrained
from quark_jax.nn import QuarkLinear
from quark_jax.nn import linear as linear_mod
from quark_jax.schemes import QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, process_params

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "quark_tiny_llama"


@pytest.fixture(autouse=True)
def no_user_tables(monkeypatch, tmp_path):
    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", str(tmp_path / "user"))
    linear_mod._processed_shapes.cache_clear()  # per-process geometry caches: a pretend device must not leak
    jax.clear_caches()  # jitted traces too (process_params': its layout depends on the device)
    yield
    linear_mod._processed_shapes.cache_clear()
    jax.clear_caches()


class _Compiles(logging.Handler):
    """Counts JAX's "Compiling jit(NAME) ..." log lines by NAME."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.counts[msg.split(" ")[1]] += 1


def _load_counting(path):
    handler = _Compiles()
    log = logging.getLogger("jax")
    log.addHandler(handler)
    jax.clear_caches()  # what other tests in this process compiled must not hide a compile here
    before = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # process-wide: the loader's reader threads compile too
    try:
        model = from_pretrained(path)
    finally:
        jax.config.update("jax_log_compiles", before)
        log.removeHandler(handler)
    return model, handler.counts


def _quark_layers(model):
    from flax import nnx

    return [m for _, m in nnx.iter_modules(model) if isinstance(m, QuarkLinear)]


def _fixture(name):
    d = FIXTURES / name
    if not (d / "config.json").exists():
        pytest.skip(f"fixture {name} not bundled")
    return d


@pytest.mark.parametrize("name", ["w_mxfp4_a_mxfp4", "w_mxfp4_a_fp8_pertensor_static"])
def test_mxfp4_load_compiles_no_processing_and_equals_the_jitted_form(monkeypatch, name):
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    d = _fixture(name)
    model, counts = _load_counting(d)
    assert counts["jit(process_params)"] == 0 and counts["jit(_reduce_max)"] == 0, counts
    layers = _quark_layers(model)
    assert len(layers) == 8  # 2 layers x (qkv, o, gate_up, down)
    from quark_jax.checkpoint import open_checkpoint

    ckpt = open_checkpoint(d)
    for layer in layers:
        assert layer.scheme.processes_on_host
        raw = layer.read_checkpoint(ckpt)
        ws = np.asarray(raw["weight_scale"])
        got = {k: np.asarray(v) for k, v in layer.params().items()}
        # the Mosaic layout on the pretend H200: the checkpoint's scales transposed, numpy's transpose
        np.testing.assert_array_equal(got["weight_scale_kn"], ws.T)
        np.testing.assert_array_equal(got["weight"], raw["weight"])
        # the same params as the device processing (names, shapes, dtypes, bytes)
        want = process_params(layer.scheme, {k: v for k, v in raw.items() if k != "bias"}, layer.logical_widths)
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == np.asarray(want[k]).dtype and got[k].shape == want[k].shape, k
            np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=k)
        if "input_scale" in raw:
            assert float(got["input_scale"]) == float(np.max(np.asarray(raw["input_scale"], np.float64)))
        # the fold decision from the bytes (numpy), as the device check would make it
        assert layer.scheme.mosaic_fold == (int(ws.max()) <= MXFP4_FOLD_MAX_SCALE_BYTE)


@pytest.mark.parametrize("scheme", [QuarkW4A4MXFP4(), QuarkW4A8MXFP4Fp8()], ids=["w4a4", "w4a8"])
def test_host_processing_refuses_nothing_the_layer_did_not_declare(monkeypatch, scheme):
    """A layer's host processing gives exactly its declared params; a fold-unsafe byte turns the fold off."""
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    rng = np.random.default_rng(0)
    k, n = 128, 64
    raw = {"weight": rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
           "weight_scale": rng.integers(110, 129, (n, k // 32), dtype=np.uint8)}
    if scheme.is_static_input_scheme:
        raw["input_scale"] = np.array([0.25], np.float32)
    layer = QuarkLinear(k, n, scheme=scheme, name="p", abstract=True)
    layer.load_raw(raw)
    assert sorted(layer.params()) == sorted(layer.param_names)
    np.testing.assert_array_equal(np.asarray(layer.params()["weight_scale_kn"]), raw["weight_scale"].T)
    assert layer.scheme.mosaic_fold is True
    raw["weight_scale"][3, 1] = MXFP4_FOLD_MAX_SCALE_BYTE + 1
    assert QuarkLinear(k, n, scheme=scheme, name="p", abstract=True).load_raw(raw).scheme.mosaic_fold is False


def test_device_processing_compiles_once_per_geometry():
    """FP8 per-tensor re-quantizes fused shards on the device: one ``process_params`` compile per distinct
    (widths, shapes) of the model's Quark layers (4 in a fused Llama: qkv, o, gate_up, down), whatever the number
    of layers."""
    d = _fixture("w_fp8_a_fp8_pertensor_static")
    model, counts = _load_counting(d)
    layers = _quark_layers(model)
    geometries = {(m.logical_widths, m.in_features) for m in layers}
    assert len(layers) == 8 and len(geometries) == 4
    assert counts["jit(process_params)"] == len(geometries), counts


@pytest.mark.parametrize("parts", [2, 3, 8])
def test_large_tensors_read_in_parallel_ranges_equal_one_read(monkeypatch, tmp_path, parts):
    """``SafetensorsFile.get`` reads a tensor above ``PARALLEL_READ_BYTES`` as byte ranges in parallel threads:
    the same array as one sequential read (sizes not divisible by the part count, F8 and bf16 included); a file
    cut short still raises."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from quark_jax.io import SafetensorsFile
    from quark_jax.io import safetensors_file as sf

    rng = np.random.default_rng(parts)
    tensors = {"a": rng.integers(0, 256, (37, 129), dtype=np.uint8),
               "b": rng.standard_normal((13, 7)).astype(np.float32),
               "c": rng.standard_normal((5, 3)).astype(ml_dtypes.bfloat16)}
    path = tmp_path / "t.safetensors"
    save_file({k: (v.view(np.uint16) if v.dtype == ml_dtypes.bfloat16 else v) for k, v in tensors.items()},
              str(path))
    f = SafetensorsFile(path)
    one = {k: f.get(k) for k in tensors}
    monkeypatch.setattr(sf, "PARALLEL_READ_BYTES", 16)
    monkeypatch.setattr(sf, "PARALLEL_READ_PARTS", parts)
    monkeypatch.setattr(sf, "_POOL", None)
    for k in tensors:
        got = f.get(k)
        np.testing.assert_array_equal(got.view(np.uint8), one[k].view(np.uint8))
    np.testing.assert_array_equal(one["a"], tensors["a"])
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # the last tensor's bytes cut short (the header still says they are there)
    last = max(tensors, key=lambda k: f.info(k).end)
    with pytest.raises(OSError, match="truncated"):
        f.get(last)


def test_row_slices_read_as_one_range(tmp_path):
    """``get_slice`` of whole rows reads their bytes directly; any other index goes through the mapping: both
    equal numpy's slicing of the whole tensor."""
    from safetensors.numpy import save_file

    from quark_jax.io import SafetensorsFile

    a = np.arange(7 * 5 * 3, dtype=np.float32).reshape(7, 5, 3)
    save_file({"a": a, "v": np.arange(9, dtype=np.int32)}, str(tmp_path / "t.safetensors"))
    f = SafetensorsFile(tmp_path / "t.safetensors")
    for idx in [(slice(2, 5),), (slice(0, 7),), (slice(-3, None),), (slice(4, 2),), (slice(1, 6), slice(None)),
                (slice(1, 6), slice(0, 5), slice(None, None, 1)), (slice(1, 6), slice(1, 3)), (slice(0, 7, 2),)]:
        np.testing.assert_array_equal(f.get_slice("a", idx), a[idx], err_msg=str(idx))
    np.testing.assert_array_equal(f.get_slice("v", (slice(3, 8),)), np.arange(3, 8))


def test_large_float_tensors_load_as_row_chunks_equal_to_one_job(monkeypatch):
    """A float variable above ``FLOAT_CHUNK_BYTES`` (here: the embedding and the transposed LM head of the tiny
    model) loads as row-chunk jobs joined on the device: every variable equals the one-job load's."""
    from flax import nnx

    from quark_jax.nn import load as load_mod

    d = _fixture("w_fp8_a_fp8_pertensor_static")
    want = nnx.to_flat_state(nnx.state(from_pretrained(d)))
    jobs = load_mod.PIPELINE_STATS["jobs"]
    monkeypatch.setattr(load_mod, "FLOAT_CHUNK_BYTES", 4096)  # [256, 64]: >= 8 chunks each
    got = from_pretrained(d)
    from quark_jax.checkpoint import open_checkpoint

    ckpt = open_checkpoint(d)
    extra = sum(-(-ckpt.nbytes(n) // 4096) - 1 for n in ("model.embed_tokens.weight", "lm_head.weight"))
    assert extra >= 14 and load_mod.PIPELINE_STATS["jobs"] == jobs + extra  # one job per 4 KiB of rows
    got = dict(nnx.to_flat_state(nnx.state(got)))
    for path, v in want:
        np.testing.assert_array_equal(np.asarray(got[path].get_value()), np.asarray(v.get_value()), err_msg=str(path))
