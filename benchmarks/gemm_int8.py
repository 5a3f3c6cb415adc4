"""INT8 W8A8 cases for benchmarks/bench_gemm.py: ``cases(m, k, n)``.

The timed problem is the one QuarkW8A8Int8 runs for an asymmetric static checkpoint: x_q [M, K] int8 with a
scalar x_scale, w_q [N, K] int8 with per-channel w_scale [N], the per-tensor zero point folded into azp_adj [N],
a bf16 bias [N], bf16 output. Rows:

* ``pallas``: the Pallas-Triton kernel with the shipped block config (``impl="pallas"``), epilogue fused;
* ``xla_int8``: the XLA path, ``dot_general(int8, int8 -> int32)`` (cuBLASLt) plus the azp / scale / bias pass;
* ``auto``: ``impl="auto"`` as the checked-in table for this device decides (not a candidate);
* ``xla_bf16``: a bf16 x bf16 ``dot_general`` of the same shape (the unquantized model; the baseline);
* ``torch_int_mm``: ``torch._int_mm`` int8 x int8 -> int32 (no epilogue), what vLLM falls back to without CUTLASS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bench_gemm import Case
from timing import rotation_count

from quark_jax.kernels import int8_scaled_mm

_NT = (((1,), (1,)), ((), ()))


def _operands(m, k, n, copies, seed=0):
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(copies):
        key = jax.random.key(seed * 97 + i)
        kx, kw = jax.random.split(key)
        x = jax.random.randint(kx, (m, k), -128, 128, jnp.int32).astype(jnp.int8)
        w = jax.random.randint(kw, (n, k), -128, 128, jnp.int32).astype(jnp.int8)
        xs = jnp.float32(0.02 + 0.001 * i)
        ws = jnp.asarray(rng.uniform(0.001, 0.01, n), jnp.float32)
        adj = jnp.sum(w.astype(jnp.int32), axis=1) * jnp.int32(-7)
        bias = jnp.asarray(rng.standard_normal(n), jnp.bfloat16)
        sets.append((x, w, xs, ws, bias, adj))
    return sets


def cases(m, k, n):
    w_bytes = n * k
    copies = rotation_count(w_bytes + m * k)
    sets = _operands(m, k, n, copies)
    flops = 2.0 * m * k * n
    bytes_i8 = m * k + n * k + 2 * m * n + 10 * n  # x, w, bf16 out, scales / azp_adj / bias
    bytes_bf16 = 2 * (m * k + n * k + m * n)

    def entry(impl):
        return jax.jit(lambda x, w, xs, ws, b, adj: int8_scaled_mm(x, w, xs, ws, b, azp_adj=adj, impl=impl))

    bf16_sets = [(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)) for x, w, *_ in sets]
    bf16 = jax.jit(lambda x, w: lax.dot_general(x, w, _NT))
    out = [
        Case("pallas", entry("pallas"), sets, flops, bytes_i8, auto_candidate="pallas"),
        Case("xla_int8", entry("xla"), sets, flops, bytes_i8, auto_candidate="xla"),
        Case("auto", entry("auto"), sets, flops, bytes_i8),
        Case("xla_bf16", bf16, bf16_sets, flops, bytes_bf16, baseline=True),
    ]
    try:
        import torch

        if torch.cuda.is_available():
            t_sets = [(torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda"),
                       torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")) for _ in range(copies)]
            out.append(Case("torch_int_mm", lambda x, w: torch._int_mm(x, w.t()), t_sets, flops,
                            m * k + n * k + 4 * m * n, framework="torch"))
    except ImportError:
        pass
    return out
