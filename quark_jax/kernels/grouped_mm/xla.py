"""XLA reference for the grouped (MoE expert) GEMM: ``jax.lax.ragged_dot_general`` over the expert axis.

The weight is used in its [E, N, K] (K-major) layout (rhs contracting dimension 2, group dimension 0), so no
transposed copy is made. MXFP4 weights are dequantized to x's dtype first ([E, N, K] in HBM: this reference
materializes every expert; the Pallas kernel never does). FP8 operands go to the ragged dot as fp8 with f32
accumulation; the scales are applied after it, per row (x_scale) and per row's expert (w_scale).

On CPU (jax 0.10.2) XLA expands the ragged dot into a dense masked product (E times the flops); that is a
reference, not a fast path.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from quark_jax.quant import dequantize_mxfp4, dot_precision

# lhs [M, K] contracting 1, ragged along M; rhs [E, N, K] contracting 2, grouped along 0
_DIMS = lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((1,), (2,)), ((), ())), lhs_ragged_dimensions=[0],
                                      rhs_group_dimensions=[0])


def row_groups(group_sizes, m: int):
    """int32 [M]: the group (expert) of each sorted row; rows past ``sum(group_sizes)`` get E (no group). A
    compare-and-count (no ``searchsorted`` loop, which costs a kernel per step on the GPU).

    >>> row_groups(jnp.array([2, 0, 1], jnp.int32), 5).tolist()
    [0, 0, 2, 3, 3]
    """
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    rows = jnp.arange(m, dtype=jnp.int32)
    return jnp.sum(ends[None, :] <= rows[:, None], axis=1, dtype=jnp.int32)


def row_weight_scale(w_scale, group_sizes, m: int):
    """f32 [M, 1] (per-tensor ``w_scale`` [E]) or [M, N] (per-channel [E, N]): each row's expert's scale, 0 for
    rows past the groups.

    >>> row_weight_scale(jnp.array([2.0, 3.0]), jnp.array([1, 2], jnp.int32), 4).ravel().tolist()
    [2.0, 3.0, 3.0, 0.0]
    """
    e = w_scale.shape[0]
    grp = row_groups(group_sizes, m)
    rows = jnp.take(w_scale.astype(jnp.float32), jnp.minimum(grp, e - 1), axis=0).reshape(m, -1)
    return jnp.where((grp < e)[:, None], rows, 0.0)


def grouped_mm_xla(x, w, group_sizes, *, w_scale=None, x_scale=None, scheme="bf16", out_dtype=jnp.bfloat16):
    """``y[rows of e] = out(x_scale * w_scale[e] * (x[rows of e] @ dequant(w[e]).T))`` with f32 accumulation;
    operands already validated and normalized by the entry (w_scale: fp8 f32 [E] or [E, N], mxfp4 uint8
    [E, N, K/32]; x_scale: f32 () or [M, 1]). x [M, K], w [E, N, K], group_sizes int32 [E] -> [M, N].

    >>> x = jnp.ones((3, 4)); w = jnp.stack([jnp.ones((2, 4)), 2 * jnp.ones((2, 4))])  # expert 1 weighs 2x
    >>> grouped_mm_xla(x, w, jnp.array([1, 2], jnp.int32), out_dtype=jnp.float32).tolist()
    [[4.0, 4.0], [8.0, 8.0], [8.0, 8.0]]
    """
    m = x.shape[0]
    if scheme == "mxfp4":
        w = dequantize_mxfp4(w, w_scale, x.dtype)
    acc = lax.ragged_dot_general(x, w, group_sizes, _DIMS, precision=dot_precision(x, w),
                                 preferred_element_type=jnp.float32)
    if scheme == "fp8":
        acc = x_scale * (row_weight_scale(w_scale, group_sizes, m) * acc)
    return acc.astype(out_dtype)
