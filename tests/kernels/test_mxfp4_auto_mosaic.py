"""``impl="auto"`` runs the Mosaic GPU MXFP4 decode kernel at M <= 16 on Hopper (issues 14 / 16, session 8): the
resolver on the sm90 tables (no GPU needed), the MXFP4 schemes' load-time layout (scales also stored [K/32, N]) and
fold check (the folded decode only where every scale byte allows it), and the layer's output against a float64
numpy reference. On CPU the device is a pretend H200 (``tuning.current_device`` patched): ``auto`` then resolves
as on the GPU and the Mosaic kernel runs in its interpreter (the portable decode; the chosen decode is asserted
from the config it was given)."""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
from quark_jax import kernels
from quark_jax.kernels import _dispatch, tuning
from quark_jax.kernels.mxfp4_mm import decode, mxfp4_mosaic_may_run, pallas_mosaic_gpu
from quark_jax.nn.linear import QuarkLinear
from quark_jax.schemes import QuarkW4A4MXFP4, QuarkW4A16MXFP4

HOPPER = [("NVIDIA H200", "9.0"), ("NVIDIA H100 80GB HBM3", "9.0"), ("NVIDIA GH200 480GB", "9.0")]


@pytest.fixture(autouse=True)
def no_user_tables(monkeypatch, tmp_path):
    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", str(tmp_path / "user"))


def pretend(monkeypatch, kind, cc):
    monkeypatch.setattr(tuning, "current_device", lambda: (kind, cc))


@pytest.mark.parametrize("kind,cc", HOPPER, ids=[h[0] for h in HOPPER])
def test_auto_resolves_to_mosaic_at_decode_on_hopper_tables(monkeypatch, kind, cc):
    pretend(monkeypatch, kind, cc)
    for k, n in ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (5120, 13824)):
        for m in (1, 2, 16):
            want = "pallas" if m > 1 and (k, n) == (4096, 14336) else "mosaic"  # "16@4096x14336" (session 8 run)
            assert _dispatch.resolve_impl("mxfp4_mm", "auto", m, k, n, mosaic_ok=True,
                                          allowed=_dispatch.IMPLS_WITH_MOSAIC) == want, (m, k, n)
            # operands the Mosaic kernel does not take: the Triton kernel
            assert _dispatch.resolve_impl("mxfp4_mm", "auto", m, k, n, mosaic_ok=False) == "pallas"
        for m in (17, 64, 2048):
            assert _dispatch.resolve_impl("mxfp4_mm", "auto", m, k, n, mosaic_ok=True) == "pallas", (m, k, n)
        assert mxfp4_mosaic_may_run(k, n)
    assert not mxfp4_mosaic_may_run(4096, 4160 - 32)  # N = 4128: not a multiple of 64
    assert not mxfp4_mosaic_may_run(4096, 4096, impl="pallas") and not mxfp4_mosaic_may_run(4096, 4096, impl="xla")
    # the entry's own qualification: bf16 x (or f32 x with W4A4), M <= 16, N and K multiples of 64
    assert pallas_mosaic_gpu.supported(jnp.bfloat16, False, 16, 4096, 4096)
    assert pallas_mosaic_gpu.supported(jnp.float32, True, 1, 4096, 4096)
    assert not pallas_mosaic_gpu.supported(jnp.float32, False, 1, 4096, 4096)
    assert not pallas_mosaic_gpu.supported(jnp.bfloat16, False, 17, 4096, 4096)
    assert not pallas_mosaic_gpu.supported(jnp.bfloat16, False, 1, 4096, 4128)


def test_auto_is_unchanged_off_hopper(monkeypatch):
    for kind, cc, want in (("cpu", None, "xla"), ("NVIDIA A100-SXM4-80GB", "8.0", "pallas"),
                           ("NVIDIA L40S", "8.9", "pallas")):
        pretend(monkeypatch, kind, cc)
        assert _dispatch.resolve_impl("mxfp4_mm", "auto", 1, 4096, 4096, mosaic_ok=True) == want
        assert not mxfp4_mosaic_may_run(4096, 4096)


def _weights(rng, k, n, *, high_byte=False):
    """Random packed bytes (every code in both nibbles) with scale bytes 125..128 (fold-exact); ``high_byte``: one
    block's scale byte 129 (above ``decode.FOLD_MAX_SCALE_BYTE``). x on a grid so that every product is exact."""
    wp = rng.integers(0, 256, (n, k // 2)).astype(np.uint8)
    ws = rng.integers(125, 129, (n, k // 32)).astype(np.uint8)
    if high_byte:
        ws[n // 3, 1] = decode.FOLD_MAX_SCALE_BYTE + 1
    return wp, ws


def _x(rng, m, k):
    x = rng.integers(-32, 33, (m, k)) / 8 * 2.0 ** rng.integers(-1, 2, (m, k // 32)).repeat(32, axis=1)
    return jnp.asarray(x, jnp.float32).astype(jnp.bfloat16)


def _spy(monkeypatch):
    calls = []
    real = pallas_mosaic_gpu.mxfp4_mm_mosaic

    def spy(x, w_packed, w_scales, bias=None, **kw):
        cfg = kw.get("config") or pallas_mosaic_gpu.default_config(x.shape[1], w_packed.shape[0],
                                                                   fold=kw.get("fold", False))
        calls.append(dict(m=x.shape[0], scales_kn=kw.get("scales_kn", False), scales_shape=tuple(w_scales.shape),
                          decode=cfg.decode))
        return real(x, w_packed, w_scales, bias, **kw)

    monkeypatch.setattr(pallas_mosaic_gpu, "mxfp4_mm_mosaic", spy)
    return calls


@pytest.mark.parametrize("scheme_cls,quantize_input", [(QuarkW4A16MXFP4, False), (QuarkW4A4MXFP4, True)],
                         ids=["w4a16", "w4a4"])
@pytest.mark.parametrize("high_byte", [False, True], ids=["fold", "no_fold"])
def test_layer_stores_kn_scales_checks_the_fold_and_equals_the_reference(monkeypatch, scheme_cls, quantize_input,
                                                                        high_byte):
    """A QuarkLinear on a pretend H200: processed params hold ``weight_scale_kn`` = the checkpoint's scales
    transposed (round trip exact), the load-time check sets ``mosaic_fold`` iff every scale byte is <= 128, the
    decode runs the Mosaic kernel on the stored [K/32, N] scales with the folded decode exactly then, and the
    output equals the float64 numpy reference (bit for bit: exact data)."""
    pretend(monkeypatch, "NVIDIA H200", "9.0")
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(11 + 2 * high_byte + quantize_input)
    k, n = 512, 192  # shapes no other test processes (process_params is cached per scheme and shapes)
    wp, ws = _weights(rng, k, n, high_byte=high_byte)
    layer = QuarkLinear(k, n, scheme=scheme_cls(), dtype=jnp.bfloat16, name="mxauto.proj")
    assert "weight_scale_kn" in layer.param_names
    layer.load_params({"weight": wp, "weight_scale": ws})
    params = layer.params()
    np.testing.assert_array_equal(np.asarray(params["weight_scale_kn"]), ws.T)
    np.testing.assert_array_equal(np.asarray(params["weight_scale_kn"]).T, ws)  # back to the checkpoint layout
    np.testing.assert_array_equal(np.asarray(params["weight_scale"]), ws)
    np.testing.assert_array_equal(np.asarray(params["weight"]), wp)
    assert layer.scheme.mosaic_fold is (not high_byte)
    for m in (1, 5, 16):
        x = _x(rng, m, k)
        got = np.asarray(layer(x).astype(jnp.float32), np.float64)
        want = kref.mxfp4_mm_f64(np.asarray(x.astype(jnp.float32)), wp, ws, quantize_input=quantize_input)
        want = np.asarray(jnp.asarray(want, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
        np.testing.assert_array_equal(got, want)
    assert [c["m"] for c in calls] == [1, 5, 16]
    assert all(c["scales_kn"] and c["scales_shape"] == (k // 32, n) for c in calls)  # no per-call transpose
    assert {c["decode"] for c in calls} == {"ptx" if high_byte else "ptx_fold"}


def test_fold_would_be_wrong_above_the_limit():
    """Why the check exists: for a scale byte above ``FOLD_MAX_SCALE_BYTE`` the folded scale 2**(s - 1) is not a
    finite bf16, so the folded decode (the PTX pattern E2M1 * 2**-126 times that scale) misses the true value."""
    s = decode.FOLD_MAX_SCALE_BYTE + 1
    folded = float(np.asarray(decode.scale_bf16_folded(jnp.asarray([s], jnp.uint8)).astype(jnp.float32))[0])
    lo, _ = decode.ptx_decode_emulated(np.array([0x22, 0x22], np.uint8), 2, raw=True)  # code 2 = 1.0
    assert lo[0] * folded != 1.0 * 2.0 ** (s - 127)
    lo_ok = lo[0] * float(np.asarray(decode.scale_bf16_folded(jnp.asarray([s - 1], jnp.uint8))
                                     .astype(jnp.float32))[0])
    assert lo_ok == 2.0 ** (s - 1 - 127)


def test_no_kn_scales_or_fold_check_where_mosaic_cannot_run(monkeypatch):
    """CPU (auto is XLA), a forced impl="pallas" on a pretend H200 and dequantize_at_load store the checkpoint's
    params only, keep the unfolded default, and the entry's forced Mosaic path still takes [N, K/32] scales."""
    rng = np.random.default_rng(3)
    k, n = 128, 64
    wp, ws = _weights(rng, k, n)
    raw = {"weight": jnp.asarray(wp), "weight_scale": jnp.asarray(ws)}
    for kind, cc, scheme in (("cpu", None, QuarkW4A16MXFP4()), ("NVIDIA H200", "9.0", QuarkW4A16MXFP4(impl="pallas")),
                             ("NVIDIA H200", "9.0", QuarkW4A16MXFP4(dequantize_at_load=True))):
        pretend(monkeypatch, kind, cc)
        p = scheme.process_weights_after_loading(raw)
        assert "weight_scale_kn" not in p
        assert scheme.for_loaded(p).mosaic_fold is False
    x = _x(rng, 3, k)
    got = kernels.mxfp4_mm(x, wp, ws, quantize_input=False, impl="mosaic", out_dtype=jnp.float32)
    want = kref.mxfp4_mm_f64(np.asarray(x.astype(jnp.float32)), wp, ws, quantize_input=False)
    np.testing.assert_array_equal(np.asarray(got, np.float64), want)
    with pytest.raises(ValueError, match="scales_kn: expected shape"):
        kernels.mxfp4_mm(x, wp, ws, quantize_input=False, impl="mosaic", scales_kn=jnp.asarray(ws))


def test_fold_check_reads_the_loaders_host_bytes(monkeypatch):
    """With the checkpoint's host bytes at hand (``host_raw``, what ``load_weights`` passes) the fold check reads
    them, not the device arrays (no device sync per layer while loading); one byte above the limit turns it off."""
    pretend(monkeypatch, "NVIDIA H200", "9.0")
    k, n = 128, 64
    wp, _ = _weights(np.random.default_rng(5), k, n)
    ok = np.full((n, k // 32), 120, np.uint8)
    scheme = QuarkW4A16MXFP4()
    p = scheme.process_weights_after_loading({"weight": jnp.asarray(wp), "weight_scale": jnp.asarray(ok)})
    assert "weight_scale_kn" in p
    bad = ok.copy()
    bad[-1, -1] = 129
    assert scheme.for_loaded(p, host_raw={"weight": wp, "weight_scale": ok}).mosaic_fold is True
    assert scheme.for_loaded(p, host_raw={"weight": wp, "weight_scale": bad}).mosaic_fold is False  # host wins
    assert scheme.for_loaded(p).mosaic_fold is True  # without host bytes: the device arrays


def test_mark_loaded_on_an_abstract_module_keeps_the_defaults(monkeypatch):
    """``mark_loaded`` on a module built by ``nnx.eval_shape`` (benchmarks build 8B models so, then fill them)
    sees ShapeDtypeStructs: no value check, the unfolded decode, no error."""
    from flax import nnx

    pretend(monkeypatch, "NVIDIA H200", "9.0")
    layer = nnx.eval_shape(lambda: QuarkLinear(128, 64, scheme=QuarkW4A16MXFP4(), dtype=jnp.bfloat16, name="abs"))
    assert layer.mark_loaded().scheme.mosaic_fold is False


def test_a_layers_processed_params_follow_the_device(monkeypatch):
    """What a layer stores is decided per device (the [K/32, N] copy only where the Mosaic kernel may run): a
    layer built on a pretend H200 and one built afterwards on this device, same scheme and shape, each get their
    own device's params and load (the shapes cache once kept the first device's answer)."""
    k, n = 320, 128  # a shape no other test builds (N, K multiples of 64: the Mosaic kernel may run)
    wp, ws = _weights(np.random.default_rng(3), k, n, high_byte=False)
    with monkeypatch.context() as mp:
        pretend(mp, "NVIDIA H200", "9.0")
        assert "weight_scale_kn" in QuarkLinear(k, n, scheme=QuarkW4A16MXFP4(), name="dev.h200").param_names
    here = QuarkLinear(k, n, scheme=QuarkW4A16MXFP4(), name="dev.here")
    assert ("weight_scale_kn" in here.param_names) == mxfp4_mosaic_may_run(k, n)
    here.load_params({"weight": wp, "weight_scale": ws})
    np.testing.assert_array_equal(np.asarray(here.params()["weight_scale"]), ws)
