"""Shared test helpers: the bundled Quark fixtures (tests/fixtures/quark_tiny_llama)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
