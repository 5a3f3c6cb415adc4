"""Parameterizes every ``KernelContract`` subclass over its (variant, flavor) pairs."""

from kernels.base import pytest_generate_tests  # noqa: F401
