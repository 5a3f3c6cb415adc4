"""``choose_impl`` / ``explain_impl`` (what ``impl="auto"`` runs) without a GPU, and the tuner that writes its tables.

Expected decisions are written out per card from the measured tables (BENCHMARKS.md): the H100 and H200 card
tables, an unknown sm90 card (Hopper's family table, which is the H200's), sm80 and sm89 (defaults), CPU.
"""

import json
import os

import numpy as np
import pytest

from quark_jax.kernels import choose_impl, explain_impl, tiling, tuning
from quark_jax.kernels.tuning import tuner

OPS = ("fp8_scaled_mm", "int8_scaled_mm", "mxfp4_mm")
CLASSES = {"decode": (1, 16), "small": (40,), "medium": (200,), "prefill": (2048, 8192)}
SHAPES = [(4096, 14336), (14336, 4096), (8192, 8192), (5120, 13824)]  # the last is in no table


@pytest.fixture(autouse=True)
def no_user_tables(monkeypatch, tmp_path):
    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", str(tmp_path / "user"))


def h200(op, cls, k, n):
    if op == "mxfp4_mm":
        return "mosaic" if cls == "decode" else "pallas"  # the Mosaic decode kernel at M <= 16 (session 8)
    if op == "fp8_scaled_mm":
        return "pallas" if cls == "decode" else "xla"
    if cls == "prefill" and (k, n) in ((8192, 8192), (14336, 4096)):
        return "xla"
    return "xla" if cls == "small" else "pallas"


def h100(op, cls, k, n):
    if op == "mxfp4_mm":
        return "mosaic" if cls == "decode" else "pallas"
    if op == "fp8_scaled_mm":
        return "pallas" if cls == "decode" or (cls == "small" and (k, n) == (4096, 14336)) else "xla"
    if cls == "small" or (cls in ("medium", "prefill") and (k, n) == (14336, 4096)):
        return "xla"
    return "pallas"


def default(sm):
    def pick(op, cls, k, n):
        if op == "mxfp4_mm":
            return "pallas"
        if op == "fp8_scaled_mm":
            return "pallas" if cls == "decode" and sm >= 89 else "xla"
        return "pallas" if cls == "decode" else "xla"
    return pick


CARDS = [  # (device_kind, compute_capability, expected(op, class, k, n), source)
    ("NVIDIA H200", "9.0", h200, "card table"),
    ("NVIDIA H100 80GB HBM3", "9.0", h100, "card table"),
    ("NVIDIA GH200 480GB", "9.0", h200, "family table"),  # unknown sm90 card: Hopper's table
    ("NVIDIA A100-SXM4-80GB", "8.0", default(80), "default"),
    ("NVIDIA L40S", "8.9", default(89), "default"),
    ("cpu", None, lambda *a: "xla", "cpu"),
]


@pytest.mark.parametrize("kind,cc,expected,source", CARDS, ids=[c[0] for c in CARDS])
def test_choose_impl_every_op_and_shape_class(kind, cc, expected, source):
    for op in OPS:
        for cls, ms in CLASSES.items():
            for m in ms:
                for k, n in SHAPES:
                    want = expected(op, cls, k, n)
                    if (k, n) == (5120, 13824) and source.endswith("table"):  # no exact entry: the bucket's
                        want = expected(op, cls, 0, 0)
                    if want == "mosaic" and 1 < m <= 16 and (k, n) == (4096, 14336):  # "16@4096x14336": Triton
                        want = "pallas"
                    got = explain_impl(op, m, k, n, device_kind=kind, compute_capability=cc)
                    assert got == (want, source), (op, m, k, n)
                    assert choose_impl(op, m, k, n, device_kind=kind, compute_capability=cc) == want


def test_mxfp4_is_never_the_emulation_on_a_gpu_without_a_table():
    for cc in ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0"):
        for m in (1, 16, 64, 512, 4096):
            want = "mosaic" if cc == "9.0" and m <= 16 else "pallas"  # Hopper's family table: Mosaic at decode
            assert choose_impl("mxfp4_mm", m, 4096, 4096, device_kind="Future GPU", compute_capability=cc) == want
    assert choose_impl("mxfp4_mm", 1, 4096, 4096, device_kind="Old GPU", compute_capability="7.5") == "xla"


def test_mxfp6_runs_the_kernel_at_decode_and_the_reference_at_prefill():
    # H200, 2026-12-02 (BENCHMARKS.md): decode Pallas 34-120 us vs the XLA reference 53-204 us; prefill M = 2048
    # the reference 134-512 us vs the kernel 403-1590 us
    for cc in ("8.0", "9.0"):
        for m, want in ((1, "pallas"), (16, "pallas"), (64, "xla"), (2048, "xla")):
            assert choose_impl("mxfp6_mm", m, 4096, 14336, device_kind="NVIDIA H200", compute_capability=cc) == want
    assert choose_impl("mxfp6_mm", 1, 4096, 4096, device_kind="Old GPU", compute_capability="7.5") == "xla"


def test_user_table_comes_first_and_is_reread_when_it_changes(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    path = user / "nvidia_h200.json"
    path.write_text(json.dumps({"impl": {"fp8_scaled_mm": {"max@4096x14336": "pallas"}}}))
    args = dict(device_kind="NVIDIA H200", compute_capability="9.0")
    assert explain_impl("fp8_scaled_mm", 2048, 4096, 14336, **args) == ("pallas", "user cache")
    assert explain_impl("fp8_scaled_mm", 2048, 4096, 4096, **args) == ("xla", "card table")
    path.write_text(json.dumps({"impl": {"fp8_scaled_mm": {"max": "xla"}}}))
    os.utime(path, (1, 1))  # a different mtime even within the file system's time resolution
    assert explain_impl("fp8_scaled_mm", 2048, 4096, 14336, **args) == ("xla", "user cache")


def test_user_dir_from_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("QUARK_JAX_TUNING_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.user_dir() == tmp_path / "quark_jax"


def test_bad_tables_and_arguments_raise_clear_errors(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "nvidia_h200.json").write_text(json.dumps({"impl": {"fp8_scaled_mm": {"decode": "pallas"}}}))
    with pytest.raises(ValueError, match=r"nvidia_h200.json \[fp8_scaled_mm\]: key 'decode' is not"):
        choose_impl("fp8_scaled_mm", 1, 64, 64, device_kind="NVIDIA H200", compute_capability="9.0")
    (user / "nvidia_h200.json").write_text(json.dumps({"impl": {"fp8_scaled_mm": {"16": "cuda"}}}))
    with pytest.raises(ValueError, match=r"\[fp8_scaled_mm\]\[16\]: expected one of \('pallas', 'xla', 'mosaic'\)"):
        choose_impl("fp8_scaled_mm", 1, 64, 64, device_kind="NVIDIA H200", compute_capability="9.0")
    for op, key in (("fp8_scaled_mm", "16"), ("mxfp4_mm", "64"), ("mxfp4_mm", "max@4096x4096")):
        (user / "nvidia_h200.json").write_text(json.dumps({"impl": {op: {key: "mosaic"}}}))  # only MXFP4 decode
        with pytest.raises(ValueError, match="'mosaic' is allowed only for"):
            choose_impl(op, 1, 64, 64, device_kind="NVIDIA H200", compute_capability="9.0")
    with pytest.raises(ValueError, match="op: expected one of"):
        choose_impl("bf16_mm", 1, 64, 64, device_kind="cpu", compute_capability=None)
    with pytest.raises(ValueError, match="compute_capability: expected 'major.minor'"):
        choose_impl("mxfp4_mm", 1, 64, 64, device_kind="x", compute_capability="sm90")


def test_packaged_tables_are_valid_and_every_sm90_card_has_hopper_entries():
    for path in tuning.PACKAGE_DIR.glob("*.json"):
        table = tuning.validate_table(json.loads(path.read_text()), str(path))
        assert set(table["impl"]) == set(OPS), path
    assert (tuning.PACKAGE_DIR / "sm90.json").exists() and (tuning.PACKAGE_DIR / "nvidia_h200.json").exists()


def test_tiling_lookup_walks_buckets_upward():
    table = {"1@64x32": "a", "16": "b", "256@64x32": "c", "max": "d"}
    assert [tiling.lookup(table, m, 64, 32)[0] for m in (1, 2, 17, 100, 300)] == ["a", "b", "c", "c", "d"]
    assert tiling.lookup(table, 1, 64, 64)[0] == "b"  # no exact entry: the next bucket's general one
    assert tiling.lookup({}, 1, 64, 64) == (None, None)


def test_tuner_records_majorities_and_compacts():
    table = {"impl": {}}
    for (k, n), w in zip([(64, 32), (128, 32), (64, 64)], ["pallas", "xla", "pallas"]):
        tuner.record(table, tuner.Point(op="int8_scaled_mm", m=9, k=k, n=n), w)
    entries = table["impl"]["int8_scaled_mm"]
    assert entries["16"] == "pallas" and entries["16@128x32"] == "xla"
    assert tuner.compact(table)["impl"]["int8_scaled_mm"] == {"16": "pallas", "16@128x32": "xla"}


def test_tune_writes_the_user_table_that_auto_then_reads(monkeypatch, tmp_path):
    """A tuning run on a pretend H200 with a fake timer (xla faster at decode, pallas at prefill): the user
    table it writes is what explain_impl then reports, and every auto row resolved through it."""
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    fake = {("pallas", 1): 2.0, ("xla", 1): 1.0, ("pallas", 600): 1.0, ("xla", 600): 3.0}
    seen = []

    def timer(case):
        seen.append(case.name)
        m = case.arg_sets[0][0].shape[0]
        return fake.get((case.name, m), 1.5)  # "auto": whatever; only its resolution is checked

    monkeypatch.setattr(tuner, "operands", lambda op, m, k, n: [(np.zeros((m, k)), np.zeros((n, k)))])
    monkeypatch.setattr(tuner, "entry", lambda op, impl: None)  # the fake timer runs nothing
    pts = tuner.points([("fp8_scaled_mm", 64, 32)], ms=(1, 600))
    table, rows = tuner.tune(pts, check_auto=True, timer=timer, log=None)
    path = tuner.user_table_path("NVIDIA H200")
    assert json.loads(path.read_text())["impl"] == table["impl"]
    assert table["impl"]["fp8_scaled_mm"] == {"1@64x32": "xla", "1": "xla", "max@64x32": "pallas", "max": "pallas"}
    auto = [(r["m"], r["auto_impl"], r["auto_source"]) for r in rows if r["name"] == "auto"]
    assert auto == [(1, "xla", "user cache"), (600, "pallas", "user cache")]
    assert seen == ["pallas", "xla", "auto"] * 2
    assert explain_impl("fp8_scaled_mm", 1, 64, 32, device_kind="NVIDIA H200",
                        compute_capability="9.0") == ("xla", "user cache")


def test_auto_misses_flags_slow_auto_and_the_mxfp4_emulation():
    def rows(op, auto_impl, t_auto):
        return [dict(op=op, m=1, k=64, n=64, name="pallas", impl="pallas", seconds=1.0),
                dict(op=op, m=1, k=64, n=64, name="xla", impl="xla", seconds=1.05),
                dict(op=op, m=1, k=64, n=64, name="auto", impl="auto", seconds=t_auto, auto_impl=auto_impl)]
    assert tuner.auto_misses(rows("fp8_scaled_mm", "xla", 1.06)) == []
    assert len(tuner.auto_misses(rows("fp8_scaled_mm", "xla", 1.2))) == 1
    assert len(tuner.auto_misses(rows("mxfp4_mm", "xla", 1.06))) == 1  # within 10%, but the emulation


def test_cli_tune_times_the_checkpoints_layer_shapes_and_inspect_shows_auto(monkeypatch, tmp_path, capsys):
    """``quark-jax tune CHECKPOINT`` tunes exactly the checkpoint's (op, K, N) layer shapes (a fake timer:
    xla faster) and writes the user table; ``inspect`` on the same pretend H200 then shows, per layer, what
    auto runs at decode and prefill and that the user table decided it."""
    from quark_jax import cli
    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))

    def entry(op, impl):  # never called: the fake timer only reads which impl it stands for
        def fn(*args):
            raise AssertionError("the fake timer runs nothing")
        fn.impl = impl
        return fn

    timed = set()

    def kernel_time(fn, sets):
        x, w = sets[0][0], sets[0][1]
        timed.add((x.shape[0], x.shape[1], w.shape[0]))
        return 1.0 if fn.impl == "xla" else 2.0

    monkeypatch.setattr(tuner, "entry", entry)
    monkeypatch.setattr(tuner, "kernel_time", kernel_time)
    monkeypatch.setattr(tuner, "operands", lambda op, m, k, n: [(np.zeros((m, k)), np.zeros((n, k // 2)))])
    assert cli.main(["tune", "tiny-llama-mxfp4", "--m", "1"]) == 0
    out = capsys.readouterr().out
    table = json.loads(tuner.user_table_path("NVIDIA H200").read_text())
    assert "wrote" in out and set(table["impl"]) == {"mxfp4_mm"}
    assert {key for key in table["impl"]["mxfp4_mm"] if "@" in key} == {f"1@{k}x{n}" for _, k, n in timed}
    assert len(timed) >= 3 and set(table["impl"]["mxfp4_mm"].values()) == {"xla"}
    assert cli.main(["inspect", "tiny-llama-mxfp4", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert len(timed_layers(out)) >= 3
    assert out.count("[auto: decode xla (user cache), prefill pallas (card table)]") == len(timed_layers(out))
    from quark_jax.config import QuarkConfig

    described = QuarkConfig.from_pretrained("tiny-llama-mxfp4").describe()
    assert described.count("[auto: decode xla (user cache), prefill pallas (card table)]") == len(timed_layers(out))


def timed_layers(inspect_out: str) -> list[str]:
    return [line for line in inspect_out.splitlines() if "QuarkW4A4MXFP4" in line]


def test_int4_scheme_runs_the_repacked_kernel_at_decode_on_an_h200(monkeypatch):
    """``QuarkW4A16Int4`` with ``impl="auto"`` on a pretend H200: the repacked-layout kernel (``pallas_nk``, its
    defaults: zero point in the weight) at decode (M <= 16; M = 1 here), the XLA reference of the same layout above; both
    give the checkpoint's dequantized GEMM (exact data: bit for bit)."""
    from quark_jax import formats, quant
    from quark_jax.kernels.int4_mm import pallas_nk
    from quark_jax.schemes import QuarkW4A16Int4

    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    ran = []
    real = pallas_nk.int4_mm_nk_pallas

    def spy(x, *args, **kw):
        ran.append((x.shape[0], pallas_nk.default_config(x.shape[0], x.shape[1], args[0].shape[0],
                                                         kw["group_size"]).zero_in_weight))
        return real(x, *args, **kw)

    monkeypatch.setattr(pallas_nk, "int4_mm_nk_pallas", spy)
    rng = np.random.default_rng(0)
    k, n, g = 64, 32, 32
    raw = {"weight": formats.pack_int4(rng.integers(0, 16, (k, n)), "reorder"),
           "weight_scale": 2.0 ** rng.integers(-3, 1, (k // g, n)).astype(np.float32),
           "weight_zero_point": formats.pack_int4(rng.integers(0, 16, (k // g, n)), "reorder")}
    scheme = QuarkW4A16Int4(signed=False, group_size=g)
    params = scheme.process_weights_after_loading(raw)
    w = np.asarray(quant.dequantize_int4(raw["weight"], raw["weight_scale"], raw["weight_zero_point"], group_size=g,
                                         signed=False), np.float64)
    for m in (1, 40):
        x = rng.integers(-8, 9, (m, k)).astype(np.float32) / 4
        np.testing.assert_array_equal(np.asarray(scheme.apply_weights(params, x), np.float64), x @ w.T)
    assert ran == [(1, True)]
