"""One CLI convention for every subcommand: bundled name or directory, one error line and exit 2 for user errors,
``--debug`` for the traceback, ``--version``; the Python loaders accept bundled names too."""

import numpy as np
import pytest

from quark_jax import __version__, cli
from quark_jax.data import BUNDLED
from quark_jax.io import resolve_checkpoint
from quark_jax.errors import CheckpointError, CheckpointNotFoundError, QuarkJaxError

SUBCOMMANDS = ["demo", "inspect", "run"]
EXTRA = {"quantize": ["OUT", "--preset", "fp8"]}


@pytest.mark.parametrize("command", SUBCOMMANDS + ["check", "tune", "quantize"])
def test_missing_checkpoint_is_one_line_and_exit_2(command, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    extra = [str(tmp_path / a) if a == "OUT" else a for a in EXTRA.get(command, [])]
    assert cli.main([command, missing] + extra) == 2
    err = capsys.readouterr().err
    assert err == f"error: checkpoint '{missing}': no such directory, not a bundled name " \
                  f"({', '.join(sorted(BUNDLED))}) and not a Hugging Face Hub id (org/name)\n"


@pytest.mark.parametrize("command", SUBCOMMANDS)
@pytest.mark.parametrize("content, found", [("{x", "not valid JSON"), ("[1, 2]", "expected a JSON object, found a list")])
def test_unreadable_config_json_names_the_file(command, content, found, tmp_path, capsys):
    (tmp_path / "config.json").write_text(content)
    assert cli.main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and (f"config.json: {found}" in err or "model.safetensors" in err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        cli.main(["--debug", "inspect", str(tmp_path / "nope")])
    with pytest.raises(CheckpointNotFoundError):
        cli.main(["inspect", str(tmp_path / "nope"), "--debug"])


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"quark-jax {__version__}"


@pytest.mark.parametrize("argv, message", [
    (["run", "--prompt-ids", "-1,5"], "argument --prompt-ids: token ids must be >= 0, got -1 in '-1,5'"),
    (["run", "--prompt-ids", "3,-7"], "argument --prompt-ids: token ids must be >= 0, got -7 in '3,-7'"),
    (["run", "--eos-token-id", "-2"], "argument --eos-token-id: token ids must be >= 0, got -2"),
    (["run", "--prompt-ids", "a,b"], "argument --prompt-ids: expected comma-separated integers"),
])
def test_bad_ids_are_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_local_path_wins_over_bundled_name(tmp_path, monkeypatch):
    (tmp_path / "tiny-llama-fp8").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("tiny-llama-fp8").resolve() == (tmp_path / "tiny-llama-fp8").resolve()
    assert resolve_checkpoint("tiny-llama-mxfp4") == BUNDLED["tiny-llama-mxfp4"]
    (tmp_path / "afile").write_text("")
    with pytest.raises(CheckpointNotFoundError, match="expected a directory"):
        resolve_checkpoint("afile")


def test_python_loaders_accept_bundled_names():
    from quark_jax.checkpoint import open_checkpoint
    from quark_jax.config import QuarkConfig
    from quark_jax.nn import QuarkLinear

    assert len(open_checkpoint("tiny-llama-fp8")) == len(open_checkpoint(BUNDLED["tiny-llama-fp8"]))
    assert QuarkConfig.from_pretrained("tiny-llama-mxfp4").global_quant_config.weight.dtype == "fp4"
    layer = QuarkLinear.from_pretrained("tiny-llama-fp8", "model.layers.0.mlp.down_proj")
    assert (layer.in_features, layer.out_features) == (128, 64)


def test_error_types_share_one_base():
    from quark_jax.io import SafetensorsFormatError
    from quark_jax.models import UnsupportedModelError

    for e in (CheckpointError, CheckpointNotFoundError, SafetensorsFormatError, UnsupportedModelError):
        assert issubclass(e, QuarkJaxError) and issubclass(e, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("command", ["demo", "inspect", "run", "check"])
def test_no_safetensors_or_truncated_file_is_one_line(command, tmp_path, capsys):
    from checkpoint_tools import edited_copy, truncate

    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_text((BUNDLED["tiny-llama-fp8"] / "config.json").read_text())
    assert cli.main([command, str(d)]) == (1 if command == "check" else 2)
    captured = capsys.readouterr()
    text = captured.err if command != "check" else captured.out
    assert "expected model.safetensors or model.safetensors.index.json" in text and "Traceback" not in text
    t = edited_copy(BUNDLED["tiny-llama-fp8"], tmp_path / "t")
    truncate(t / "model.safetensors", 100)
    assert cli.main([command, str(t)]) == (1 if command == "check" else 2)
    captured = capsys.readouterr()
    text = captured.err if command != "check" else captured.out
    assert "truncated" in text and "Traceback" not in text


def test_eos_early_stop_summary(capsys):
    args = ["run", "tiny-llama-fp8", "--prompt-ids", "1,5,9", "--max-new-tokens", "6"]
    assert cli.main(args) == 0
    gen = [int(t) for t in capsys.readouterr().out.split("generated ids: [")[1].split("]")[0].split(",")]
    assert cli.main(args + ["--eos-token-id", str(gen[1])]) == 0
    out = capsys.readouterr().out
    stop = gen.index(gen[1]) + 1  # tokens produced up to and including the first eos
    assert f"generated ids: {gen[:stop] + [gen[1]] * (6 - stop)}" in out
    assert f"stopped early: every row produced eos id {gen[1]} within {stop} of 6 new tokens; the last " \
           f"{6 - stop} ids of each row are eos padding" in out
    assert f"over {stop - 1} steps" in out


def test_negative_ids_in_python_are_clear():
    from quark_jax.errors import InvalidArgumentError
    from quark_jax.models import from_pretrained

    with pytest.raises(InvalidArgumentError, match=r"token id -1 at \[0, 0\] is negative; token ids are 0 .. 255"):
        from_pretrained("tiny-llama-fp8")(np.array([[-1, 5]]))
