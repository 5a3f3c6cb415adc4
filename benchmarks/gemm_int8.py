"""INT8 W8A8 extra rows for benchmarks/bench_gemm.py (the entry's pallas / xla / auto rows come from the tuner),
and the helpers the other case files share:

- ``xla_bf16``: a bf16 x bf16 ``dot_general`` of the same shape (the unquantized layer; the baseline);
- ``torch_int_mm``: ``torch._int_mm`` int8 x int8 -> int32 (no epilogue), vLLM's fallback without CUTLASS.
"""

from __future__ import annotations


def bf16_case(point, sets, Case, name="xla_bf16"):
    """bf16 x [M, K] times bf16 w [N, K] (the op's weights and activations cast), f32 accumulation, bf16 out."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from quark_jax import quant

    m, k, n = point.m, point.k, point.n

    def as_bf16(s):
        if point.op == "mxfp4_mm":
            return s[0], quant.dequantize_mxfp4(s[1], s[2], jnp.bfloat16)
        return s[0].astype(jnp.bfloat16), s[1].astype(jnp.bfloat16)

    dense = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.bfloat16))
    return Case(name=name, fn=dense, arg_sets=[as_bf16(s) for s in sets], flops=2.0 * m * n * k,
                bytes=2 * (m * k + n * k + m * n), baseline=True)


def torch_sets(point, copies: int, kind: str):
    """torch CUDA operands (x, w[, scales, bias]) in ``copies`` weight copies, or [] without torch + CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    m, k, n = point.m, point.k, point.n
    g = torch.Generator(device="cuda").manual_seed(m + k + n)
    if kind == "int8":
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
        return [(x, torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g))
                for _ in range(copies)]
    f8 = torch.float8_e4m3fn
    x = (torch.randn(m, k, device="cuda", generator=g) * 2).clamp(-448, 448).to(f8)
    sa = torch.rand(m, 1, device="cuda", generator=g) * 0.01 + 1e-3
    sb = torch.rand(1, n, device="cuda", generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    return [(x, (torch.randn(n, k, device="cuda", generator=g) * 100).clamp(-448, 448).to(f8), sa, sb, bias)
            for _ in range(copies)]


def cases(point, sets, Case):
    m, k, n = point.m, point.k, point.n
    out = [bf16_case(point, sets, Case)]
    tsets = torch_sets(point, len(sets), "int8")
    if tsets:
        out.append(Case(name="torch_int_mm", fn=lambda x, w: __import__("torch")._int_mm(x, w.t()), arg_sets=tsets,
                        flops=2.0 * m * n * k, bytes=m * k + n * k + 4 * m * n, framework="torch"))
    return out
