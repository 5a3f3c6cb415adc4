"""Shared test helpers: the bundled Quark fixtures (tests/fixtures/quark_tiny_llama)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers on one GPU: allocate as needed, not 75% each
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each holds its own compiled programs: ~1-2 GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

FIXTURES = Path(__file__).parent / "fixtures" / "quark_tiny_llama"
VARIANTS = sorted(p.name for p in FIXTURES.iterdir() if (p / "model.safetensors").exists())


def variant_dir(name: str) -> Path:
    return FIXTURES / name


def quant_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())["quantization_config"]


def reference_layers(name: str) -> list[str]:
    return json.loads((FIXTURES / name / "reference.json").read_text())["layers"]


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


# Property tests draw the same examples on every run (CI must not flake); set HYPOTHESIS_PROFILE=explore locally
# to search with fresh random examples.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("ci", derandomize=True, deadline=None)
_hsettings.register_profile("explore", deadline=None)
_hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
