"""float64 numpy references for the GEMM kernels (independent of quark_jax.kernels)."""

from __future__ import annotations

import numpy as np

import reference_numpy as ref


def scaled_mm_f64(x_q, w_q, x_scale, w_scale, bias=None, azp_adj=None, azp=None):
    """``x_scale * w_scale * (x_q @ w_q.T - azp term) + bias`` in float64 (exact for int8 accumulators)."""
    acc = np.asarray(x_q).astype(np.float64) @ np.asarray(w_q).astype(np.float64).T
    if azp_adj is not None:
        adj = np.asarray(azp_adj, np.float64)[None, :]
        acc = acc - (adj if azp is None else np.asarray(azp, np.float64).reshape(-1, 1) * adj)
    xs = np.asarray(x_scale, np.float64)
    xs = xs.reshape(-1, 1) if xs.size > 1 else xs.reshape(())
    ws = np.asarray(w_scale, np.float64).reshape(-1) if np.size(w_scale) > 1 else np.asarray(w_scale, np.float64)
    y = xs * ws * acc
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :]
    return y


def mxfp4_mm_f64(x, w_packed, w_scales, bias=None, quantize_input=True):
    xq = ref.mxfp4_qdq(np.asarray(x, np.float32)) if quantize_input else np.asarray(x, np.float32)
    w = ref.mxfp4_dequantize(w_packed, w_scales)
    y = xq.astype(np.float64) @ w.T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :]
    return y


def grouped_mm_f64(x, w, group_sizes, x_scale=None, w_scale=None):
    """float64 grouped GEMM: rows of group e (sorted, in order) times ``w[e]`` [N, K] transposed, times
    ``w_scale[e]`` (scalar or [N]) and ``x_scale`` (scalar or [M, 1]); rows past the groups are 0. ``w`` is the
    dequantized float weight [E, N, K]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    y = np.zeros((x.shape[0], w.shape[1]))
    start = 0
    for e, g in enumerate(np.asarray(group_sizes).tolist()):
        part = x[start:start + g] @ w[e].T
        if w_scale is not None:
            part = part * np.asarray(w_scale, np.float64)[e]
        y[start:start + g] = part
        start += g
    if x_scale is not None:
        xs = np.asarray(x_scale, np.float64)
        y = y * (xs.reshape(-1, 1) if xs.size > 1 else xs.reshape(()))
    return y
