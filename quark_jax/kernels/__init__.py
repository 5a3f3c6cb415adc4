"""Fused scaled GEMMs, one public entry per scheme, each with ``impl="auto" | "pallas" | "xla"``; and the fused
prefill attention (``attention/``: cuDNN flash attention on CUDA, an XLA reference of its numerics) and the decode
attention over the KV cache (``attention/pallas_triton.py``, a flash-decoding Pallas-Triton kernel); the
decoder's residual add + RMSNorm (+ static FP8 codes) as one kernel (``add_rmsnorm/``); the float (bf16) decode GEMM on
the ``nnx.Linear`` [K, N] kernel (``dense_mm/``).

Layout (the same for every op): ``kernels/<op>/__init__.py`` is the entry and its dispatch, ``xla.py`` the
reference, one file per backend (``pallas_triton.py``, ``pallas_mosaic_gpu.py``) owning its frozen keyword-only
``Config`` and tuned defaults. Shared by all ops: ``tiling`` (the M buckets, the table-key format, program
order), ``mosaic_skinny`` (the Mosaic GPU skinny wgmma core), ``tuning`` (what ``auto`` runs: :func:`choose_impl`)
and ``tuning.tuner`` (measures it on this GPU). Weights are always [N, K] as the checkpoint stores them (K-major),
so XLA takes cuBLASLt's fast path and kernels read them without a transpose.
"""

from quark_jax.kernels._dispatch import IMPLS, check_impl
from quark_jax.kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_xla
from quark_jax.kernels.tiling import SplitSums
from quark_jax.kernels.prologue import transform_reference
from quark_jax.kernels.attention import (decode_attention, decode_attention_impl, decode_attention_xla,
                                        fused_prefill_impl, in_query_blocks,
                                        prefill_attention, prefill_attention_xla, rope_cache_supported,
                                        rope_cache_update, rope_cache_update_xla)
from quark_jax.kernels.fp8_scaled_mm import fp8_gate_up_silu, fp8_scaled_mm, fp8_scaled_mm_xla
from quark_jax.kernels.dense_mm import dense_mm, dense_mm_impl, dense_mm_xla
from quark_jax.kernels.grouped_mm import grouped_mm, grouped_mm_xla
from quark_jax.kernels.int8_scaled_mm import int8_scaled_mm, int8_scaled_mm_xla
from quark_jax.kernels.mxfp4_mm import mxfp4_mm, mxfp4_mm_xla, mxfp4_mosaic_may_run
from quark_jax.kernels.mxfp4_mm.decode import FOLD_MAX_SCALE_BYTE as MXFP4_FOLD_MAX_SCALE_BYTE
from quark_jax.kernels.int4_mm import int4_mm, int4_mm_nk, int4_mm_nk_xla, int4_mm_xla, int4_repack, int4_unrepack
from quark_jax.kernels.mxfp6_mm import mxfp6_mm, mxfp6_mm_xla
from quark_jax.kernels.mxfp6_mm import mxfp6_mm_planes, mxfp6_repack, mxfp6_unrepack
from quark_jax.kernels.mxfp6_mm import PLANES_CHUNK as MXFP6_PLANES_CHUNK, dequantize_planes as mxfp6_dequantize_planes
from quark_jax.kernels.fp8_block_mm import fp8_block_mm, fp8_block_mm_xla
from quark_jax.kernels import tuning
from quark_jax.kernels.tuning import choose_impl, describe_auto, explain_impl

__all__ = ["fp8_scaled_mm", "fp8_scaled_mm_xla", "fp8_gate_up_silu", "dense_mm", "dense_mm_xla", "dense_mm_impl", "int8_scaled_mm",
           "int8_scaled_mm_xla", "mxfp4_mm", "mxfp4_mm_xla",
           "mxfp4_mosaic_may_run", "MXFP4_FOLD_MAX_SCALE_BYTE",
           "grouped_mm", "grouped_mm_xla",
           "int4_mm", "int4_mm_xla", "int4_mm_nk", "int4_mm_nk_xla", "int4_repack", "int4_unrepack", "fp8_block_mm", "fp8_block_mm_xla", "mxfp6_mm", "mxfp6_mm_xla",
           "prefill_attention", "prefill_attention_xla", "add_rmsnorm", "add_rmsnorm_xla", "SplitSums", "transform_reference", "fused_prefill_impl", "in_query_blocks",
           "decode_attention", "decode_attention_impl", "decode_attention_xla", "rope_cache_update",
           "rope_cache_update_xla", "rope_cache_supported",
           "mxfp6_mm_planes", "mxfp6_repack", "mxfp6_unrepack", "mxfp6_dequantize_planes", "MXFP6_PLANES_CHUNK",
           "choose_impl", "explain_impl", "describe_auto", "check_impl", "IMPLS", "tuning"]
