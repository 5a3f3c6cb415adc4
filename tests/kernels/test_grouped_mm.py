"""Grouped (MoE expert) GEMM: the XLA reference and the Pallas backend against float64 numpy, ragged groups
(empty experts, rows past the groups, M not a multiple of the row tile), every scheme, per-tensor and per-channel
FP8 scales, and the entry's validation.

"Exact" data: every product and partial sum is exactly representable in f32 (values on coarse grids), so the
backends must equal float64 numpy bit for bit before the final scaling; with FP8 scales the f32 epilogue's two
multiplies allow 2**-22 relative error.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_reference as kref
import reference_numpy as ref
from kernels.base import KernelContract, Variant, triton_ir
from quark_jax import kernels
from quark_jax.kernels.grouped_mm import pallas_triton
from quark_jax.kernels.grouped_mm.xla import grouped_mm_xla

C = pallas_triton.Config

E8 = jnp.float8_e4m3fn


def _sizes(rng, m, e, empty=True):
    """Random group sizes over e experts summing to m - (0..2) rows, with at least one empty group."""
    total = m - int(rng.integers(0, 3)) if m > 2 else m
    cuts = np.sort(rng.integers(0, total + 1, e - 1))
    sizes = np.diff(np.concatenate([[0], cuts, [total]]))
    if empty and e > 1 and (sizes > 0).all():
        i = int(rng.integers(0, e))
        j = (i + 1) % e
        sizes[j] += sizes[i]
        sizes[i] = 0
    return jnp.asarray(sizes, jnp.int32)


def make_data(rng, scheme, m, k, n, e, *, per_channel=False, per_token=False, x_dtype=jnp.bfloat16):
    """Operands of ``scheme`` on exact grids, and the float64 reference weight [E, N, K]."""
    sizes = _sizes(rng, m, e)
    d = dict(scheme=scheme, group_sizes=sizes, w_scale=None, x_scale=None)
    if scheme == "fp8":
        grid = np.arange(-16, 17) / 4  # e4m3-exact, products multiples of 1/16 below 16: exact f32 sums
        d["x"] = jnp.asarray(rng.choice(grid, (m, k)), jnp.float32).astype(E8)
        d["w"] = jnp.asarray(rng.choice(grid, (e, n, k)), jnp.float32).astype(E8)
        d["w_scale"] = jnp.asarray(rng.uniform(0.5, 2.0, (e, n) if per_channel else (e,)), jnp.float32)
        d["x_scale"] = jnp.asarray(rng.uniform(0.5, 2.0, (m, 1)) if per_token else 0.75, jnp.float32)
        d["w64"] = np.asarray(d["w"].astype(jnp.float32), np.float64)
    elif scheme == "mxfp4":
        d["x"] = jnp.asarray(rng.integers(-32, 33, (m, k)) / 8, jnp.float32).astype(x_dtype)
        d["w"] = jnp.asarray(rng.integers(0, 256, (e, n, k // 2)), jnp.uint8)
        d["w_scale"] = jnp.asarray(rng.integers(125, 129, (e, n, k // 32)), jnp.uint8)
        d["w64"] = ref.mxfp4_dequantize(np.asarray(d["w"]), np.asarray(d["w_scale"]))
    else:
        d["x"] = jnp.asarray(rng.integers(-32, 33, (m, k)) / 8, jnp.float32).astype(x_dtype)
        d["w"] = jnp.asarray(rng.integers(-32, 33, (e, n, k)) / 16, jnp.float32).astype(x_dtype)
        d["w64"] = np.asarray(d["w"].astype(jnp.float32), np.float64)
    return d


def want64(d):
    return kref.grouped_mm_f64(np.asarray(d["x"].astype(jnp.float32)), d["w64"], np.asarray(d["group_sizes"]),
                               d["x_scale"], d["w_scale"] if d["scheme"] == "fp8" else None)


def call(d, impl, out_dtype=jnp.float32, **kw):
    return kernels.grouped_mm(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"], x_scale=d["x_scale"],
                              scheme=d["scheme"], out_dtype=out_dtype, impl=impl, **kw)


def check_f64(got, d):
    want = want64(d)
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    if d["scheme"] == "fp8":  # exact accumulators; two f32 scale multiplies
        np.testing.assert_allclose(got, want, rtol=2.0 ** -22, atol=0)
    else:
        np.testing.assert_array_equal(got, want)
    end = int(np.asarray(d["group_sizes"]).sum())
    assert (got[end:] == 0).all()


CASES = [  # (scheme, per_channel, per_token, x dtype)
    ("bf16", False, False, jnp.bfloat16),
    ("bf16", False, False, jnp.float32),
    ("fp8", False, False, None),
    ("fp8", True, True, None),
    ("mxfp4", False, False, jnp.bfloat16),
    ("mxfp4", False, False, jnp.float32),
]


@pytest.mark.parametrize("scheme,per_channel,per_token,x_dtype", CASES)
def test_xla_reference_matches_float64(scheme, per_channel, per_token, x_dtype):
    rng = np.random.default_rng(3)
    d = make_data(rng, scheme, 21, 64, 32, 4, per_channel=per_channel, per_token=per_token,
                  x_dtype=x_dtype or jnp.bfloat16)
    got = call(d, "xla")
    assert got.dtype == jnp.float32
    check_f64(got, d)


def test_xla_reference_jits_with_traced_group_sizes_and_rounds_once():
    rng = np.random.default_rng(4)
    d = make_data(rng, "fp8", 9, 32, 16, 3, per_channel=True)
    f = jax.jit(lambda g: kernels.grouped_mm(d["x"], d["w"], g, w_scale=d["w_scale"], x_scale=d["x_scale"],
                                             scheme="fp8", impl="xla"))
    for sizes in ([9, 0, 0], [0, 0, 0], [2, 3, 4], [0, 5, 1]):
        d["group_sizes"] = jnp.asarray(sizes, jnp.int32)
        got = f(d["group_sizes"])
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)),
                                      np.asarray(jnp.asarray(want64(d), jnp.float32).astype(jnp.bfloat16)
                                                 .astype(jnp.float32)))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(scheme="int4"), ValueError, "scheme: expected one of"),
    (dict(group_sizes=[1, 1]), ValueError, r"group_sizes: expected shape \(3,\)"),
    (dict(group_sizes=[4, 4, 4]), ValueError, "summing to at most M = 5"),
    (dict(group_sizes=[4, -1, 0]), ValueError, "non-negative"),
    (dict(group_sizes=[1.0, 1.0, 1.0]), TypeError, "group_sizes: expected an integer"),
    (dict(w_scale=None), ValueError, "w_scale: scheme 'fp8' needs"),
    (dict(w_scale=np.ones((3, 5), np.float32)), ValueError, r"w_scale: expected shape \(3,\) per tensor or \(3, 16\)"),
    (dict(x_scale=None), ValueError, "x_scale: scheme 'fp8' needs"),
    (dict(x_scale=np.ones((4, 1), np.float32)), ValueError, "x_scale: expected a scalar or shape"),
    (dict(w=np.ones((3, 16, 48), np.float32)), TypeError, "w: expected dtype float8_e4m3fn"),
    (dict(x=np.ones((5, 32), np.float32)), TypeError, "x: expected dtype float8_e4m3fn, float8_e4m3fnuz"),
    (dict(out_dtype=jnp.int8), TypeError, "out_dtype"),
    (dict(impl="mosaic"), ValueError, "impl: expected one of"),
])
def test_entry_errors_name_the_argument(kwargs, err, match):
    args = dict(x=jnp.ones((5, 32), E8), w=jnp.ones((3, 16, 32), E8), group_sizes=jnp.asarray([2, 0, 3], jnp.int32),
                w_scale=jnp.ones(3), x_scale=jnp.float32(1), scheme="fp8")
    args.update(kwargs)
    if "w" in kwargs and args["w"].dtype == np.float32:
        args["w"] = jnp.asarray(args["w"])
    with pytest.raises(err, match=match):
        kernels.grouped_mm(args.pop("x"), args.pop("w"), args.pop("group_sizes"), impl=args.pop("impl", "xla"),
                           **args)


def test_entry_errors_mxfp4_and_bf16():
    x = jnp.ones((4, 64), jnp.bfloat16)
    wp = jnp.zeros((2, 16, 32), jnp.uint8)
    ws = jnp.full((2, 16, 2), 127, jnp.uint8)
    g = jnp.asarray([4, 0], jnp.int32)
    with pytest.raises(ValueError, match=r"w: expected shape \(2, 16, 32\) \(packed K/2\)"):
        kernels.grouped_mm(x, jnp.zeros((2, 16, 64), jnp.uint8), g, w_scale=ws, scheme="mxfp4")
    with pytest.raises(ValueError, match=r"w_scale: expected shape \(2, 16, 2\)"):
        kernels.grouped_mm(x, wp, g, w_scale=ws[:, :, :1], scheme="mxfp4")
    with pytest.raises(ValueError, match="w_scale: scheme 'mxfp4' needs"):
        kernels.grouped_mm(x, wp, g, scheme="mxfp4")
    with pytest.raises(ValueError, match="x_scale: scheme 'mxfp4' takes no activation scale"):
        kernels.grouped_mm(x, wp, g, w_scale=ws, x_scale=1.0, scheme="mxfp4")
    with pytest.raises(ValueError, match="x: K = 48 must be a multiple of 32"):
        kernels.grouped_mm(jnp.ones((4, 48), jnp.bfloat16), wp, g, w_scale=ws, scheme="mxfp4")
    with pytest.raises(TypeError, match=r"w: expected dtype bfloat16 \[E, N, K\]"):
        kernels.grouped_mm(x, jnp.ones((2, 16, 64), jnp.float32), g)
    with pytest.raises(ValueError, match="w: contraction size 32 does not match x's K = 64"):
        kernels.grouped_mm(x, jnp.ones((2, 16, 32), jnp.bfloat16), g)
    with pytest.raises(ValueError, match="w_scale: scheme 'bf16' takes no weight scale"):
        kernels.grouped_mm(x, jnp.ones((2, 16, 64), jnp.bfloat16), g, w_scale=jnp.ones(2))


class _GroupedContract(KernelContract):
    """The Pallas backend against the XLA reference (bit for bit) and float64 numpy, per scheme; 4 experts with
    ragged, empty and trailing (past the sum) groups. Variants: decode (weight-major, ragged M), decode with a K
    split and M a multiple of the tile, prefill (x-major, tiles straddling experts, M not a multiple of the
    tile), decode with a K split over wide (256-column) steps."""

    SCHEME: str
    VARIANTS = [
        Variant(backend="pallas_triton", name="decode_wmajor", shape=(3, 128, 48),
                config=C(block_m=16, block_n=16, block_k=64)),
        Variant(backend="pallas_triton", name="decode_split_k_tile_multiple", shape=(16, 256, 32),
                config=C(block_m=16, block_n=16, block_k=64, split_k=2)),
        Variant(backend="pallas_triton", name="prefill_xmajor_ragged", shape=(45, 128, 32),
                config=C(block_m=16, block_n=16, block_k=32, w_major=False)),
        # the Mixtral down projection's decode structure (K split, 256-column steps, two per split): the MXFP4
        # packed-weight copy failed to compile on the H200 when the split offset was a floor division
        Variant(backend="pallas_triton", name="decode_split_k_wide_steps", shape=(2, 1024, 64),
                config=C(block_m=16, block_n=64, block_k=256, split_k=2)),
    ]
    ENTRY_SHAPE = (5, 64, 32)
    PALLAS = (pallas_triton, "grouped_mm_pallas")

    def flavors_for(self, variant):
        """One flavor per variant, alternating (each flavor runs on two variants; keeps interpret mode short)."""
        return [self.FLAVORS[self.VARIANTS.index(variant) % 2]]

    def data(self, rng, m, k, n, flavor):
        return make_data(rng, self.SCHEME, m, k, n, 4, per_channel="per_channel" in flavor,
                         per_token="per_token" in flavor, x_dtype=jnp.float32 if flavor == "f32" else jnp.bfloat16)

    def run(self, variant, d, flavor):
        return pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=_w_scale(d),
                                               x_scale=_x_scale(d), scheme=self.SCHEME, out_dtype=jnp.float32,
                                               config=variant.config)

    def check(self, got, d, flavor):
        want = grouped_mm_xla(d["x"], d["w"], d["group_sizes"], w_scale=_w_scale(d), x_scale=_x_scale(d),
                              scheme=self.SCHEME, out_dtype=jnp.float32)
        assert got.shape == want.shape and got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        check_f64(got, d)

    def entry(self, d, impl):
        return call(d, impl, out_dtype=jnp.bfloat16)

    def entry_check(self, got, want, d):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


def _w_scale(d):
    return d["w_scale"]


def _x_scale(d):
    return None if d["x_scale"] is None else jnp.asarray(d["x_scale"], jnp.float32).reshape(
        () if np.size(d["x_scale"]) == 1 else (-1, 1))


class TestGroupedBf16(_GroupedContract):
    SCHEME = "bf16"
    OP = "grouped_mm_bf16"
    FLAVORS = ["f32", "bf16"]


class TestGroupedFp8(_GroupedContract):
    SCHEME = "fp8"
    OP = "grouped_mm_fp8"
    FLAVORS = ["per_tensor", "per_channel_per_token"]


class TestGroupedMxfp4(_GroupedContract):
    SCHEME = "mxfp4"
    OP = "grouped_mm_mxfp4"
    FLAVORS = ["f32", "bf16"]


@pytest.mark.parametrize("m,block_m", [(2, 16), (45, 16), (300, 128)])
def test_work_items_cover_each_row_once_and_skip_empty_experts(m, block_m):
    """Every row in [0, M) is covered by exactly one item; each item's window starts inside its group and ends at
    its group's end or block_m rows later; a group has cdiv(size, block_m) items; experts with no rows have
    none; the list fits the static bound."""
    rng = np.random.default_rng(m)
    e = 6
    batch = np.stack([np.asarray(_sizes(rng, m, e, empty=trial % 2 == 0)) for trial in range(16)])
    lists = jax.jit(jax.vmap(lambda g: pallas_triton.work_items(g, m, block_m)))(jnp.asarray(batch))
    for sizes, grp, row0, hi in zip(batch, *(np.asarray(a) for a in lists)):
        assert len(grp) == pallas_triton.max_items(m, e, block_m)
        ends = np.cumsum(sizes)
        bounds = [(ends[g] - sizes[g], ends[g]) for g in range(e)] + [(ends[-1], m)]
        covered = np.zeros(m, int)
        for g, r0, b in zip(grp, row0, hi):
            if g > e:
                continue
            start, end = bounds[g]
            assert b == end and start <= r0 < end and (r0 - start) % block_m == 0
            covered[r0:min(r0 + block_m, end)] += 1
        np.testing.assert_array_equal(covered, 1)
        items = np.bincount(grp[grp <= e], minlength=e + 1)
        np.testing.assert_array_equal(items, [-(-(b - a) // block_m) for a, b in bounds])


def test_unselected_experts_are_never_read():
    """NaN weights (and NaN scales) in every expert no row was routed to: the kernel's output is finite and
    exact, so no program multiplied them (a dense masked product would give NaN * 0 = NaN)."""
    rng = np.random.default_rng(5)
    m, k, n = 2, 64, 32
    d = make_data(rng, "fp8", m, k, n, 8, per_channel=True)
    d["group_sizes"] = jnp.asarray([0, 1, 0, 0, 0, 1, 0, 0], jnp.int32)  # decode: one token, top-2
    unused = np.asarray([0, 2, 3, 4, 6, 7])
    w = np.array(d["w"].astype(jnp.float32))
    w[unused] = np.nan
    d["w"] = jnp.asarray(w).astype(E8)
    ws = np.asarray(d["w_scale"]).copy()
    ws[unused] = np.nan
    d["w_scale"] = jnp.asarray(ws)
    got = pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"],
                                          x_scale=_x_scale(d), scheme="fp8", out_dtype=jnp.float32,
                                          config=C(block_m=16, block_n=16, block_k=32))
    d["w64"] = np.nan_to_num(d["w64"])  # the reference only touches experts 1 and 5
    check_f64(got, d)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_on_bf16_mmas_equals_the_reference(monkeypatch, per_channel):
    """``Config(mma="bf16")`` (x as bf16, FP8 weight tiles upcast, bf16 MMAs; weight-major, and x-major with a K
    split): exact data give the XLA reference and float64 bit for bit before the scales. ``FP8_PREFILL_MMA``
    picks it above the small buckets only."""
    rng = np.random.default_rng(11)
    d = make_data(rng, "fp8", 45, 128, 32, 4, per_channel=per_channel, per_token=per_channel)
    for cfg in (C(block_m=16, block_n=16, block_k=32, mma="bf16"),
                C(block_m=16, block_n=16, block_k=32, w_major=False, split_k=2, mma="bf16")):
        got = pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"],
                                              x_scale=_x_scale(d), scheme="fp8", out_dtype=jnp.float32, config=cfg)
        check_f64(got, d)
    from quark_jax.kernels import triton_fp8_dot

    want = "wgmma_acc" if triton_fp8_dot.TRITON_RULE else "native"  # the default, measured fastest on the H200
    assert pallas_triton.FP8_PREFILL_MMA == "wgmma_acc_n256"
    assert pallas_triton.default_config(4096, 4096, 28672, scheme="fp8", e=8).mma == want
    monkeypatch.setattr(pallas_triton, "FP8_PREFILL_MMA", "native")
    assert pallas_triton.default_config(4096, 4096, 28672, scheme="fp8", e=8).mma == "native"
    monkeypatch.setattr(pallas_triton, "FP8_PREFILL_MMA", "bf16")
    pre = pallas_triton.default_config(4096, 4096, 28672, scheme="fp8", e=8)
    assert (pre.mma, pre.w_major, pre.block_m, pre.block_n, pre.block_k) == ("bf16", True, 128, 128, 64)
    assert pallas_triton.default_config(64, 4096, 28672, scheme="fp8", e=8).mma == "native"  # decode / small
    assert pallas_triton.default_config(4096, 4096, 28672, scheme="bf16", e=8).mma == "native"
    with pytest.raises(ValueError, match="Config.mma: expected one of"):
        C(mma="fp16")


def test_fp8_wgmma_variant_matches_the_reference():
    """``Config(mma="wgmma")`` (``kernels.triton_fp8_dot``: FP8 wgmma with an f32 promotion every 32 K elements):
    bit for bit off the GPU (the primitive is ``dot_general`` there); on the GPU within the FP8 wgmma's own
    accumulation of 32 exact products (exact for these grids in practice; the bound allows 2**-12)."""
    rng = np.random.default_rng(12)
    d = make_data(rng, "fp8", 45, 128, 32, 4, per_channel=True, per_token=True)
    for cfg in (C(block_m=16, block_n=16, block_k=32, w_major=False, mma="wgmma"),
                C(block_m=16, block_n=16, block_k=32, split_k=2, mma="wgmma")):
        got = pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"],
                                              x_scale=_x_scale(d), scheme="fp8", out_dtype=jnp.float32, config=cfg)
        if jax.default_backend() == "gpu":
            want = want64(d)
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=2.0 ** -12 * np.abs(want).max())
        else:
            check_f64(got, d)
    from quark_jax.kernels.triton_fp8_dot import fp8_dot

    with pytest.raises(ValueError, match="at least 32 K elements"):
        fp8_dot(d["x"][:, :32], d["x"][:, :32], promote=16)


def _triton_ir(scheme, cfg, args):
    """The Triton IR text that the CUDA lowering of the grouped kernel (``scheme``, ``cfg``, operands ``args``)
    embeds (``base.triton_ir``)."""
    from functools import partial

    f = partial(pallas_triton._grouped_jit, scheme=scheme, out_dtype=jnp.dtype(jnp.bfloat16), cfg=cfg,
                interpret=False)
    [text] = triton_ir(f, *args)
    return text


def _triton_dots(cfg, m, k, n, e):
    """The ``tt.dot`` lines of the grouped FP8 kernel's Triton IR."""
    args = [jax.ShapeDtypeStruct((m, k), E8), jax.ShapeDtypeStruct((e, n, k), E8),
            jax.ShapeDtypeStruct((e,), jnp.int32), jax.ShapeDtypeStruct((e, n), jnp.float32),
            jax.ShapeDtypeStruct((m, 1), jnp.float32)]
    return [ln.strip() for ln in _triton_ir("fp8", cfg, args).splitlines() if "tt.dot " in ln]


@pytest.mark.parametrize("name", sorted(pallas_triton.CANDIDATES))
def test_fp8_prefill_candidates_match_the_reference(name):
    """Each FP8 prefill candidate (``CANDIDATES``: FP8 wgmma, promotion once per 128-K step or into the
    accumulator itself, 128x256 tiles as column slices) on ragged groups (an empty expert, rows past the groups,
    a partial last window), per-channel and per-token scales: off the GPU bit for bit (float64 before the two
    scale multiplies); on the GPU (compiled) "wgmma" within 2**-12 of the largest output (sums of 128 exact
    products inside the wgmma, exact in practice for these grids) and "wgmma_acc" within 2**-9 (the whole K sum in
    the FP8 wgmma accumulator, whose precision Hopper does not document: the bound is the bf16 output's)."""
    rng = np.random.default_rng(21)
    d = make_data(rng, "fp8", 45, 256, 512, 4, per_channel=True, per_token=True)
    cfg = pallas_triton.CANDIDATES[name]
    fitted = pallas_triton.fit(cfg, 45, 256, 512, scheme="fp8", e=4)
    assert (fitted.block_n, fitted.subtiles, fitted.block_k) == (cfg.block_n, cfg.subtiles, 128)  # the slices run
    got = pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"],
                                          x_scale=_x_scale(d), scheme="fp8", out_dtype=jnp.float32, config=cfg)
    if jax.default_backend() == "gpu":
        want = want64(d)
        bound = 2.0 ** (-12 if cfg.mma == "wgmma" else -9) * np.abs(want).max()
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=bound)
        assert (np.asarray(got)[int(np.asarray(d["group_sizes"]).sum()):] == 0).all()
    else:
        check_f64(got, d)


def test_column_slices_and_accumulating_wgmma_with_a_k_split():
    """``Config(subtiles=2)`` with ``mma="wgmma_acc"`` and a K split (f32 partial sums reduced by XLA), and the
    slices on bf16 experts: bit for bit against float64 on exact data (interpret mode off the GPU)."""
    rng = np.random.default_rng(22)
    d = make_data(rng, "fp8", 37, 128, 64, 3, per_channel=True, per_token=True)
    for cfg in (C(block_m=16, block_n=64, block_k=32, w_major=False, split_k=2, subtiles=2, mma="wgmma_acc"),
                C(block_m=16, block_n=64, block_k=32, w_major=False, subtiles=4, mma="wgmma", promote=64)):
        got = pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"],
                                              x_scale=_x_scale(d), scheme="fp8", out_dtype=jnp.float32, config=cfg)
        check_f64(got, d)
    b = make_data(rng, "bf16", 37, 64, 64, 3)
    got = pallas_triton.grouped_mm_pallas(b["x"], b["w"], b["group_sizes"], out_dtype=jnp.float32,
                                          config=C(block_m=16, block_n=64, block_k=32, w_major=False, subtiles=2))
    check_f64(got, b)


@pytest.mark.parametrize("name", sorted(pallas_triton.CANDIDATES))
def test_fp8_prefill_candidates_lower_to_fp8_wgmma_dots(name):
    """The CUDA lowering of each candidate at Mixtral's gate_up prefill (4096 routed rows, K 4096, N 28672, 8
    experts) builds, with one FP8 ``tt.dot`` per column slice carrying ``maxNumImpreciseAcc`` (Triton's FP8 wgmma
    condition): ``promote`` for "wgmma" (a product from zero, added after), 2**30 and the loop-carried
    accumulator as the C operand for "wgmma_acc"."""
    from quark_jax.kernels.triton_fp8_dot import NEVER

    cfg = pallas_triton.fit(pallas_triton.CANDIDATES[name], 4096, 4096, 28672, scheme="fp8", e=8)
    dots = _triton_dots(cfg, 4096, 4096, 28672, 8)
    sub = cfg.block_n // cfg.subtiles
    assert len(dots) == cfg.subtiles, dots
    for ln in dots:
        assert f"tensor<128x128xf8E4M3FN> * tensor<128x{sub}xf8E4M3FN> -> tensor<128x{sub}xf32>" in ln, ln
        if cfg.mma == "wgmma":
            assert f"maxNumImpreciseAcc = {cfg.promote} : i32" in ln, ln
        else:
            assert f"maxNumImpreciseAcc = {NEVER} : i32" in ln and ln.split(",")[2].strip().startswith("%arg"), ln
    native = _triton_dots(pallas_triton.fit(pallas_triton.DEFAULTS["fp8"]["max"], 4096, 4096, 28672,
                                            scheme="fp8", e=8), 4096, 4096, 28672, 8)
    assert len(native) == 1 and "maxNumImpreciseAcc" not in native[0]  # Pallas' own FP8 dot: no wgmma


def test_fp8_prefill_knob_selects_the_candidates(monkeypatch):
    """``FP8_PREFILL_MMA`` takes "native" or a key of ``FP8_PREFILL`` (bf16, wgmma, the candidates), above 64 routed
    rows only; an unknown name is an error naming the choices; ``Config`` validates the new fields."""
    assert pallas_triton.FP8_PREFILL_CHOICES[:3] == ("native", "bf16", "wgmma")
    assert set(pallas_triton.CANDIDATES) <= set(pallas_triton.FP8_PREFILL_CHOICES)
    monkeypatch.setattr(pallas_triton, "FP8_PREFILL_MMA", "wgmma_n256_sub2")
    cfg = pallas_triton.default_config(4096, 4096, 28672, scheme="fp8", e=8)
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.subtiles, cfg.mma, cfg.promote, cfg.num_warps,
            cfg.num_stages, cfg.w_major) == (128, 256, 128, 2, "wgmma", 128, 8, 3, False)
    assert pallas_triton.default_config(64, 4096, 28672, scheme="fp8", e=8).mma == "native"  # decode / small
    assert pallas_triton.default_config(4096, 4096, 28672, scheme="bf16", e=8).subtiles == 1
    from quark_jax.kernels import triton_fp8_dot

    monkeypatch.setattr(triton_fp8_dot, "TRITON_RULE", False)  # no lowering hook in this jax: the native tiles
    assert pallas_triton.default_config(4096, 4096, 28672, scheme="fp8", e=8).mma == "native"
    monkeypatch.setattr(pallas_triton, "FP8_PREFILL_MMA", "wgmma_n512")
    with pytest.raises(ValueError, match="FP8_PREFILL_MMA: expected one of"):
        pallas_triton.default_config(4096, 4096, 28672, scheme="fp8", e=8)
    with pytest.raises(ValueError, match="x-major"):
        C(subtiles=2, w_major=True)
    with pytest.raises(ValueError, match="subtiles: expected a power of two"):
        C(subtiles=3, w_major=False)
    with pytest.raises(ValueError, match="at least 32 K elements"):
        C(mma="wgmma", promote=16)
    assert pallas_triton.fit(C(block_n=256, subtiles=4, w_major=False), m=8, k=64, n=32, scheme="fp8").subtiles == 2
    assert pallas_triton.fit(C(block_n=64, subtiles=2, w_major=False), m=8, k=64, n=64, scheme="mxfp4").subtiles == 1


def test_config_fit_and_errors():
    cfg = pallas_triton.fit(C(block_m=128, block_n=128, block_k=256, split_k=4), m=3, k=96, n=48, scheme="fp8")
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.split_k) == (16, 16, 32, 1)
    # decode at the Mixtral shapes: the down projection (N = 4096) splits K to reach the MXFP4 decode's 512
    # programs (2 items x 64 tiles x 4), gate/up (2 x 224 tiles) only to 2
    down = pallas_triton.default_config(2, 14336, 4096, scheme="mxfp4", e=8)
    up = pallas_triton.default_config(2, 4096, 14336, scheme="mxfp4", e=8)
    assert (down.block_m, down.block_n, down.split_k) == (16, 64, 4) and up.split_k == 2
    pre = pallas_triton.default_config(4096, 4096, 14336, scheme="bf16", e=8)
    assert (pre.block_m, pre.block_n, pre.block_k, pre.split_k, pre.w_major) == (128, 128, 64, 1, False)
    with pytest.raises(ValueError, match="N = 40 must be a multiple of 16"):
        pallas_triton.fit(C(), m=1, k=64, n=40, scheme="bf16")
    with pytest.raises(ValueError, match="block_k >= 32"):
        C(block_k=16)
    with pytest.raises(ValueError, match="split_k: expected a power of two"):
        C(split_k=3)
    with pytest.raises(ValueError, match="decode: expected one of"):
        C(decode="lut")
    with pytest.raises(TypeError):
        C(16, 64, 256)  # keyword-only


def test_auto_falls_back_to_xla_where_the_kernel_cannot_run(monkeypatch):
    """On a pretend H200: N not a multiple of 16 runs XLA under auto; forcing pallas names the problem."""
    from quark_jax.kernels import tuning

    monkeypatch.setattr(tuning, "current_device", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setenv("QUARK_JAX_TUNING_DIR", "/nonexistent")
    assert tuning.choose_impl("grouped_mm_bf16", 2, 64, 40, device_kind="NVIDIA H200",
                              compute_capability="9.0") == "pallas"
    d = make_data(np.random.default_rng(6), "bf16", 3, 64, 40, 2)
    np.testing.assert_array_equal(np.asarray(call(d, "auto")), np.asarray(call(d, "xla")))
    with pytest.raises(ValueError, match="w: N = 40 must be a multiple of 16"):
        call(d, "pallas")


# (K, N, E, top-k) of the expert projections of the model shapes benchmarks/bench_moe.py runs
MODEL_SHAPES = {"mixtral_gate_up": (4096, 28672, 8, 2), "mixtral_down": (14336, 4096, 8, 2),
                "qwen3_30b_a3b_gate_up": (2048, 1536, 128, 8), "qwen3_30b_a3b_down": (768, 2048, 128, 8)}


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiles the Pallas-Triton kernels for a CUDA GPU")
@pytest.mark.parametrize("scheme,fp8_mma", [("bf16", "native"), ("fp8", "native"), ("fp8", "bf16"),
                                             ("fp8", "wgmma"), ("mxfp4", "native")]
                         + [("fp8", name) for name in sorted(pallas_triton.CANDIDATES)])
def test_default_configs_compile_at_the_model_shapes(monkeypatch, scheme, fp8_mma):
    """The configs ``default_config`` picks at decode (1 token) for the Mixtral-8x7B and Qwen3-30B-A3B expert
    projections and at prefill (2048 tokens) for Mixtral's compile (lowered and compiled, not run: no weights are allocated). Decode
    includes the K-split MXFP4 configs that failed to compile on the H200 (1-byte aligned packed-weight copy);
    FP8 also with ``FP8_PREFILL_MMA = "bf16"``, ``"wgmma"`` and each of ``CANDIDATES``."""
    from functools import partial

    monkeypatch.setattr(pallas_triton, "FP8_PREFILL_MMA", fp8_mma)
    seen = set()
    for name, (k, n, e, top) in MODEL_SHAPES.items():
        for tokens in (1, 2048) if name.startswith("mixtral") else (1,):  # Qwen3's prefill: Mixtral's tiles
            m = tokens * top
            cfg = pallas_triton.default_config(m, k, n, scheme=scheme, e=e)
            if (k, n, e, cfg) in seen or (fp8_mma != "native" and m <= 64):  # FP8 variants: prefill configs only
                continue
            seen.add((k, n, e, cfg))
            x_dtype = E8 if scheme == "fp8" else jnp.bfloat16
            w = ((e, n, k // 2), jnp.uint8) if scheme == "mxfp4" else ((e, n, k), x_dtype)
            ws = {"fp8": ((e,), jnp.float32), "mxfp4": ((e, n, k // 32), jnp.uint8)}.get(scheme)
            args = [jax.ShapeDtypeStruct((m, k), x_dtype), jax.ShapeDtypeStruct(*w),
                    jax.ShapeDtypeStruct((e,), jnp.int32), ws and jax.ShapeDtypeStruct(*ws),
                    jax.ShapeDtypeStruct((), jnp.float32) if scheme == "fp8" else None]
            f = partial(pallas_triton._grouped_jit, scheme=scheme, out_dtype=jnp.dtype(jnp.bfloat16), cfg=cfg,
                        interpret=False)
            jax.jit(f).lower(*args).compile()
    assert len(seen) >= (2 if fp8_mma != "native" else 4)


@pytest.mark.parametrize("name", sorted(pallas_triton.MXFP4_DECODE))
def test_mxfp4_decode_candidates_match_the_reference(name):
    """Each MXFP4 decode candidate (``MXFP4_DECODE``) at decode sizes (M = 5 routed rows: ragged groups, an empty
    expert, rows past the groups) equals the XLA reference and float64 bit for bit: all 16 E2M1 codes, E8M0 bytes
    0 (2**-127), 1 and 250 (2**123; 6 * 2**127 would overflow bf16) besides the exact grid's 125..128. Bytes 0 and
    250 meet zero x (a wrong decode to inf / NaN shows); byte 1's products (~2**-130) vanish below the sums' ulp in
    f32 and float64 alike, so they check only that nothing non-finite comes out. The tiling is the candidate's own (fitted to K 1024, N
    256: block_n kept, the K steps and the split as at the model shapes)."""
    rng = np.random.default_rng(29)
    d = make_data(rng, "mxfp4", 5, 1024, 256, 4)
    # the E8M0 range: products and sums stay exact in f32 when every nonzero x pairs with a moderate scale, so
    # the extreme bytes (0 = 2**-127, 250 = 2**123) go to K blocks where x is zero, moderate ones elsewhere
    s = np.asarray(d["w_scale"]).copy()
    x = np.asarray(d["x"].astype(jnp.float32)).copy()
    s[:, :, 0], s[0, :, 1], s[1:, :, 1], s[:, :, 2] = 0, 250, 128, 1  # "asm_fold": expert 0 plain, the rest folded
    x[:, :64] = 0
    d["w_scale"], d["x"] = jnp.asarray(s), jnp.asarray(x, jnp.bfloat16)
    d["w64"] = ref.mxfp4_dequantize(np.asarray(d["w"]), s)
    assert set(np.unique(np.asarray(d["w"]) & 15)) == set(range(16))
    cfg = pallas_triton.MXFP4_DECODE[name]
    fitted = pallas_triton.fit(cfg, 5, 1024, 256, scheme="mxfp4", e=4)
    assert (fitted.block_n, fitted.block_k, fitted.num_warps, fitted.num_stages) == (
        cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages)
    got = pallas_triton.grouped_mm_pallas(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"], scheme="mxfp4",
                                          out_dtype=jnp.float32, config=cfg)
    want = grouped_mm_xla(d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"], scheme="mxfp4",
                          out_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    check_f64(got, d)


def test_mxfp4_decode_knob_selects_the_candidates(monkeypatch):
    """``MXFP4_DECODE_CFG`` replaces the MXFP4 decode bucket's config (M <= 16 routed rows) only; the K split to
    ``MIN_PROGRAMS`` still applies; an unknown name is an error naming the choices."""
    assert pallas_triton.MXFP4_DECODE_CFG == "default"
    assert pallas_triton.MXFP4_DECODE["default"] == pallas_triton.DEFAULTS["mxfp4"]["16"]
    base = pallas_triton.default_config(2, 4096, 28672, scheme="mxfp4", e=8)
    assert (base.block_n, base.block_k, base.split_k) == (64, 256, 1)  # = "k256_p512", the measured best
    assert pallas_triton.default_config(2, 14336, 4096, scheme="mxfp4", e=8).split_k == 4  # 512 programs
    monkeypatch.setattr(pallas_triton, "MXFP4_DECODE_CFG", "k512")  # the earlier default: split to MIN_PROGRAMS
    old = pallas_triton.default_config(2, 14336, 4096, scheme="mxfp4", e=8)
    assert (old.block_k, old.split_k) == (512, 2)
    monkeypatch.setattr(pallas_triton, "MXFP4_DECODE_CFG", "w8_n128_k256")
    cfg = pallas_triton.default_config(2, 4096, 28672, scheme="mxfp4", e=8)
    assert (cfg.block_n, cfg.block_k, cfg.num_warps, cfg.split_k) == (128, 256, 8, 1) != (
        base.block_n, base.block_k, base.num_warps, base.split_k)
    down = pallas_triton.default_config(2, 14336, 4096, scheme="mxfp4", e=8)  # 2 items x 32 tiles: split to 256
    assert (down.block_n, down.split_k) == (128, 4)
    assert pallas_triton.default_config(64, 4096, 28672, scheme="mxfp4", e=8) == pallas_triton.default_config(
        64, 4096, 28672, scheme="mxfp4", e=8)  # the "64" bucket: untouched
    assert pallas_triton.default_config(64, 4096, 28672, scheme="mxfp4", e=8).block_m == 32
    assert pallas_triton.default_config(2, 4096, 28672, scheme="fp8", e=8).num_warps == 4  # other schemes
    monkeypatch.setattr(pallas_triton, "MXFP4_DECODE_CFG", "n256")
    with pytest.raises(ValueError, match="MXFP4_DECODE_CFG: expected one of"):
        pallas_triton.default_config(2, 4096, 28672, scheme="mxfp4", e=8)
    monkeypatch.setattr(pallas_triton, "MXFP4_DECODE_CFG", "k256_p512")  # its own program target: split 4
    assert pallas_triton.default_config(2, 14336, 4096, scheme="mxfp4", e=8).split_k == 4
    assert pallas_triton.default_config(2, 4096, 28672, scheme="mxfp4", e=8).split_k == 1  # 896 programs


@pytest.mark.parametrize("m,e,sizes", [
    (1, 8, [0, 0, 0, 1, 0, 0, 0, 0]),  # one token, one row
    (2, 8, [0, 1, 0, 0, 0, 0, 1, 0]),  # one token, top-2 (Mixtral decode)
    (2, 8, [0, 0, 0, 0, 0, 0, 0, 1]),  # a row past the groups, the last expert
    (5, 2, [0, 0]),  # every row past the groups
    (7, 4, [3, 0, 0, 4]),  # the first and last experts, nothing past
    (16, 8, [2, 0, 5, 1, 0, 3, 0, 2]),  # a full window, rows past the sum
])
def test_fused_decode_items_equal_the_work_list(monkeypatch, m, e, sizes):
    """The fused decode path (each program finds its group from the group sizes) equals the
    XLA work-list path bit for bit and float64 (MXFP4 experts, bf16 x, 2 experts read per item at most once);
    items past the non-empty groups are idle, rows past the sum are zeros."""
    rng = np.random.default_rng(m * 7 + e)
    d = make_data(rng, "mxfp4", m, 256, 32, e)
    d["group_sizes"] = jnp.asarray(sizes, jnp.int32)
    assert pallas_triton.fused_decode("mxfp4", m, e, 16)
    cfg = C(block_m=16, block_n=16, block_k=64, split_k=2)
    run = functools.partial(pallas_triton.grouped_mm_pallas, d["x"], d["w"], d["group_sizes"], w_scale=d["w_scale"],
                            scheme="mxfp4", out_dtype=jnp.float32, config=cfg)
    got = run()
    monkeypatch.setattr(pallas_triton, "FUSED_DECODE", False)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(run()))
    check_f64(got, d)


def test_fused_decode_path_conditions_and_lowering():
    """Fused at M <= block_m with E a power of two (MXFP4); its CUDA lowering at Mixtral's decode is one
    Triton kernel and, without a K split, no XLA reduction or gather (the work list is gone); with the split
    (down projection) one reduction, the partial sum."""
    from functools import partial

    f = pallas_triton.fused_decode
    assert f("mxfp4", 16, 8, 16) and f("mxfp4", 32, 128, 32) and not f("mxfp4", 17, 8, 16)
    assert not f("mxfp4", 2, 6, 16) and not f("bf16", 2, 8, 16) and not f("mxfp4", 2, 512, 16)
    for k, n, reduces in ((4096, 28672, 0), (14336, 4096, 1)):
        cfg = pallas_triton.default_config(2, k, n, scheme="mxfp4", e=8)
        assert (cfg.split_k > 1) == bool(reduces)
        args = [jax.ShapeDtypeStruct((2, k), jnp.bfloat16), jax.ShapeDtypeStruct((8, n, k // 2), jnp.uint8),
                jax.ShapeDtypeStruct((8,), jnp.int32), jax.ShapeDtypeStruct((8, n, k // 32), jnp.uint8), None]
        fn = partial(pallas_triton._grouped_jit, scheme="mxfp4", out_dtype=jnp.dtype(jnp.bfloat16), cfg=cfg,
                     interpret=False)
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("stablehlo.custom_call") == 1 and "_fused" in text
        assert text.count("stablehlo.reduce") == reduces and "stablehlo.gather" not in text


def test_checked_fold_lowers_to_a_folded_and_a_plain_loop():
    """``decode="asm_fold"`` (candidate ``k256_p512_fold``) lowers for CUDA to one kernel with both K loops: four
    bf16 dots and four inline-asm decodes (two per loop) where ``k256_p512`` has two and two, and one masked load
    of the strip's scale bytes before them (the whole K range: no per-step check)."""
    k, n = 14336, 4096
    args = [jax.ShapeDtypeStruct((2, k), jnp.bfloat16), jax.ShapeDtypeStruct((8, n, k // 2), jnp.uint8),
            jax.ShapeDtypeStruct((8,), jnp.int32), jax.ShapeDtypeStruct((8, n, k // 32), jnp.uint8), None]
    counts = {}
    for name in ("k256_p512", "k256_p512_fold"):
        cfg = pallas_triton.fit(pallas_triton.MXFP4_DECODE[name], 2, k, n, scheme="mxfp4", e=8,
                                target_programs=pallas_triton.MXFP4_DECODE_PROGRAMS[name])
        assert cfg.split_k == 4
        text = _triton_ir("mxfp4", cfg, args)
        counts[name] = (text.count("tt.dot "), text.count("elementwise_inline_asm"), text.count("scf.for"),
                        text.count("tensor<64x128xi8>"))
    assert counts["k256_p512"][:3] == (2, 2, 1)
    assert counts["k256_p512_fold"][:3] == (4, 4, 2)
    assert counts["k256_p512_fold"][3] > counts["k256_p512"][3]  # the [64, 128] scale-byte load (K 3584 / 32)
