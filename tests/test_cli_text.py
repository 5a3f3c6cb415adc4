"""``quark-jax run --prompt / --chat``: the continuation printed as text, stop ids, timing; the default run shows
text; a checkpoint without tokenizer files is a clear error. Prompts stay under 16 tokens and 24 new tokens so that
every call shares one compiled prefill bucket and decode loop with tests/test_models_text.py."""

import re

import numpy as np
import pytest

from conftest import variant_dir
from quark_jax import cli
from quark_jax.data import bundled_checkpoint
from quark_jax.models import Tokenizer, from_pretrained

RULE = "-" * 40


@pytest.fixture(scope="module")
def model():
    return from_pretrained(bundled_checkpoint())


def _text(out: str) -> str:
    """What was printed between the two rules (the streamed continuation, its final newline dropped)."""
    parts = out.split(RULE + "\n")
    assert len(parts) == 3, out
    return parts[1][:-1]


def test_default_run_shows_text(capsys, model):
    assert cli.main(["run", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "prompt: 'Once upon a time' (7 tokens)" in out and "stop ids [2, 4]" in out
    assert _text(out) == model.generate_text("Once upon a time", 24)
    assert re.search(r"generated (24 tokens \(--max-new-tokens\)|stopped at a stop id after \d+ tokens); first chunk "
                     r"\(1 token, prefill included\) after [0-9.]+ ms", out)
    assert re.search(r"decode: \d+ tokens in [0-9.]+ ms \([0-9.]+ tokens/s\)", out)


def test_prompt_and_chat(capsys, model):
    assert cli.main(["run", "tiny-llama-mxfp4", "--prompt", "The quick brown fox", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert _text(out) == model.generate_text("The quick brown fox", 24)
    assert cli.main(["run", "--chat", "Hi", "--system", "Be brief.", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "chat: system + user turn through the chat template (35 tokens)" in out
    assert _text(out) == model.generate_text("Hi", 12, system="Be brief.")


@pytest.mark.parametrize("prompt, stop_id", [("Quark quantizes", 2), ("JAX compiles", 4)])
def test_stops_at_eos_and_end_of_turn(capsys, model, prompt, stop_id):
    """The greedy continuations of these prompts reach EOS (</s>, from config.json) and the chat template's
    end-of-turn token (<|im_end|>); the text ends before it."""
    tok = Tokenizer.from_pretrained(bundled_checkpoint())
    ids = tok.encode(prompt)
    new = np.asarray(model.generate(np.asarray([ids]), 24, eos_token_id=[2, 4]))[0, len(ids):].tolist()
    at = next(i for i, t in enumerate(new) if t in (2, 4))
    assert new[at] == stop_id and at >= 5
    assert cli.main(["run", "--prompt", prompt, "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert f"stopped at a stop id after {at + 1} tokens" in out
    assert _text(out) == tok.decode(new[:at]) != ""


def test_text_errors(capsys):
    d = variant_dir("w_fp8_a_fp8_pertensor_static")  # a Quark fixture without tokenizer files
    assert cli.main(["run", str(d), "--prompt", "Hi", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint {d}: no tokenizer.json; text input and output need the model's tokenizer files" in err
    assert err.rstrip().endswith("(use --prompt-ids)")
    assert cli.main(["run", "--system", "Be brief."]) == 2
    assert "--system: a system message goes with --chat MESSAGE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--prompt", "Hi", "--prompt-ids", "1,2"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_run_streams_in_the_librarys_default_chunks():
    from quark_jax.cli import build_parser
    from quark_jax.models.generation import DEFAULT_CHUNK

    assert build_parser().parse_args(["run"]).chunk_size == DEFAULT_CHUNK
