"""The "block pairs" layout of a packed MXFP4 weight, for the FP8 tensor-core kernel (``pallas_triton_fp8``).

The checkpoint layout packs element ``2j`` in the low nibble and ``2j + 1`` in the high nibble of byte ``j``, so a
nibble plane holds every other element of a 32-element MX block. The block-pairs layout keeps 4.25 bits per
parameter but pairs whole MX blocks instead: for each 64 elements (two MX blocks ``2g`` and ``2g + 1``) the 32 bytes
``32g .. 32g + 31`` hold element ``64g + j`` of block ``2g`` in the low nibble of byte ``32g + j`` and element
``64g + 32 + j`` of block ``2g + 1`` in its high nibble. One nibble plane of a 32-byte row chunk is then exactly one
MX block, in order, with one scale byte: the unit a K = 32 FP8 MMA followed by a per-block scaling consumes.
Scale bytes keep their layout ([N, K/32]). K must be a multiple of 64. Both directions are jitted pure functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PAIR = 64  # elements per block pair (two MX blocks)


def _check(name, packed):
    if packed.ndim < 1 or packed.dtype != jnp.uint8 or (2 * packed.shape[-1]) % PAIR:
        raise ValueError(f"{name}: expected uint8 [..., K/2] with K a multiple of {PAIR}, got "
                         f"{packed.dtype}{list(packed.shape)}")


@jax.jit
def to_block_pairs(packed):
    """Checkpoint-layout packed MXFP4 bytes [..., K/2] -> block-pairs layout (same shape, same bytes per row).

    >>> import jax.numpy as jnp
    >>> p = jnp.full(32, 0x21, jnp.uint8)  # elements 0..63: codes 1, 2, 1, 2, ...
    >>> [hex(b) for b in to_block_pairs(p)[:2].tolist()]  # byte j: element j (low), element 32 + j (high)
    ['0x11', '0x22']
    """
    _check("to_block_pairs", packed)
    lead, kh = packed.shape[:-1], packed.shape[-1]
    codes = jnp.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*lead, kh // 32, 2, 32)
    return (codes[..., 0, :] | (codes[..., 1, :] << 4)).reshape(*lead, kh)


@jax.jit
def from_block_pairs(packed_pairs):
    """Inverse of ``to_block_pairs``: block-pairs bytes [..., K/2] -> checkpoint layout.

    >>> import jax.numpy as jnp
    >>> p = jnp.arange(64, dtype=jnp.uint8)
    >>> bool((from_block_pairs(to_block_pairs(p)) == p).all())
    True
    """
    _check("from_block_pairs", packed_pairs)
    lead, kh = packed_pairs.shape[:-1], packed_pairs.shape[-1]
    pairs = packed_pairs.reshape(*lead, kh // 32, 1, 32)
    codes = jnp.concatenate([pairs & 0xF, pairs >> 4], axis=-2).reshape(*lead, kh, 2)
    return codes[..., 0] | (codes[..., 1] << 4)
