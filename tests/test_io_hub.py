"""Checkpoint-name resolution: local directory, then bundled name, then Hub id from a Hub-client-style cache
(offline: HF_HUB_OFFLINE=1, never the network)."""

import shutil
import sys

import pytest

from quark_jax.data import BUNDLED
from quark_jax.errors import CheckpointError
from quark_jax.io.hub import hub_cache_dir, resolve_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _hub_cache(root, repo_id="org/tiny-model", files=("config.json", "tokenizer.json")):
    """The layout huggingface_hub writes: models--org--name/{blobs,refs/<rev>,snapshots/<commit>/<file> -> blob}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for rev, commit in (("main", COMMIT), ("v1", OLD_COMMIT)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for i, name in enumerate(files):
            blob = repo / "blobs" / f"{commit[:8]}{i:032d}"
            blob.parent.mkdir(exist_ok=True)
            blob.write_text(f'{{"file": "{name}", "revision": "{rev}"}}')
            (snap / name).symlink_to(blob)
    return repo


@pytest.fixture
def offline_hf_home(tmp_path, monkeypatch):
    """HF_HOME in tmp_path with a cached 'org/tiny-model'; offline, no other HF cache variables."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return _hub_cache(tmp_path / "hf" / "hub")


def test_hub_id_resolves_to_the_cached_snapshot_of_main(offline_hf_home):
    d = resolve_checkpoint("org/tiny-model")
    assert d == offline_hf_home / "snapshots" / COMMIT
    assert '"revision": "main"' in (d / "config.json").read_text()
    old = resolve_checkpoint("org/tiny-model", revision="v1")
    assert old == offline_hf_home / "snapshots" / OLD_COMMIT


def test_cache_dir_from_hf_hub_cache_and_argument(offline_hf_home, tmp_path, monkeypatch):
    other = tmp_path / "other-cache"
    repo = _hub_cache(other, "org/elsewhere")
    monkeypatch.setenv("HF_HUB_CACHE", str(other))  # wins over HF_HOME
    assert hub_cache_dir() == other
    assert resolve_checkpoint("org/elsewhere") == repo / "snapshots" / COMMIT
    with pytest.raises(CheckpointError, match="org/tiny-model.*not in the Hub cache"):
        resolve_checkpoint("org/tiny-model")
    snapshot = resolve_checkpoint("org/tiny-model", cache_dir=tmp_path / "hf" / "hub")
    assert snapshot == offline_hf_home / "snapshots" / COMMIT


def test_local_directory_wins_then_bundled_name(offline_hf_home, tmp_path):
    local = tmp_path / "org" / "tiny-model"  # a relative path that is also a cached Hub id
    local.mkdir(parents=True)
    assert resolve_checkpoint("org/tiny-model").resolve() == local.resolve()
    assert resolve_checkpoint("tiny-llama-fp8") == BUNDLED["tiny-llama-fp8"]
    (tmp_path / "tiny-llama-fp8").mkdir()  # a local folder named like a bundled checkpoint wins
    assert resolve_checkpoint("tiny-llama-fp8").resolve() == (tmp_path / "tiny-llama-fp8").resolve()


def test_unknown_names_are_clear_errors(offline_hf_home, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"'org/missing'.*not in the Hub cache .*offline"):
        resolve_checkpoint("org/missing")
    with pytest.raises(CheckpointError, match=r"'no/such/dir': no such directory, not a bundled name .*tiny-llama-fp8"):
        resolve_checkpoint("no/such/dir")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(CheckpointError, match="expected a directory"):
        resolve_checkpoint("file.json")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(CheckpointError, match=r"install huggingface_hub \(pip install \"quark-jax\[hub\]\"\)"):
        resolve_checkpoint("org/tiny-model")


def test_local_files_only_argument_overrides_the_environment(offline_hf_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    shutil.rmtree(offline_hf_home / "snapshots" / OLD_COMMIT)
    with pytest.raises(CheckpointError, match="not in the Hub cache .*offline"):
        resolve_checkpoint("org/tiny-model", revision="v1", local_files_only=True)
    assert resolve_checkpoint("org/tiny-model", local_files_only=True).name == COMMIT


def test_cli_and_loaders_take_a_cached_hub_id(offline_hf_home, capsys):
    """A Hub snapshot holding the bundled FP8 checkpoint opens by its id in the CLI, the tokenizer and the config."""
    from quark_jax import QuarkConfig, cli
    from quark_jax.models import Tokenizer

    snap = _hub_cache(offline_hf_home.parent, "amd/tiny-fp8", files=())
    src = BUNDLED["tiny-llama-fp8"]
    for commit in (COMMIT, OLD_COMMIT):
        for f in src.iterdir():
            (snap / "snapshots" / commit / f.name).symlink_to(f)
    assert cli.main(["inspect", "amd/tiny-fp8", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {snap / 'snapshots' / COMMIT}" in out and "QuarkW8A8Fp8" in out
    assert Tokenizer.from_pretrained("amd/tiny-fp8").decode([1, 234, 243]) == "Once upo"
    assert QuarkConfig.from_pretrained("amd/tiny-fp8").kv_cache is None
