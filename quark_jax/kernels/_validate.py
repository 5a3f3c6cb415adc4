"""Shape and dtype checks shared by the GEMM entry points; errors name the argument and what was expected."""

from __future__ import annotations

import jax.numpy as jnp


def matrix(name: str, a, dtypes, what: str):
    a = jnp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array {what}, got shape {tuple(a.shape)}")
    if a.dtype not in [jnp.dtype(d) for d in dtypes]:
        names = ", ".join(str(jnp.dtype(d)) for d in dtypes)
        raise TypeError(f"{name}: expected dtype {names} {what}, got {a.dtype}")
    return a


def same_k(x_name: str, x_k: int, w_name: str, w_k: int):
    if x_k != w_k:
        raise ValueError(f"{w_name}: contraction size {w_k} does not match {x_name}'s K = {x_k}")


def row_scale(name: str, s, m: int):
    """A scale that is scalar (shape () or (1,)) or per-row [M, 1] / [M]; returned as f32 () or [M, 1]."""
    s = jnp.asarray(s, jnp.float32)
    if s.size == 1:
        return s.reshape(())
    if s.shape in ((m, 1), (m,)):
        return s.reshape(m, 1)
    raise ValueError(f"{name}: expected a scalar or shape ({m}, 1), got {tuple(s.shape)}")


def col_scale(name: str, s, n: int):
    """A scale that is scalar or per-output-channel [N] (or [N, 1]); returned as f32 () or [N]."""
    s = jnp.asarray(s, jnp.float32)
    if s.size == 1:
        return s.reshape(())
    if s.shape in ((n,), (n, 1)):
        return s.reshape(n)
    raise ValueError(f"{name}: expected a scalar or shape ({n},), got {tuple(s.shape)}")


def bias_vector(bias, n: int):
    if bias is None:
        return None
    bias = jnp.asarray(bias)
    if bias.shape != (n,):
        raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
    return bias


def packed_shape(name: str, w, expected: tuple, k: int):
    """Raise unless the packed weight ``w`` has ``expected`` shape for an activation with ``k`` columns.

    >>> packed_shape("w_packed", jnp.zeros((4, 16)), (4, 32 // 2), 32)
    """
    if tuple(w.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} for x with K = {k}, got {tuple(w.shape)}")


def multiple_of(name: str, size: int, multiple: int, axis: str):
    if size % multiple:
        raise ValueError(f"{name}: {axis} = {size} must be a multiple of {multiple}")


def mosaic_skinny_shape(dtype, m: int, k: int, n: int):
    """What the Mosaic GPU skinny kernel takes: float8_e4m3fn or int8, M <= 128, N a multiple of 64, K of 32
    (8-bit wgmma steps are 32 deep)."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.int8)):
        raise TypeError(f"x_q: the Mosaic GPU kernel takes float8_e4m3fn or int8, got {jnp.dtype(dtype)}")
    if m > 128:
        raise ValueError(f"x_q: the Mosaic GPU kernel is for M <= 128 (decode), got M = {m}; use impl='pallas'")
    multiple_of("w_q", n, 64, "N")
    multiple_of("w_q", k, 32, "K")


def scaled_mm_operands(x_q, w_q, x_scale, w_scale, bias, x_dtypes, x_what: str, w_dtypes=None):
    """Validate the operands shared by the scaled GEMMs: x_q [M, K], w_q [N, K] of x_q's dtype (or, with
    ``w_dtypes``, of one of those when x_q is a float activation quantized in the kernel), x_scale () or [M, 1],
    w_scale () or [N], bias [N] or None. Returns them normalized, plus (m, k, n)."""
    x_q = matrix("x_q", x_q, x_dtypes, x_what)
    if w_dtypes is not None and x_q.dtype not in [jnp.dtype(d) for d in w_dtypes]:
        w_q = matrix("w_q", w_q, w_dtypes, "[N, K] (quantized weight)")
    else:
        w_q = matrix("w_q", w_q, (x_q.dtype,), f"[N, K] (same dtype as x_q, {x_q.dtype})")
    m, k = x_q.shape
    n = w_q.shape[0]
    same_k("x_q", k, "w_q", w_q.shape[1])
    return (x_q, w_q, row_scale("x_scale", x_scale, m), col_scale("w_scale", w_scale, n), bias_vector(bias, n),
            (m, k, n))
