"""The notebook's install cell: which source it installs from (a clone, a wheel next to the notebook, an uploaded
wheel in Colab, QUARK_JAX_SOURCE), run with pip replaced by a recorder; and the wheel layout it relies on."""

import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CELL = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4).cells[1].source


@pytest.fixture
def pip(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append(args[args.index("-q") + 1:]))
    return calls


def _colab(monkeypatch, uploads=()):
    """A fake google.colab whose files.upload() 'uploads' the given names into the working directory."""
    files = types.SimpleNamespace(upload=lambda: {name: Path(name).write_bytes(b"") or b"" for name in uploads})
    colab = types.ModuleType("google.colab")
    colab.files = files
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))


def test_installs_the_clone_it_sits_in(pip, monkeypatch):
    _colab(monkeypatch)
    monkeypatch.chdir(ROOT / "notebooks")
    exec(CELL, {})
    assert pip == [[f"{ROOT}[text]", "matplotlib"]]


def test_installs_a_wheel_next_to_the_notebook_or_an_uploaded_one(pip, monkeypatch, tmp_path):
    _colab(monkeypatch, uploads=["quark_jax-0.1.0-py3-none-any.whl"])
    monkeypatch.chdir(tmp_path)
    exec(CELL, {})  # nothing here: Colab asks for the wheel
    wheel = tmp_path / "quark_jax-0.1.0-py3-none-any.whl"
    assert pip == [[f"{wheel}[text]", "matplotlib"]]
    pip.clear()
    _colab(monkeypatch, uploads=[])
    exec(CELL, {})  # the wheel is there now: no upload needed
    assert pip == [[f"{wheel}[text]", "matplotlib"]]
    pip.clear()
    (tmp_path / "quark_jax-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(RuntimeError, match="set QUARK_JAX_SOURCE to a wheel or a git URL"):
        exec(CELL, {})


def test_quark_jax_source_git_url_and_no_install_when_importable(pip, monkeypatch, tmp_path):
    _colab(monkeypatch)
    monkeypatch.chdir(tmp_path)
    cell = CELL.replace('QUARK_JAX_SOURCE = ""', 'QUARK_JAX_SOURCE = "git+https://example.org/quark_jax.git"')
    exec(cell, {})
    assert pip == [["quark-jax[text] @ git+https://example.org/quark_jax.git", "matplotlib"]]
    pip.clear()
    monkeypatch.delitem(sys.modules, "google.colab")
    exec(CELL, {})  # outside Colab with quark_jax importable (this test imports it): nothing to install
    assert pip == []
