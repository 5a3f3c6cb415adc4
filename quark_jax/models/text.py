"""Text generation: prompt text (or chat messages) in, continuation text out, streamed as it is generated.

:func:`stream_text` encodes the prompt with the checkpoint's :class:`~quark_jax.models.Tokenizer` (plain text, or
the chat template for a list of messages / ``system=``), runs the model's token stream (chunks of ``chunk_size``
tokens from the device-side decode loop, :func:`quark_jax.models.generate_stream`), stops at the first stop id (the
tokenizer's EOS and end-of-turn ids, or ``eos_token_id``) and yields the new text of each chunk through a :class:`~quark_jax.models.StreamDecoder`,
so a multi-byte character split across tokens is never cut. :func:`generate_text` joins the pieces.

>>> from quark_jax.models import from_pretrained            # doctest: +SKIP
>>> model = from_pretrained("tiny-llama-mxfp4")             # doctest: +SKIP
>>> model.generate_text("Once upon a time", max_new_tokens=16)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np

from quark_jax.models.generation import DEFAULT_CHUNK
from quark_jax.models.tokenizer import Tokenizer

__all__ = ["generate_text", "stream_text", "prompt_ids"]


def prompt_ids(tokenizer: Tokenizer, prompt, *, system: str | None = None, chat: bool | None = None) -> list[int]:
    """The prompt's token ids: ``prompt`` is a string (plain text; the chat template's user turn when ``chat``
    is true or ``system`` is given) or a list of ``{"role", "content"}`` messages (chat template, assistant
    header appended).

    >>> from quark_jax.data import bundled_checkpoint
    >>> tok = Tokenizer.from_pretrained(bundled_checkpoint())
    >>> prompt_ids(tok, "Hi", chat=True) == tok.encode_chat([{"role": "user", "content": "Hi"}])
    True
    """
    if isinstance(prompt, str):
        if not (chat or system is not None):
            return tokenizer.encode(prompt)
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence):
        if chat is False:
            raise ValueError("prompt: a list of chat messages needs the chat template (chat=False given)")
        messages = list(prompt)
    else:
        raise TypeError(f"prompt: expected a str or a list of chat messages, got {type(prompt).__name__}")
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m.get("role") != "system"]
    return tokenizer.encode_chat(messages)


def _tokenizer_of(model, tokenizer):
    if tokenizer is not None:
        return tokenizer
    source = getattr(model, "checkpoint_dir", None)
    if source is None:
        raise ValueError("tokenizer: this model was not loaded by from_pretrained (no checkpoint_dir); pass "
                         "tokenizer=Tokenizer.from_pretrained(DIR)")
    return _checkpoint_tokenizer(source)


@functools.lru_cache(maxsize=8)
def _checkpoint_tokenizer(directory: str) -> Tokenizer:
    return Tokenizer.from_pretrained(directory)


def stream_text(model, prompt, max_new_tokens: int = 64, *, tokenizer: Tokenizer | None = None,
                system: str | None = None, chat: bool | None = None, chunk_size: int = DEFAULT_CHUNK,
                temperature: float = 0.0, top_k: int | None = None, seed: int = 0, eos_token_id=None) -> Iterator[str]:
    """The continuation of ``prompt`` as text pieces, yielded as the model generates them (see the module doc).

    The prompt is encoded and the arguments are checked when this is called; the iterator then runs the model.
    ``tokenizer`` defaults to the model checkpoint's (``Tokenizer.from_pretrained(model.checkpoint_dir)``, loaded
    once per directory);
    ``eos_token_id`` (an int or a list) replaces the tokenizer's stop ids; sampling arguments as in
    :func:`quark_jax.models.generate`. Generation ends at a stop id (not part of the text) or after
    ``max_new_tokens`` tokens.
    """
    tokenizer = _tokenizer_of(model, tokenizer)
    ids = np.asarray([prompt_ids(tokenizer, prompt, system=system, chat=chat)], np.int32)
    stops = tokenizer.eos_token_ids if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).tolist())
    chunks = model.generate_stream(ids, max_new_tokens, chunk_size=chunk_size, temperature=temperature, top_k=top_k,
                                   seed=seed, eos_token_id=list(stops) or None)  # arguments checked here, eagerly
    return tokenizer.decode_stream(chunks, stop_token_ids=stops)


def generate_text(model, prompt, max_new_tokens: int = 64, **kwargs) -> str:
    """The continuation of ``prompt`` as one string (:func:`stream_text` joined; same arguments)."""
    return "".join(stream_text(model, prompt, max_new_tokens, **kwargs))
