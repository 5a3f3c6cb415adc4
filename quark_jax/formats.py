"""Number formats used by Quark checkpoints (SPEC section 1).

Everything here is a constant or a small pure function; no function here quantizes (see
:mod:`quark_jax.quant`). The dtypes are ml_dtypes types exposed through ``jax.numpy``.

* FP8 ``float8_e4m3fn`` (OCP, NVIDIA): finite max 448, no infinities, one NaN pattern.
* FP8 ``float8_e4m3fnuz`` (AMD MI300): finite max 240; vLLM clamps to 224 on that platform, and so do we.
* INT8: two's complement [-128, 127], round half to even, saturating.
* MXFP4 (OCP MX): blocks of 32 elements along K, each element an E2M1 code (4 bits, sign in bit 3), each block one
  E8M0 scale byte ``s`` whose value is ``2**(s - 127)``, ``s`` in 0..254 (255 is NaN).
* Packing: byte ``j`` of a packed row holds element ``2j`` in the low nibble and ``2j + 1`` in the high nibble.
"""

from __future__ import annotations

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
