"""Number formats used by Quark checkpoints (SPEC section 1).

Everything here is a constant or a small pure function; no function here quantizes (see
:mod:`quark_jax.quant`). The dtypes are ml_dtypes types exposed through ``jax.numpy``.

* FP8 ``float8_e4m3fn`` (OCP, NVIDIA): finite max 448, no infinities, one NaN pattern.
* FP8 ``float8_e4m3fnuz`` (AMD MI300): finite max 240; vLLM clamps to 224 on that platform, and so do we.
* INT8: two's complement [-128, 127], round half to even, saturating.
* MXFP4 (OCP MX): blocks of 32 elements along K, each element an E2M1 code (4 bits, sign in bit 3), each block one
  E8M0 scale byte ``s`` whose value is ``2**(s - 127)``, ``s`` in 0..254 (255 is NaN).
* Packing: byte ``j`` of a packed row holds element ``2j`` in the low nibble and ``2j + 1`` in the high nibble.
* OCP MX element formats (issue 19): ``fp4`` (E2M1), ``fp6_e2m3`` (max 7.5), ``fp6_e3m2`` (max 28), ``fp8_e4m3``
  (max 448); each with E8M0 block scales, block 32 (:data:`MX_ELEMENTS`). An FP6 code is 6 bits (sign in bit 5,
  then exponent and mantissa, subnormals, no inf/NaN); four codes ``v0..v3`` are packed into three bytes as the
  little-endian 24-bit word ``v0 | v1 << 6 | v2 << 12 | v3 << 18`` (Quark's ``Pack_fp6``, which vLLM's
  ``QuarkOCP_MX`` unpacks).
* INT4 / UINT4 (Quark's ``Pack_4_bits``): eight 4-bit values a little-endian int32; pack order ``"order"``: nibble
  ``i`` holds element ``i``; ``"reorder"``: nibbles 0..7 hold elements 0, 2, 4, 6, 1, 3, 5, 7.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

__all__ = [
    "FP8_E4M3FN",
    "FP8_E4M3FNUZ",
    "FP8_E4M3FN_MAX",
    "FP8_E4M3FNUZ_MAX",
    "FP8_E4M3FNUZ_VLLM_MAX",
    "FP8_MIN_SCALE_FACTOR",
    "INT8_MIN",
    "INT8_MAX",
    "E2M1_MAX",
    "E2M1_VALUES",
    "E8M0_BIAS",
    "E8M0_MAX_BYTE",
    "MX_BLOCK_SIZE",
    "fp8_max",
    "is_fp8_dtype",
    "e2m1_values_np",
    "e8m0_to_float32",
    "pack_nibbles",
    "unpack_nibbles",
    "MXElement",
    "MX_ELEMENTS",
    "mx_element",
    "mx_element_values_np",
    "pack_fp6",
    "unpack_fp6",
    "INT4_PACK_ORDERS",
    "pack_int4",
    "unpack_int4",
]

FP8_E4M3FN = jnp.float8_e4m3fn
FP8_E4M3FNUZ = jnp.float8_e4m3fnuz

FP8_E4M3FN_MAX = 448.0
"""Largest finite float8_e4m3fn value."""
FP8_E4M3FNUZ_MAX = 240.0
"""Largest finite float8_e4m3fnuz value (the format's limit)."""
FP8_E4M3FNUZ_VLLM_MAX = 224.0
"""The clamp vLLM uses for e4m3fnuz (ROCm); our quantizers use it too so that fnuz results match vLLM."""

FP8_MIN_SCALE_FACTOR = 512.0
"""Dynamic FP8 scales are at least ``1 / (fp8_max * 512)`` (vLLM), so all-zero rows never divide by zero."""

INT8_MIN = -128
INT8_MAX = 127

E2M1_MAX = 6.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
"""Value of each 4-bit E2M1 code 0..15 (bit 3 is the sign, so code 8 is -0)."""

E8M0_BIAS = 127
E8M0_MAX_BYTE = 254
"""Largest finite E8M0 scale byte (255 encodes NaN)."""

MX_BLOCK_SIZE = 32
"""Elements per MX block along the contraction (last) axis."""


def fp8_max(dtype) -> float:
    """The saturation bound our FP8 quantizers clamp to for ``dtype`` (448 for e4m3fn, 224 for e4m3fnuz).

    >>> fp8_max(jnp.float8_e4m3fn)
    448.0
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.dtype(FP8_E4M3FN):
        return FP8_E4M3FN_MAX
    if dtype == jnp.dtype(FP8_E4M3FNUZ):
        return FP8_E4M3FNUZ_VLLM_MAX
    raise TypeError(f"dtype: expected float8_e4m3fn or float8_e4m3fnuz, got {dtype}")


def is_fp8_dtype(dtype) -> bool:
    """True for the two FP8 e4m3 dtypes this library quantizes to."""
    return jnp.dtype(dtype) in (jnp.dtype(FP8_E4M3FN), jnp.dtype(FP8_E4M3FNUZ))


def e2m1_values_np() -> np.ndarray:
    """The 16 E2M1 code values as a float32 numpy array (index = code)."""
    return np.asarray(E2M1_VALUES, dtype=np.float32)


def e8m0_to_float32(scale_bytes):
    """Exact float32 value ``2**(s - 127)`` of E8M0 scale bytes (uint8, any shape); byte 0 gives 2**-127.

    Built from the bit pattern, not from ``exp2``, so it is exact on every backend (2**-127 is a float32
    subnormal and is produced as such).

    >>> e8m0_to_float32(jnp.array([127, 128, 120], jnp.uint8)).tolist()
    [1.0, 2.0, 0.0078125]
    """
    s = jnp.asarray(scale_bytes).astype(jnp.uint32)
    bits = jnp.where(s == 0, jnp.uint32(1 << 22), s << 23)
    return jnp.asarray(bits).view(jnp.float32)


def pack_nibbles(codes):
    """Pack 4-bit codes [..., K] (uint8, values 0..15, K even) into bytes [..., K/2]; element 2j -> low nibble.

    >>> pack_nibbles(jnp.array([1, 2, 7, 15], jnp.uint8)).tolist()
    [33, 247]
    """
    codes = jnp.asarray(codes).astype(jnp.uint8)
    if codes.shape[-1] % 2:
        raise ValueError(f"codes: the last axis must be even to pack two nibbles a byte, got shape {codes.shape}")
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] & 0xF) | ((pairs[..., 1] & 0xF) << 4)


def unpack_nibbles(packed):
    """Unpack bytes [..., K/2] (uint8) into 4-bit codes [..., K] (uint8); the low nibble comes first.

    >>> unpack_nibbles(jnp.array([0x21, 0xF7], jnp.uint8)).tolist()
    [1, 2, 7, 15]
    """
    packed = jnp.asarray(packed)
    if packed.dtype != jnp.uint8:
        raise TypeError(f"packed: expected uint8 bytes, got {packed.dtype}")
    lo = packed & 0xF
    hi = packed >> 4
    return jnp.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


# ------------------------------------------------------------------------------------------------ OCP MX elements

@dataclass(frozen=True, kw_only=True)
class MXElement:
    """An OCP MX element format: a small float with subnormals, saturating, no inf/NaN (fp8_e4m3: never NaN
    after the saturating quantizers).

    >>> mx_element("fp6_e3m2").max, mx_element("fp6_e2m3").emin, mx_element("fp4").bits
    (28.0, 0, 4)
    """

    name: str  # Quark's dtype name: "fp4", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3"
    ebits: int  # exponent bits
    mbits: int  # mantissa bits
    emax: int  # exponent of the largest binade (Quark: 2 ** (ebits - 1)); the E8M0 scale is 2**(floor(log2 amax) - emax)
    max: float  # largest finite magnitude

    @property
    def bits(self) -> int:
        """Bits per element (sign included)."""
        return 1 + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        """Exponent bias."""
        return 2 ** (self.ebits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade (subnormals below it are spaced ``2**(emin - mbits)``)."""
        return 1 - self.bias


MX_ELEMENTS = {e.name: e for e in (
    MXElement(name="fp4", ebits=2, mbits=1, emax=2, max=6.0),
    MXElement(name="fp6_e2m3", ebits=2, mbits=3, emax=2, max=7.5),
    MXElement(name="fp6_e3m2", ebits=3, mbits=2, emax=4, max=28.0),
    MXElement(name="fp8_e4m3", ebits=4, mbits=3, emax=8, max=448.0),
)}
"""The OCP MX element formats by Quark dtype name."""


def mx_element(name: str) -> MXElement:
    """The :class:`MXElement` named ``name`` (a ValueError listing the known ones otherwise)."""
    if name not in MX_ELEMENTS:
        raise ValueError(f"MX element dtype: expected one of {sorted(MX_ELEMENTS)}, got {name!r}")
    return MX_ELEMENTS[name]


def mx_element_values_np(name: str) -> np.ndarray:
    """Value of every code of a 4- or 6-bit MX element format (float32, index = code; the top bit is the sign).

    >>> mx_element_values_np("fp6_e2m3")[[1, 8, 31, 63]].tolist()
    [0.125, 1.0, 7.5, -7.5]
    """
    e = mx_element(name)
    if e.bits > 6:
        raise ValueError(f"{name}: a code table exists for the 4- and 6-bit formats only")
    codes = np.arange(2 ** e.bits)
    mag = codes & ((1 << (e.bits - 1)) - 1)
    field, mant = mag >> e.mbits, mag & ((1 << e.mbits) - 1)
    value = np.where(field == 0, mant * 2.0 ** (e.emin - e.mbits),
                     (1.0 + mant / 2.0 ** e.mbits) * 2.0 ** (field.astype(np.float64) - e.bias))
    return np.where(codes >> (e.bits - 1), -value, value).astype(np.float32)


def pack_fp6(codes):
    """Pack 6-bit codes [..., K] (uint8, K a multiple of 4) into bytes [..., 3K/4]: four codes a 24-bit
    little-endian word ``v0 | v1 << 6 | v2 << 12 | v3 << 18``.

    >>> pack_fp6(jnp.array([1, 2, 3, 63], jnp.uint8)).tolist()   # 0b111111_000011_000010_000001
    [129, 48, 252]
    """
    codes = jnp.asarray(codes).astype(jnp.uint32) & 0x3F
    if codes.shape[-1] % 4:
        raise ValueError(f"codes: the last axis must be a multiple of 4 to pack FP6, got shape {codes.shape}")
    c = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 4, 4)
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = jnp.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=-1).astype(jnp.uint8)
    return out.reshape(*codes.shape[:-1], codes.shape[-1] // 4 * 3)


def unpack_fp6(packed):
    """Unpack bytes [..., 3K/4] (uint8) into 6-bit codes [..., K] (uint8); the inverse of :func:`pack_fp6`.

    >>> unpack_fp6(jnp.array([129, 48, 252], jnp.uint8)).tolist()
    [1, 2, 3, 63]
    """
    packed = jnp.asarray(packed)
    if packed.dtype != jnp.uint8:
        raise TypeError(f"packed: expected uint8 bytes, got {packed.dtype}")
    if packed.shape[-1] % 3:
        raise ValueError(f"packed: the last axis must be a multiple of 3 (FP6: 4 codes in 3 bytes), "
                         f"got shape {tuple(packed.shape)}")
    b = packed.astype(jnp.uint32).reshape(*packed.shape[:-1], packed.shape[-1] // 3, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = jnp.stack([(word >> (6 * i)) & 0x3F for i in range(4)], axis=-1).astype(jnp.uint8)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] // 3 * 4)


# ------------------------------------------------------------------------------------------------------- INT4

INT4_PACK_ORDERS = {"order": (0, 1, 2, 3, 4, 5, 6, 7), "reorder": (0, 2, 4, 6, 1, 3, 5, 7)}
"""Quark's ``export.pack_method``: which element of a group of 8 each nibble (0 = bits 0-3) holds."""


def _int4_order(order: str):
    if order not in INT4_PACK_ORDERS:
        raise ValueError(f"order: expected one of {sorted(INT4_PACK_ORDERS)} (Quark's pack_method), got {order!r}")
    return INT4_PACK_ORDERS[order]


def pack_int4(values, order: str = "reorder"):
    """Pack 4-bit values [..., 8C] (int4 in -8..7 or uint4 in 0..15, any integer dtype) into int32 [..., C].

    >>> pack_int4(jnp.arange(8), "order").tolist(), hex(int(pack_int4(jnp.arange(8), "reorder")[0]) & 0xFFFFFFFF)
    ([1985229328], '0x75316420')
    """
    nib = _int4_order(order)
    v = jnp.asarray(values).astype(jnp.int32) & 0xF
    if v.shape[-1] % 8:
        raise ValueError(f"values: the last axis must be a multiple of 8 to pack INT4, got shape {v.shape}")
    g = v.reshape(*v.shape[:-1], v.shape[-1] // 8, 8).astype(jnp.uint32)
    word = g[..., nib[0]]
    for i in range(1, 8):
        word = word | (g[..., nib[i]] << (4 * i))
    return word.view(jnp.int32)


def unpack_int4(packed, order: str = "reorder", *, signed: bool):
    """Unpack int32 [..., C] into 4-bit values [..., 8C] as int8: -8..7 (``signed``, int4) or 0..15 (uint4).

    >>> unpack_int4(pack_int4(jnp.array([-8, -1, 0, 7, 1, 2, 3, 4]), "reorder"), "reorder", signed=True).tolist()
    [-8, -1, 0, 7, 1, 2, 3, 4]
    """
    nib = _int4_order(order)
    packed = jnp.asarray(packed)
    if packed.dtype not in (jnp.int32, jnp.uint32):
        raise TypeError(f"packed: expected int32 words (8 INT4 values each), got {packed.dtype}")
    w = packed.view(jnp.uint32) if packed.dtype == jnp.int32 else packed
    nibbles = [((w >> (4 * i)) & 0xF).astype(jnp.int32) for i in range(8)]
    elems = [None] * 8
    for i, e in enumerate(nib):
        elems[e] = nibbles[i]
    v = jnp.stack(elems, axis=-1)
    if signed:
        v = jnp.where(v >= 8, v - 16, v)
    return v.astype(jnp.int8).reshape(*packed.shape[:-1], packed.shape[-1] * 8)
