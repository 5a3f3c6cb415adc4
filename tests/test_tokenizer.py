"""Tokenizer: the bundled tiny tokenizer (its recipe, round trips), a byte-level tokenizer for UTF-8-safe streaming,
chat templates against hand-rendered strings, stop ids from every config, clear errors."""

import json
import sys

import numpy as np
import pytest

from quark_jax.data import BUNDLED, FLOAT_CHECKPOINT, bundled_checkpoint
from quark_jax.data import tiny_tokenizer
from quark_jax.models import Tokenizer
from quark_jax.models.tokenizer import split_at_stop

BYTE_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# a Llama-3-style template, hand-written for this test
LLAMA3_STYLE = ("{{ bos_token }}{% for m in messages %}"
                "{% if loop.first and m['role'] == 'assistant' %}{{ raise_exception('the first turn must not be "
                "the assistant') }}{% endif %}"
                "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
                "{% endfor %}"
                "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MULTIBYTE = "naïve café — 中文 and 🙂, ok: Ω≈ç√∫"


@pytest.fixture(scope="module")
def bundled():
    return Tokenizer.from_pretrained(bundled_checkpoint())


def _byte_level_backend():
    from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers, trainers

    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=BYTE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_tokenizer.SENTENCES, trainer=trainer)  # English only: other scripts stay bytes
    return tok


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory):
    """A checkpoint-like folder with a byte-level BPE tokenizer, a Llama-3-style chat template and EOS lists."""
    d = tmp_path_factory.mktemp("bytelevel")
    backend = _byte_level_backend()
    backend.save(str(d / "tokenizer.json"))
    ids = {t: backend.token_to_id(t) for t in BYTE_SPECIALS}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<|begin_of_text|>", "special": True}, "eos_token": "<|end_of_text|>",
        "add_bos_token": True, "chat_template": LLAMA3_STYLE}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids["<|end_of_text|>"], 300]}))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 301}))
    return d


@pytest.fixture(scope="module")
def byte_tok(byte_dir):
    return Tokenizer.from_pretrained(byte_dir)


def _stream(tok, ids, sizes):
    dec, pieces, i = tok.stream_decoder(), [], 0
    for k in sizes:
        pieces.append(dec.push(ids[i:i + k]))
        i += k
    return pieces + [dec.flush()]


def test_bundled_tokenizer_is_its_recipe_and_fits_the_model(bundled):
    fresh = tiny_tokenizer.train()
    shipped = json.loads(bundled.backend.to_str())
    assert shipped["model"]["vocab"] == json.loads(fresh.to_str())["model"]["vocab"]
    assert shipped["model"]["merges"] == json.loads(fresh.to_str())["model"]["merges"]
    assert bundled.vocab_size == 256
    for d in [*BUNDLED.values(), FLOAT_CHECKPOINT]:  # every bundled checkpoint ships the same files
        assert (d / "tokenizer.json").read_bytes() == (bundled_checkpoint() / "tokenizer.json").read_bytes()
        assert json.loads((d / "tokenizer_config.json").read_text()) == tiny_tokenizer.TOKENIZER_CONFIG
        assert json.loads((d / "config.json").read_text())["vocab_size"] == 256
    # BOS / EOS agree with config.json (bos 1, eos 2); <|im_end|> ends a chat turn
    assert bundled.bos_token_id == 1 and bundled.eos_token_ids == (2, 4)
    assert bundled.end_of_turn_id == bundled.token_id("<|im_end|>") == 4


@pytest.mark.parametrize("text", ["Hello world!", "The capital of France is Paris.", "two  spaces\n  and a line",
                                  "x", "JAX: 8 + 4 = 12 (fp8, int8, mxfp4)."])
def test_bundled_round_trip(bundled, text):
    ids = bundled.encode(text)
    assert ids[0] == 1 and all(0 <= i < 256 for i in ids)
    assert bundled.decode(ids) == text
    assert bundled.encode(text, add_special_tokens=False) == ids[1:]
    assert bundled.decode(np.asarray([ids], np.int32)) == text  # a [1, T] array too


def test_bundled_unknown_characters_and_special_tokens(bundled):
    ids = bundled.encode("café", add_special_tokens=False)
    assert 0 in ids  # 'é' is outside the tiny alphabet: <unk>
    assert bundled.decode(ids) == "caf" and bundled.decode(ids, skip_special_tokens=False) == "caf<unk>"
    chat = bundled.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)
    assert chat[0] == 3 and chat[-1] == 4 and bundled.decode(chat) == "user\nHi"


def test_stream_never_splits_a_utf8_character(byte_tok):
    ids = byte_tok.encode(MULTIBYTE, add_special_tokens=False)
    assert byte_tok.decode(ids) == MULTIBYTE
    assert sum("\ufffd" in byte_tok.decode([i]) for i in ids) >= 8  # many tokens hold part of a character
    rng = np.random.default_rng(0)
    splits = [[1] * len(ids), [2] * len(ids), [3] * len(ids), [len(ids)],
              list(rng.integers(1, 6, size=len(ids)))]
    for sizes in splits:
        pieces = _stream(byte_tok, ids, sizes)
        assert "".join(pieces) == MULTIBYTE
        assert not any("\ufffd" in p for p in pieces)
    one_by_one = _stream(byte_tok, ids, [1] * len(ids))
    assert one_by_one.count("") > 5  # held back while a character was incomplete
    assert "🙂" in one_by_one and "中" in one_by_one  # and then emitted whole


def test_stream_long_text_slides_its_window_and_equals_decode(bundled, byte_tok):
    for tok, text in ((byte_tok, " ".join([MULTIBYTE] * 6)), (bundled, " ".join(tiny_tokenizer.SENTENCES))):
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) > 60
        pieces = _stream(tok, ids, [1] * len(ids))
        assert "".join(pieces) == tok.decode(ids) == text
        # SentencePiece-style spaces: a word's leading space comes with it, not lost at the window edge
        assert " ".join(text.split()) == text


def test_stream_invalid_bytes_are_not_held_forever(byte_tok):
    first_byte = byte_tok.encode("中", add_special_tokens=False)[0]  # 0xE4 alone: an incomplete character
    assert byte_tok.decode([first_byte]) == "\ufffd"
    dec = byte_tok.stream_decoder()
    assert dec.push([first_byte]) == ""
    assert dec.flush() == "\ufffd"  # what is left at the end
    rest = byte_tok.encode(" ok", add_special_tokens=False)
    pieces = _stream(byte_tok, [first_byte] + rest, [1] * (1 + len(rest)))
    assert "".join(pieces) == "\ufffd ok" and pieces[0] == ""  # a complete character after it releases it


def test_chat_template_matches_hand_rendered_string(byte_tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi, Ω?\n"}]
    expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi, Ω?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert byte_tok.apply_chat_template(messages) == expected
    assert byte_tok.apply_chat_template(messages, add_generation_prompt=False) == expected[:-len(
        "<|start_header_id|>assistant<|end_header_id|>\n\n")]
    ids = byte_tok.encode_chat(messages)
    bos = byte_tok.token_id("<|begin_of_text|>")
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS, no second one from encode
    assert ids.count(byte_tok.token_id("<|eot_id|>")) == 2
    assert byte_tok.decode(ids, skip_special_tokens=False) == expected
    with pytest.raises(Exception, match="the first turn must not be the assistant"):
        byte_tok.apply_chat_template([{"role": "assistant", "content": "x"}])
    with pytest.raises(TypeError, match="messages: expected a list of"):
        byte_tok.apply_chat_template("Hi")


def test_bundled_chat_template(bundled):
    text = bundled.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert bundled.decode(bundled.encode_chat([{"role": "user", "content": "Hi"}]), skip_special_tokens=False) == \
        "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_stop_ids_from_every_config(byte_tok):
    eot, eos = byte_tok.token_id("<|eot_id|>"), byte_tok.token_id("<|end_of_text|>")
    assert byte_tok.end_of_turn_id == eot  # what the template writes after an assistant message
    # generation_config.json's list, then config.json's int, then eos_token, then the end-of-turn token (deduplicated)
    assert byte_tok.eos_token_ids == (eos, 300, 301, eot)
    assert byte_tok.encode("Hi")[0] == byte_tok.token_id("<|begin_of_text|>")  # add_bos_token without post-processor


def test_config_variants_and_errors(byte_dir, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(byte_dir, d)
    (d / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|end_of_text|>"
                                           "{% endfor %}")
    (d / "generation_config.json").unlink()
    tok = Tokenizer.from_pretrained(d)  # the .jinja file wins over tokenizer_config.json's template
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == "[user] Hi<|end_of_text|>"
    assert tok.end_of_turn_id == tok.token_id("<|end_of_text|>") and tok.eos_token_ids == (301, tok.end_of_turn_id)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_pretrained(d).apply_chat_template([{"role": "user", "content": "x"}]) == "D"
    (d / "config.json").write_text(json.dumps({"eos_token_id": ["2"]}))
    with pytest.raises(ValueError, match=r"config.json: eos_token_id: expected a non-negative int or a list of them, "
                                         r"got \['2'\]"):
        Tokenizer.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    cfg.pop("chat_template")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(d)
    assert tok.eos_token_ids == (7, 9, tok.token_id("<|end_of_text|>")) and tok.end_of_turn_id is None
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.model").write_text("")
    with pytest.raises(FileNotFoundError, match=r"ckpt: no tokenizer.json \(found tokenizer.model, "
                                                r"tokenizer_config.json;.*token ids work without them"):
        Tokenizer.from_pretrained(d)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"pip install \"quark-jax\[text\]\""):
        Tokenizer.from_pretrained(bundled_checkpoint())


def test_from_pretrained_hub_id_offline(tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (snap / name).write_bytes((bundled_checkpoint() / name).read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = Tokenizer.from_pretrained("org/tiny")
    assert tok.source == str(snap) and tok.decode(tok.encode("Hello world")) == "Hello world"


def test_split_at_stop_cuts_and_closes_the_source():
    closed = []

    def source():
        try:
            yield np.array([[5, 6]], np.int32)
            yield np.array([[7, 4, 9]], np.int32)
            yield np.array([[10]], np.int32)
        finally:
            closed.append(True)

    assert list(split_at_stop(source(), [2, 4])) == [([5, 6], False), ([7], True)]
    assert closed == [True]
    with pytest.raises(ValueError, match=r"one row, got a chunk of shape \[2, 1\]"):
        list(split_at_stop([np.zeros((2, 1), np.int32)], [2]))


def test_decode_stream_stops_before_the_stop_id(bundled):
    ids = bundled.encode("Paris is the capital.", add_special_tokens=False)
    chunks = [np.asarray([ids[:3]]), np.asarray([ids[3:] + [4, 17, 18]]), np.asarray([[19, 20]])]
    assert "".join(bundled.decode_stream(iter(chunks))) == "Paris is the capital."
    assert "".join(bundled.decode_stream(iter(chunks), stop_token_ids=[])) == bundled.decode(
        ids + [4, 17, 18, 19, 20])
