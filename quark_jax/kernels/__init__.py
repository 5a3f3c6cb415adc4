"""Fused scaled GEMMs, one public entry per scheme, each with ``impl="auto" | "pallas" | "xla"``.

Layout: one folder per op (``xla.py`` the reference, ``pallas_triton.py`` the Pallas-Triton kernel), a shared
dispatch (``_dispatch``) reading per-device tables from ``tuning/``. Weights are always [N, K] as the checkpoint
stores them (K-major), so XLA takes cuBLASLt's fast path and kernels read them without a transpose.
"""

from quark_jax.kernels._dispatch import IMPLS, check_impl
from quark_jax.kernels.fp8_scaled_mm import fp8_scaled_mm, fp8_scaled_mm_xla
from quark_jax.kernels.int8_scaled_mm import int8_scaled_mm, int8_scaled_mm_xla
from quark_jax.kernels.mxfp4_mm import mxfp4_mm, mxfp4_mm_xla

__all__ = ["IMPLS", "check_impl", "fp8_scaled_mm", "fp8_scaled_mm_xla", "int8_scaled_mm", "int8_scaled_mm_xla", "mxfp4_mm", "mxfp4_mm_xla"]
