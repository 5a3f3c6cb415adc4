"""The shared kernel test base: every backend of every op runs the same contract (``KernelContract``).

An op's test module subclasses ``KernelContract`` and declares its backends' variants (a config and a shape that
exercises its structure: several row/column blocks, K steps, ragged M), its data flavors (scale / bias / dtype
combinations), and how to make data, run a variant and check the result against the XLA reference and float64
numpy. The base parameterizes over (variant, flavor) with seeds derived from the test id (``seed``, stable
across processes, unlike ``hash()``), and adds the entry-level tests every op shares: ``impl="pallas"`` agrees
with ``impl="xla"``, and ``impl="auto"`` runs the implementation ``quark_jax.kernels.choose_impl`` names (on a
pretend H200 and a pretend sm80 card, so that it is checked without a GPU: on CPU the Pallas kernels run in
interpret mode).

On CPU the kernels run in Pallas interpret mode; on a CUDA GPU the same tests run the compiled kernels.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np
import pytest

from quark_jax.kernels import _dispatch, tuning

ON_GPU = not _dispatch.pallas_interpret()


def seed(*parts) -> int:
    """A deterministic 32-bit seed from the parts' text (the same in every process)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def rng(*parts) -> np.random.Generator:
    return np.random.default_rng(seed(*parts))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """One backend configuration under test."""

    backend: str  # e.g. "pallas_triton", "pallas_mosaic_gpu"
    name: str  # what structure it exercises, e.g. "split_k"
    config: Any  # the backend's Config
    shape: tuple[int, int, int]  # (M, K, N)

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.name}"


class KernelContract:
    """Subclass per op and set:

    * ``OP``: the entry's name (``tuning.OPS``); ``VARIANTS``: list of ``Variant``; ``FLAVORS``: flavor ids;
    * ``data(self, rng, m, k, n, flavor) -> dict`` and ``run(self, variant, data, flavor) -> array``;
    * ``check(self, got, data, flavor)``: the assertions against the XLA reference and float64;
    * ``entry(self, data, impl) -> array`` (the public entry on ``data``), ``ENTRY_SHAPE`` (M, K, N) and
      ``entry_check(self, got, want, data)``;
    * ``PALLAS``: (module, function name) of the Pallas-Triton backend that ``impl="pallas"`` calls;
    * ``flavors_for(self, variant)``: the flavors a variant runs (default all).
    """

    OP: str
    VARIANTS: list
    FLAVORS: list
    ENTRY_SHAPE: tuple[int, int, int]
    PALLAS: tuple

    def flavors_for(self, variant: Variant) -> list:
        return self.FLAVORS

    @classmethod
    def pytest_generate_tests(cls, metafunc):
        """(variant, flavor) pairs of this op (pytest calls a test class's own ``pytest_generate_tests``)."""
        if {"variant", "flavor"} <= set(metafunc.fixturenames):
            inst = cls()
            pairs = [(v, f) for v in cls.VARIANTS for f in inst.flavors_for(v)]
            metafunc.parametrize("variant,flavor", pairs, ids=[f"{v.id}-{f}" for v, f in pairs])

    def test_backend_matches_references(self, variant, flavor):
        m, k, n = variant.shape
        data = self.data(rng(self.OP, variant.id, flavor), m, k, n, flavor)
        self.check(self.run(variant, data, flavor), data, flavor)

    def test_entry_pallas_matches_xla(self):
        m, k, n = self.ENTRY_SHAPE
        data = self.data(rng(self.OP, "entry"), m, k, n, self.FLAVORS[-1])
        self.entry_check(self.entry(data, "pallas"), self.entry(data, "xla"), data)

    def auto_fallback(self, want, data):
        """What the entry runs when the table says ``want`` for ``data`` (default: ``want``; an op whose table may
        name a kernel that takes fewer operands, MXFP4's "mosaic", says where it falls back)."""
        return want

    @pytest.mark.parametrize("card,cc", [("NVIDIA H200", "9.0"), ("NVIDIA A100-SXM4-80GB", "8.0")])
    def test_auto_runs_what_choose_impl_picks(self, monkeypatch, card, cc):
        """On a pretend GPU, ``impl="auto"`` calls the Pallas backend exactly where ``choose_impl`` says
        "pallas" (decode and prefill M), and its result equals that implementation's."""
        monkeypatch.setattr(tuning, "current_device", lambda: (card, cc))
        monkeypatch.setenv("QUARK_JAX_TUNING_DIR", "/nonexistent")  # packaged tables only
        module, name = self.PALLAS
        calls = []
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
        _, k, n = self.ENTRY_SHAPE
        for m in (1, 17 * 31):  # decode and prefill buckets
            want = tuning.choose_impl(self.OP, m, k, n, device_kind=card, compute_capability=cc)
            data = self.data(rng(self.OP, "auto", m), m, k, n, self.FLAVORS[-1])
            want = self.auto_fallback(want, data)
            calls.clear()
            got = self.entry(data, "auto")
            assert len(calls) == (1 if want == "pallas" else 0), (m, want)
            self.entry_check(got, self.entry(data, want), data)


def triton_ir(fn, *args) -> list[str]:
    """The Triton IR text of every Pallas-Triton kernel in ``jax.jit(fn)``'s CUDA lowering for ``args`` (arrays or
    ShapeDtypeStructs), lowered on any host: jax's private MLIR with the Triton dialect parses (and so verifies)
    each custom call's IR bytecode, as XLA does before compiling it (an op the Triton verifier rejects raises
    here, e.g. an unsigned integer result of an inline-asm op)."""
    ir = pytest.importorskip("jax._src.lib.mlir").ir  # jax's private MLIR and Triton dialect bindings
    tt_dialect = pytest.importorskip("jax._src.lib.triton").dialect
    import jax

    module = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).compiler_ir()
    blobs = []

    def walk(op):
        for region in op.regions:
            for block in region:
                for o in block:
                    if o.name == "stablehlo.custom_call" and "triton" in str(o.attributes["call_target_name"]):
                        blobs.append(ir.StringAttr(o.attributes["mhlo.backend_config"]["ir"]).value_bytes)
                    walk(o)

    walk(module.operation)
    texts = []
    for blob in blobs:
        with ir.Context() as ctx:
            tt_dialect.register_dialect(ctx)
            texts.append(str(ir.Module.parse(blob)))
    return texts
