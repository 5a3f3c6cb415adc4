"""W4A16 INT4 / UINT4 group GEMM backends (``KernelContract``) against the XLA reference and float64 numpy (an
independent unpacking: nibble i of a word holds element ``order[i]`` of its group of 8 columns).

"Exact" data: x on a 1/4 grid, power-of-two group scales, every code and zero point: every product and f32 partial
sum is exact, so the kernel (scale applied per group to f32 partial sums) equals the reference (weight rounded to
x's dtype, then one dot) bit for bit. Random data checks the documented difference: within x's precision.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from kernels.base import KernelContract, Variant
from quark_jax import formats, kernels
from quark_jax.kernels.int4_mm import pallas_nk, pallas_triton
from quark_jax.kernels.int4_mm.xla import int4_mm_xla

C = pallas_triton.Config
NK = pallas_nk.Config
ORDERS = {"order": (0, 1, 2, 3, 4, 5, 6, 7), "reorder": (0, 2, 4, 6, 1, 3, 5, 7)}


def unpack_np(words, order, signed):
    """int32 [R, C] -> int64 [R, 8C], independently of quark_jax.formats."""
    w = np.asarray(words).astype(np.int64) & 0xFFFFFFFF
    out = np.zeros((w.shape[0], w.shape[1], 8), np.int64)
    for i, e in enumerate(ORDERS[order]):
        out[:, :, e] = (w >> (4 * i)) & 0xF
    if signed:
        out = np.where(out >= 8, out - 16, out)
    return out.reshape(w.shape[0], -1)


def f64_reference(d):
    q = unpack_np(d["w"], d["order"], d["signed"]).astype(np.float64)  # [K, N]
    gs = d["gs"]
    z = unpack_np(d["z"], d["order"], False).astype(np.float64) if d["z"] is not None else np.zeros((1, q.shape[1]))
    w = (q - np.repeat(z, gs, axis=0)[:q.shape[0]] if d["z"] is not None else q - z) * np.repeat(np.asarray(d["s"], np.float64), gs, axis=0)
    y = np.asarray(d["x"].astype(jnp.float32), np.float64) @ w
    return y + (np.asarray(d["bias"], np.float64) if d["bias"] is not None else 0.0)


def make(rng, m, k, n, flavor, *, exact=True, gs=16, dtype=jnp.bfloat16):
    signed = flavor.startswith("int4")
    order = "order" if "order" in flavor.split("-") else "reorder"
    gs = 32 if "g32" in flavor.split("-") else gs
    q = rng.integers(-8, 8, (k, n)) if signed else rng.integers(0, 16, (k, n))
    if exact:
        x = rng.integers(-16, 17, (m, k)) / 4
        s = 2.0 ** rng.integers(-4, 1, (k // gs, n))
    else:
        x = rng.standard_normal((m, k))
        s = rng.uniform(0.01, 0.05, (k // gs, n))
    z = None if signed else formats.pack_int4(jnp.asarray(rng.integers(0, 16, (k // gs, n))), order)
    bias = jnp.asarray(rng.integers(-8, 9, n) / 4, jnp.float32) if flavor.endswith("bias") else None
    return dict(x=jnp.asarray(x, jnp.float32).astype(dtype), w=formats.pack_int4(jnp.asarray(q), order),
                s=jnp.asarray(s, jnp.float32), z=z, bias=bias, gs=gs, order=order, signed=signed)


def run_nk(d, config=None, out_dtype=jnp.float32):
    opts = dict(group_size=d["gs"], order=d["order"], signed=d["signed"])
    w, z = pallas_nk.repack(d["w"], d["z"], **opts)
    w2, z2 = pallas_nk.unrepack(w, z, **opts)  # the load-time repack round-trips to the checkpoint layout
    np.testing.assert_array_equal(np.asarray(w2), np.asarray(d["w"]))
    if d["z"] is not None:
        np.testing.assert_array_equal(np.asarray(z2), np.asarray(d["z"]))
    return pallas_nk.int4_mm_nk_pallas(d["x"], w, d["s"], z, d["bias"], group_size=d["gs"], signed=d["signed"],
                                       out_dtype=out_dtype, config=config)


def run_xla(d, out_dtype=jnp.float32):
    return int4_mm_xla(d["x"], d["w"], d["s"], d["z"], d["bias"], group_size=d["gs"], order=d["order"],
                       signed=d["signed"], out_dtype=out_dtype)


class TestInt4Mm(KernelContract):
    OP = "int4_mm"
    # ragged M, several column tiles and groups, a K split; the f32 "sub" decode on one
    VARIANTS = [
        Variant(backend="pallas_triton", name="decode_split_k_wmajor", shape=(3, 64, 256), config=C(block_w=16, split_k=2, w_major=True)),
        Variant(backend="pallas_triton", name="ragged_rows_sub_decode", shape=(17, 32, 256),
                config=C(block_m=16, block_w=32, decode="sub")),
        # the PTX decode on a GPU (interpret mode runs "bits")
        Variant(backend="pallas_triton", name="asm_decode", shape=(5, 64, 256), config=C(block_w=32, decode="asm")),
        # the repacked-layout decode kernel (group 32): two groups a step, two steps (row-sum zero term); ragged M
        # with a K split, three column tiles, uint4 zero points subtracted from the decoded weight, the bias added
        # after the split
        Variant(backend="pallas_nk", name="two_groups_a_step", shape=(3, 128, 64), config=NK(block_k=64)),
        Variant(backend="pallas_nk", name="ragged_split_k_zero_in_weight", shape=(17, 128, 96),
                config=NK(block_n=32, split_k=2, zero_in_weight=True)),
        # session 9 candidates: the 4-byte PTX decode (GPU; interpret mode: the jnp decode) with ragged M, and the
        # CUDA-core "fma" form (one row a program: 3 rows, a K split, uint4 zero points; int4 with the bias)
        Variant(backend="pallas_nk", name="asm4_ragged", shape=(5, 128, 64),
                config=NK(block_n=32, zero_in_weight=True, decode="asm4")),
        Variant(backend="pallas_nk", name="fma_rows_split_k", shape=(3, 256, 96),
                config=NK(inner="fma", block_m=1, block_n=32, block_k=64, split_k=2, zero_in_weight=True,
                          decode="asm4")),
        Variant(backend="pallas_nk", name="fma_one_row", shape=(1, 128, 64),
                config=NK(inner="fma", block_m=1, block_n=16, zero_in_weight=True, decode="asm4")),
        # the register double buffer (next step's bytes loaded first): three steps a split, fma and mma
        Variant(backend="pallas_nk", name="prefetch_fma", shape=(1, 192, 32),
                config=NK(inner="fma", block_m=1, block_n=16, block_k=32, zero_in_weight=True, decode="asm4",
                          prefetch=True)),
        Variant(backend="pallas_nk", name="prefetch_mma_split", shape=(3, 384, 32),
                config=NK(block_n=16, block_k=64, split_k=2, zero_in_weight=True, decode="asm4", prefetch=True)),
    ]
    NK_FLAVORS = {"two_groups_a_step": "int4-reorder-g32-bias", "ragged_split_k_zero_in_weight": "uint4-reorder-g32-bias",
                  "asm4_ragged": "int4-order-g32-nobias", "fma_rows_split_k": "uint4-order-g32-nobias",
                  "fma_one_row": "int4-reorder-g32-bias", "prefetch_fma": "uint4-reorder-g32-bias",
                  "prefetch_mma_split": "int4-order-g32-bias"}
    FLAVORS = ["int4-reorder-bias", "uint4-order-nobias", "uint4-reorder-bias"]
    ENTRY_SHAPE = (2, 32, 128)
    PALLAS = (pallas_triton, "int4_mm_pallas")

    def flavors_for(self, variant):
        if variant.backend == "pallas_nk":
            return [self.NK_FLAVORS[variant.name]]
        return [self.FLAVORS[self.VARIANTS.index(variant) % len(self.FLAVORS)]]

    def data(self, rng, m, k, n, flavor):
        return make(rng, m, k, n, flavor)

    def run(self, variant, d, flavor):
        if variant.backend == "pallas_nk":
            return run_nk(d, variant.config)
        return pallas_triton.int4_mm_pallas(d["x"], d["w"], d["s"], d["z"], d["bias"], group_size=d["gs"],
                                            order=d["order"], signed=d["signed"], out_dtype=jnp.float32,
                                            config=variant.config)

    def check(self, got, d, flavor):
        assert got.shape == (d["x"].shape[0], d["w"].shape[1] * 8) and got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(run_xla(d)))
        np.testing.assert_array_equal(np.asarray(got, np.float64), f64_reference(d))

    def entry(self, d, impl):
        return kernels.int4_mm(d["x"], d["w"], d["s"], d["z"], d["bias"], group_size=d["gs"], order=d["order"],
                               signed=d["signed"], impl=impl)

    def entry_check(self, got, want, d):
        assert got.dtype == d["x"].dtype
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)))


@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 2**-7)])
def test_random_data_within_x_precision(dtype, tol):
    """Random x and scales: the kernel (never rounds the weight) and the reference (rounds it to x's dtype) are
    both within x's precision of float64."""
    d = make(np.random.default_rng(7), 5, 64, 128, "uint4-reorder-bias", exact=False, dtype=dtype)
    want = f64_reference(d)
    for got in (pallas_triton.int4_mm_pallas(d["x"], d["w"], d["s"], d["z"], d["bias"], group_size=16,
                                             order="reorder", signed=False), run_xla(d, dtype)):
        assert got.dtype == dtype
        err = np.abs(np.asarray(got.astype(jnp.float32), np.float64) - want).max() / np.abs(want).max()
        assert err < tol, err


def test_ptx_plane_model_equals_the_jnp_decode():
    """The numpy model of the PTX decode (prmt, shift, mask, OR on word pairs) gives decode_plane's bits."""
    words = np.asarray(formats.pack_int4(jnp.asarray(np.random.default_rng(1).integers(0, 16, (4, 128))),
                                         "reorder"))
    for dtype, magic in ((jnp.bfloat16, 0x4300), (jnp.float16, 0x6400)):
        for p in range(8):
            want = np.asarray(pallas_triton.decode_plane(jnp.asarray(words), p, dtype, subtract=False)).view(np.uint16)
            np.testing.assert_array_equal(pallas_triton.ptx_plane_emulated(words, p, magic), want)


def test_decode_plane_and_configs():
    words = formats.pack_int4(jnp.arange(8, dtype=jnp.int32)[None], "reorder")  # element e holds e
    got = [float(pallas_triton.decode_plane(words, p, jnp.float32, subtract=True)[0, 0]) for p in range(8)]
    assert got == [float(e) for e in ORDERS["reorder"]]
    assert float(pallas_triton.decode_plane(words, 7, jnp.bfloat16, subtract=False)[0, 0]) == 135.0
    assert float(pallas_triton.decode_plane(words, 7, jnp.float16, subtract=False)[0, 0]) == 1031.0
    cfg = pallas_triton.default_config(1, 4096, 14336, 128)  # enough programs for the SMs through a K split
    programs = 14336 // 8 // cfg.block_w * cfg.split_k
    assert programs >= pallas_triton.AUTO_SPLIT["decode"] and 32 % cfg.split_k == 0
    with pytest.raises(ValueError, match="block_w must be >= 16"):
        C(block_w=8)
    with pytest.raises(ValueError, match="decode"):
        C(decode="ptx")


def test_entry_errors_name_the_argument():
    d = make(np.random.default_rng(0), 1, 32, 128, "uint4-order-bias")
    with pytest.raises(ValueError, match=r"w_scales: expected shape \(2, 128\)"):
        kernels.int4_mm(d["x"], d["w"], d["s"][:1], group_size=16)
    with pytest.raises(ValueError, match="group_size: expected a positive divisor of K = 32"):
        kernels.int4_mm(d["x"], d["w"], d["s"], group_size=12)
    with pytest.raises(ValueError, match=r"w_zeros: expected shape \(2, 16\)"):
        kernels.int4_mm(d["x"], d["w"], d["s"], d["z"][:, :8], group_size=16)
    with pytest.raises(ValueError, match="order: expected one of"):
        kernels.int4_mm(d["x"], d["w"], d["s"], group_size=16, order="zigzag")


def test_nk_entry_xla_equals_the_checkpoint_layouts_and_checks_its_arguments():
    """``kernels.int4_mm_nk`` (impl="xla": the reference dequantizing the repacked layout) equals ``int4_mm`` on
    the checkpoint layout bit for bit on random data (the same f32 weight); bad shapes name the argument."""
    d = make(np.random.default_rng(4), 3, 64, 32, "uint4-reorder-g32-bias", exact=False)
    w, z = kernels.int4_repack(d["w"], d["z"], group_size=32, order="reorder", signed=False)
    got = kernels.int4_mm_nk(d["x"], w, d["s"], z, d["bias"], group_size=32, signed=False, impl="xla")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(run_xla(d, out_dtype=jnp.bfloat16)))
    with pytest.raises(ValueError, match=r"w_zeros: expected shape \(2, 32\)"):
        kernels.int4_mm_nk(d["x"], w, d["s"], z[:1], group_size=32, signed=False)
    with pytest.raises(ValueError, match="group_size: expected an even positive divisor of K = 64"):
        kernels.int4_mm_nk(d["x"], w, d["s"], group_size=24)
    with pytest.raises(ValueError, match=rf"w_nk: expected shape \({w.shape[0]}, 32\) for x with K = 64, got "
                                         rf"\({w.shape[0]}, 16\)"):
        kernels.int4_mm_nk(d["x"], w[:, :16], d["s"], group_size=32)


def test_nk_f32_x_and_the_ptx_model():
    """The repacked-layout kernel with f32 x (subtracting decode, f32 dot; Quark's "order" packing) equals the
    reference on exact data; the numpy model of its PTX byte-pair decode gives ``decode_nibbles``' bits (bf16 and
    f16 offsets)."""
    d = make(np.random.default_rng(3), 2, 64, 32, "uint4-order-g32-nobias", dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(run_nk(d)), np.asarray(run_xla(d)))
    b = np.random.default_rng(2).integers(0, 256, (4, 16)).astype(np.uint8)
    for dtype, magic in ((jnp.bfloat16, 0x4300), (jnp.float16, 0x6400)):
        planes = pallas_nk.decode_nibbles(jnp.asarray(b), dtype, asm=False, subtract=False)
        for high, plane in zip((False, True), planes):
            np.testing.assert_array_equal(pallas_nk.ptx_nibbles_emulated(b, high, magic),
                                          np.asarray(plane).view(np.uint16))


def test_ptx_nibbles4_model_and_candidate_configs():
    """The numpy model of the 4-byte PTX decode (shift, prmt, mask-OR, packed fma with -(offset + z)) gives
    ``q - z`` = the jnp decode minus the zero point, for every byte and zero point (bf16 and f16 offsets); every
    named candidate fits the 8B shapes; bad configs name the field."""
    b = np.arange(256, dtype=np.uint8).reshape(4, 64)
    z = np.random.default_rng(5).integers(0, 16, (4, 64))
    for dtype, offset in ((jnp.bfloat16, 128.0), (jnp.float16, 1024.0)):
        planes = pallas_nk.decode_nibbles(jnp.asarray(b), dtype, asm=False, subtract=True)  # u
        for high, plane in zip((False, True), planes):
            got = pallas_nk.ptx_nibbles4_emulated(b, -(offset + z), high, dtype)
            np.testing.assert_array_equal(got, np.asarray(plane, np.float64) - z)
            np.testing.assert_array_equal(got, ((b >> 4) if high else (b & 15)) - z)
    for name in pallas_nk.CANDIDATES:
        for k, n in ((4096, 14336), (14336, 4096), (4096, 4096), (8192, 8192)):
            c = pallas_nk.candidate(name, 1, k, n, 128)
            assert n % c.block_n == 0 and (k // c.split_k) % c.block_k == 0 and c.block_k % 128 == 0, (name, c)
            assert (c.block_m == 1) == (c.inner == "fma")
    assert pallas_nk.default_config(1, 4096, 14336, 128).inner == "fma"
    assert pallas_nk.default_config(16, 4096, 14336, 128).inner == "mma"
    with pytest.raises(ValueError, match="need zero_in_weight=True"):
        NK(inner="fma", block_m=1)
    with pytest.raises(ValueError, match="Config.decode"):
        NK(decode="asm8")
    with pytest.raises(ValueError, match="block_m and block_n must be >= 16"):
        NK(block_m=1, zero_in_weight=True)
