"""generate_text / stream_text: prompt encoding, the token stream it consumes, stop ids, and the real bundled model."""

import numpy as np
import pytest

from quark_jax.data import bundled_checkpoint
from quark_jax.models import Tokenizer, from_pretrained, generate_text, stream_text
from quark_jax.models.text import prompt_ids


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(bundled_checkpoint())


@pytest.fixture(scope="module")
def model():
    return from_pretrained(bundled_checkpoint())


class FakeStreamModel:
    """A model whose generate_stream replays planned chunks [1, c] and records how it was called."""

    def __init__(self, chunks, checkpoint_dir=None):
        self.chunks, self.calls = chunks, []
        if checkpoint_dir is not None:
            self.checkpoint_dir = str(checkpoint_dir)

    def generate_stream(self, input_ids, max_new_tokens, **kwargs):
        self.calls.append((np.asarray(input_ids).tolist(), max_new_tokens, kwargs))
        for c in self.chunks:
            yield np.asarray([c], np.int32)


def test_stream_text_over_a_fake_token_stream(tok):
    words = tok.encode("What is the capital of France?", add_special_tokens=False)
    fake = FakeStreamModel([words[:1], words[1:5], words[5:] + [4, 99], [100]], bundled_checkpoint())
    pieces = list(stream_text(fake, "Hello", 20, chunk_size=4, temperature=0.5, seed=3))
    assert "".join(pieces) == "What is the capital of France?" and len(pieces) == 3  # one piece per chunk
    (ids, n, kwargs), = fake.calls
    assert ids == [tok.encode("Hello")] and n == 20
    assert kwargs == dict(chunk_size=4, temperature=0.5, top_k=None, seed=3, eos_token_id=[2, 4])
    # an explicit eos_token_id replaces the tokenizer's stop ids; chat prompts go through the template
    fake = FakeStreamModel([words + [4, 99]])
    assert generate_text(fake, [{"role": "user", "content": "Hi"}], tokenizer=tok, eos_token_id=99) == \
        tok.decode(words + [4])
    assert fake.calls[0][0] == [tok.encode_chat([{"role": "user", "content": "Hi"}])]
    assert fake.calls[0][2]["eos_token_id"] == [99]


def test_prompt_ids_plain_chat_and_system(tok):
    assert prompt_ids(tok, "Hi") == tok.encode("Hi")
    user = [{"role": "user", "content": "Hi"}]
    assert prompt_ids(tok, "Hi", chat=True) == prompt_ids(tok, user) == tok.encode_chat(user)
    with_system = tok.encode_chat([{"role": "system", "content": "Be brief."}] + user)
    assert prompt_ids(tok, "Hi", system="Be brief.") == prompt_ids(tok, user, system="Be brief.") == with_system
    with pytest.raises(ValueError, match="chat=False"):
        prompt_ids(tok, user, chat=False)
    with pytest.raises(TypeError, match="expected a str or a list of chat messages, got int"):
        prompt_ids(tok, 5)
    with pytest.raises(ValueError, match="pass tokenizer="):
        generate_text(FakeStreamModel([]), "Hi")
    with pytest.raises(TypeError, match="prompt: expected a str"):  # checked when called, before any iteration
        stream_text(FakeStreamModel([], bundled_checkpoint()), 5)


def test_generate_text_of_the_bundled_model_matches_generate(model, tok):
    """The streamed text is the decoded greedy continuation, cut before the first stop id."""
    prompt = "Once upon a time"
    ids = np.asarray([tok.encode(prompt)], np.int32)
    stops = list(tok.eos_token_ids)
    new = np.asarray(model.generate(ids, 24, eos_token_id=stops))[0, ids.shape[1]:].tolist()
    stop = next((i for i, t in enumerate(new) if t in stops), len(new))
    assert model.generate_text(prompt, 24) == tok.decode(new[:stop])
    pieces = list(model.stream_text(prompt, 24, chunk_size=8))
    assert "".join(pieces) == tok.decode(new[:stop]) and len(pieces) >= 3  # the first token, then chunks of 8
