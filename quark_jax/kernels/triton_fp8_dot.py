"""``fp8_dot``: an FP8 x FP8 -> f32 tile product for Pallas-Triton kernels that Triton compiles to Hopper FP8
wgmma.

Pallas lowers ``lax.dot_general`` on FP8 tiles to a ``tt.dot`` without ``maxNumImpreciseAcc``; Triton then refuses
FP8 wgmma (it would accumulate imprecisely) and upcasts both tiles to f16 for ``mma.sync`` (benchmarks/NOTES.md
"MoE fixes": HMMA, register spills, the ~470 TFLOP/s FP8 ceiling of the Pallas-Triton GEMMs). This primitive
lowers to the same ``tt.dot`` with ``maxNumImpreciseAcc = promote``: Triton emits FP8 wgmma and adds each
``promote`` K elements' partial sum into an f32 accumulator (32: after every wgmma instruction, K = 32, whose own
sum of 32 exact e4m3 products is the only imprecise step). Off a GPU (Pallas interpret mode, CPU) it is
``lax.dot_general`` with f32 accumulation.

The Triton rule is registered with Pallas' private lowering table (``jax._src.pallas.triton.lowering``);
``TRITON_RULE`` says whether that worked. ``grouped_mm``'s ``Config(mma="wgmma")`` is opt-in; ``fp8_block_mm``
uses it by default above 64 rows (promotion once per 128-K scale group, as Triton's own FP8 ``tl.dot`` default and
vLLM's block kernel do), falling back to its native config when ``TRITON_RULE`` is False.

``fp8_dot_acc(a, b, acc)`` is ``acc + a @ b^T`` as one ``tt.dot`` whose C operand is ``acc`` and whose
``maxNumImpreciseAcc`` is ``NEVER`` (2**30, Triton's default for FP8 ``tl.dot`` on sm_90): no f32 promotion at all,
the wgmma accumulator register *is* the running sum (the tensor core's own FP8 accumulation, coarser than f32 on
Hopper; vLLM's Triton ``fused_moe`` FP8 path has these numerics). Triton can then keep the wgmmas of consecutive
K steps in flight (no FADD consumes each step's product). Used by ``grouped_mm``'s ``Config(mma="wgmma_acc")``.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import mlir

__all__ = ["fp8_dot", "fp8_dot_p", "fp8_dot_acc", "fp8_dot_acc_p", "NEVER", "TRITON_RULE"]

fp8_dot_p = Primitive("quark_fp8_dot")
fp8_dot_acc_p = Primitive("quark_fp8_dot_acc")
NEVER = 2 ** 30  # maxNumImpreciseAcc above any K: Triton promotes nothing (its FP8 tl.dot default on sm_90)


def fp8_dot(a, b, *, promote: int = 32):
    """``a [P, K] @ b [Q, K]^T`` -> f32 [P, Q] (both K-major FP8 tiles; any float off the GPU).

    >>> fp8_dot(jnp.ones((2, 32), jnp.float8_e4m3fn), jnp.ones((3, 32), jnp.float8_e4m3fn)).tolist()[0]
    [32.0, 32.0, 32.0]
    """
    if promote < 32:
        raise ValueError(f"promote: Triton's FP8 wgmma needs at least 32 K elements per promotion, got {promote}")
    return fp8_dot_p.bind(a, b, promote=int(promote))


def _reference(a, b, *, promote):
    del promote
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _abstract(a, b, *, promote):
    del promote
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"fp8_dot: expected a [P, K] and b [Q, K], got {a.shape} and {b.shape}")
    return a.update(shape=(a.shape[0], b.shape[0]), dtype=jnp.dtype(jnp.float32), weak_type=False)


def fp8_dot_acc(a, b, acc):
    """``acc + a [P, K] @ b [Q, K]^T`` (f32 [P, Q] ``acc``), accumulated by FP8 wgmma into ``acc`` itself on the GPU
    (no f32 promotion); off the GPU an f32 ``dot_general`` added to ``acc``.

    >>> one = jnp.ones((2, 32), jnp.float8_e4m3fn)
    >>> fp8_dot_acc(one, one, jnp.full((2, 2), 0.5, jnp.float32)).tolist()[0]
    [32.5, 32.5]
    """
    return fp8_dot_acc_p.bind(a, b, acc)


def _acc_reference(a, b, acc):
    return acc + _reference(a, b, promote=NEVER)


def _acc_abstract(a, b, acc):
    out = _abstract(a, b, promote=NEVER)
    if acc.shape != out.shape or acc.dtype != jnp.float32:
        raise ValueError(f"fp8_dot_acc: expected an f32 accumulator of shape {out.shape}, got {acc.dtype}{acc.shape}")
    return out


fp8_dot_p.def_impl(partial(_reference))
fp8_dot_p.def_abstract_eval(_abstract)
mlir.register_lowering(fp8_dot_p, mlir.lower_fun(_reference, multiple_results=False))
fp8_dot_acc_p.def_impl(_acc_reference)
fp8_dot_acc_p.def_abstract_eval(_acc_abstract)
mlir.register_lowering(fp8_dot_acc_p, mlir.lower_fun(_acc_reference, multiple_results=False))


def _register_triton_rule() -> bool:
    try:
        from jax._src.lib.mlir import ir
        from jax._src.lib.triton import dialect as tt_dialect
        from jax._src.pallas.triton import lowering as triton_lowering
    except ImportError:  # no Pallas-Triton in this jax: the primitive only runs off the GPU
        return False
    if not hasattr(triton_lowering, "register_lowering"):  # a jax whose private layout moved: lowering it on a
        return False  # GPU then fails naming the primitive (defaults check TRITON_RULE and stay native)

    def rule(ctx, a, b, *, promote):
        del ctx
        m = ir.RankedTensorType(a.type).shape[0]
        n = ir.RankedTensorType(b.type).shape[0]
        acc = triton_lowering._zeros(ir.RankedTensorType.get([m, n], ir.F32Type.get()))
        return tt_dialect.dot(a, tt_dialect.trans(b, (1, 0)), acc, max_num_imprecise_acc=promote)

    def acc_rule(ctx, a, b, acc):
        del ctx
        return tt_dialect.dot(a, tt_dialect.trans(b, (1, 0)), acc, max_num_imprecise_acc=NEVER)

    triton_lowering.register_lowering(fp8_dot_p)(rule)
    triton_lowering.register_lowering(fp8_dot_acc_p)(acc_rule)
    return True


TRITON_RULE = _register_triton_rule()  # whether Pallas-Triton can lower fp8_dot (fp8_block_mm's defaults use it)
