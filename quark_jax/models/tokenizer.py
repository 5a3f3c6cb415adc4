"""Text in, text out: a checkpoint's tokenizer (``tokenizer.json`` through the ``tokenizers`` package), its chat
template (jinja2) and its stop tokens, and a streaming detokenizer that never splits a UTF-8 character.

Files read from the checkpoint directory (only ``tokenizer.json`` is required):

* ``tokenizer.json`` -- the fast tokenizer (vocabulary, merges, normalizer, pre-tokenizer, decoder, post-processor);
* ``tokenizer_config.json`` -- ``bos_token`` / ``eos_token`` / ... (strings or ``{"content": ...}``),
  ``add_bos_token``, and ``chat_template`` (a string, or a list of ``{"name", "template"}``: ``"default"`` is used);
* ``chat_template.jinja`` -- the chat template as its own file (wins over ``tokenizer_config.json``'s);
* ``generation_config.json`` and ``config.json`` -- ``eos_token_id`` (an int or a list of ints).

The stop ids (:attr:`Tokenizer.eos_token_ids`) are the union of the configs' ``eos_token_id``, the tokenizer
config's ``eos_token`` and the chat template's end-of-turn token: the special token the template writes right
after an assistant message (``<|eot_id|>`` for Llama 3, ``<|im_end|>`` for ChatML templates), found by rendering
a two-turn conversation.

Decoding follows the ``tokenizers`` decoder (no ``transformers``-style ``clean_up_tokenization_spaces``).

>>> from quark_jax.data import bundled_checkpoint
>>> tok = Tokenizer.from_pretrained(bundled_checkpoint())
>>> ids = tok.encode("Hello world")
>>> ids[0] == tok.bos_token_id, tok.decode(ids)
(True, 'Hello world')
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from quark_jax.io.hub import resolve_checkpoint

__all__ = ["Tokenizer", "StreamDecoder", "split_at_stop"]

_SENTINEL = "quark-jax-end-of-turn-probe"
_WINDOW_CONTEXT = 4  # tokens kept before the undecoded ones when the streaming window slides


def _token_text(value) -> str | None:
    """A special token from tokenizer_config.json: a string, ``{"content": ...}`` (a serialized AddedToken) or None."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_ids(value, source: str) -> list[int]:
    """``eos_token_id`` of a config: None, an int or a list of ints."""
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{source}: eos_token_id: expected a non-negative int or a list of them, got {value!r}")
    return list(values)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _select_template(value, source: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" in named:
            return named["default"]
        raise ValueError(f"{source}: chat_template: a list of named templates without 'default' "
                         f"(found {sorted(map(str, named))})")
    raise ValueError(f"{source}: chat_template: expected a string or a list of named templates, got "
                     f"{type(value).__name__}")


def _compile_template(source: str, where: str):
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need jinja2: pip install \"quark-jax[text]\"") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, indent=None):
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"{where}: chat_template is not a valid jinja2 template: {e}") from None


class Tokenizer:
    """A checkpoint's tokenizer: :meth:`encode`, :meth:`decode`, :meth:`apply_chat_template`, stop ids, streaming.

    Build it with :meth:`from_pretrained`. ``tokenizer`` is a ``tokenizers.Tokenizer``; ``config`` the contents of
    ``tokenizer_config.json``; ``chat_template`` the jinja2 source (or None); ``eos_token_ids`` the stop ids from
    the model configs (``eos_token_id``); ``source`` names the directory in messages.
    """

    def __init__(self, tokenizer, *, config: dict | None = None, chat_template: str | None = None,
                 eos_token_ids: Sequence[int] = (), source: str = "tokenizer"):
        self.backend = tokenizer
        self.config = dict(config or {})
        self.source = source
        self.chat_template = chat_template
        self._template = None if chat_template is None else _compile_template(chat_template, source)
        self.special_tokens = {k: _token_text(self.config.get(k))
                               for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        self.bos_token_id = self.token_id(self.special_tokens["bos_token"])
        ids = list(eos_token_ids)
        eos = self.token_id(self.special_tokens["eos_token"])
        if eos is not None:
            ids.append(eos)
        self.end_of_turn_id = self._find_end_of_turn()
        if self.end_of_turn_id is not None:
            ids.append(self.end_of_turn_id)
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))
        """Every id that ends generation: configs' ``eos_token_id``, ``eos_token``, the chat end-of-turn token."""

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, **hub_options) -> "Tokenizer":
        """The tokenizer of a checkpoint directory, bundled name or Hub id (``hub_options``: ``revision``,
        ``cache_dir``, ``local_files_only``; see :func:`quark_jax.io.resolve_checkpoint`).

        Raises FileNotFoundError naming the directory when it has no ``tokenizer.json``, ImportError when the
        ``tokenizers`` package is missing.

        >>> Tokenizer.from_pretrained("tiny-llama-fp8")  # doctest: +ELLIPSIS
        Tokenizer('.../tiny_llama_w_fp8_a_fp8_pertensor_static', vocab 256, eos_token_ids [2, 4], chat template yes)
        """
        directory = resolve_checkpoint(name, **hub_options)
        path = directory / "tokenizer.json"
        if not path.is_file():
            found = sorted({p.name for p in [*directory.glob("tokenizer*"), *directory.glob("*.model")]})
            extra = (f" (found {', '.join(found)}; only tokenizer.json, the fast-tokenizer format, is read)"
                     if found else "")
            raise FileNotFoundError(f"checkpoint {directory}: no tokenizer.json{extra}; text input and output need the "
                                    "model's tokenizer files (tokenizer.json, tokenizer_config.json) in the "
                                    "checkpoint directory; token ids work without them")
        try:
            import tokenizers
        except ImportError:
            raise ImportError("quark_jax.models.Tokenizer needs the tokenizers package: "
                              "pip install \"quark-jax[text]\"") from None
        backend = tokenizers.Tokenizer.from_file(str(path))
        config = _read_json(directory / "tokenizer_config.json")
        template_file = directory / "chat_template.jinja"
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        else:
            template = _select_template(config.get("chat_template"), str(directory / "tokenizer_config.json"))
        eos = []
        for file in ("generation_config.json", "config.json"):
            eos += _as_ids(_read_json(directory / file).get("eos_token_id"), str(directory / file))
        return cls(backend, config=config, chat_template=template, eos_token_ids=eos, source=str(directory))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str | None) -> int | None:
        """The id of a token string (None when ``token`` is None or not in the vocabulary)."""
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` runs the post-processor (BOS for most models) and adds
        ``bos_token`` when ``tokenizer_config.json`` says ``add_bos_token`` and the post-processor did not.

        >>> from quark_jax.data import bundled_checkpoint
        >>> tok = Tokenizer.from_pretrained(bundled_checkpoint())
        >>> tok.encode("Once upon a time"), tok.encode("Once upon a time", add_special_tokens=False)[:2]
        ([1, 234, 243, 83, 103, 246, 74], [234, 243])
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if (add_special_tokens and self.config.get("add_bos_token") and self.bos_token_id is not None
                and ids[:1] != [self.bos_token_id]):
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        """The text of token ids (a sequence or an array, flattened), special tokens left out by default.

        >>> from quark_jax.data import bundled_checkpoint
        >>> tok = Tokenizer.from_pretrained(bundled_checkpoint())
        >>> tok.decode([1, 234, 243, 83, 103, 246, 74, 2]), tok.decode([1, 234, 2], skip_special_tokens=False)
        ('Once upon a time', '<s> Once</s>')
        """
        return self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                   skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[dict], *, add_generation_prompt: bool = True, **variables) -> str:
        """The chat template rendered with ``messages`` (``[{"role": ..., "content": ...}, ...]``), the special
        tokens (``bos_token``, ``eos_token``, ...) and ``add_generation_prompt`` (end with the assistant header);
        ``variables`` go to the template too (``tools=...``, ``date_string=...``).

        >>> from quark_jax.data import bundled_checkpoint
        >>> Tokenizer.from_pretrained(bundled_checkpoint()).apply_chat_template([{"role": "user", "content": "Hi"}])
        '<s><|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if self._template is None:
            raise ValueError(f"{self.source}: no chat template (chat_template in tokenizer_config.json or "
                             "chat_template.jinja); use a plain prompt")
        if isinstance(messages, (str, dict)) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise TypeError("messages: expected a list of {'role': ..., 'content': ...} dicts")
        values = {k: v for k, v in self.special_tokens.items() if v is not None}
        values.update(variables)
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **values)

    def encode_chat(self, messages: Sequence[dict], *, add_generation_prompt: bool = True, **variables) -> list[int]:
        """Ids of the rendered chat template (its special tokens as written by the template; no extra BOS)."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False)

    def stream_decoder(self, *, skip_special_tokens: bool = True) -> "StreamDecoder":
        """A fresh :class:`StreamDecoder` over this tokenizer."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def decode_stream(self, chunks: Iterable, *, stop_token_ids: Iterable[int] | None = None) -> Iterator[str]:
        """Text pieces of a stream of token chunks (each a 1-D sequence or a ``[1, c]`` array), decoded
        incrementally; ends before the first stop id (default :attr:`eos_token_ids`) and closes ``chunks``.

        >>> from quark_jax.data import bundled_checkpoint
        >>> tok = Tokenizer.from_pretrained(bundled_checkpoint())
        >>> ids = tok.encode("Hello world", add_special_tokens=False) + [2, 17]
        >>> "".join(tok.decode_stream([ids[:2], ids[2:]]))
        'Hello world'
        """
        stops = self.eos_token_ids if stop_token_ids is None else tuple(stop_token_ids)
        decoder = self.stream_decoder()
        for ids, stopped in split_at_stop(chunks, stops):
            text = decoder.push(ids)
            if text:
                yield text
            if stopped:
                break
        text = decoder.flush()
        if text:
            yield text

    def _find_end_of_turn(self) -> int | None:
        """The special token the chat template writes right after an assistant message (None without one)."""
        if self._template is None:
            return None
        try:
            text = self.apply_chat_template([{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": _SENTINEL}],
                                            add_generation_prompt=False)
        except Exception:  # a template that refuses this conversation: no end-of-turn token from it
            return None
        at = text.find(_SENTINEL)
        if at < 0:
            return None
        after = text[at + len(_SENTINEL):].lstrip(" \n")
        specials = [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]
        specials += [t for t in (self.special_tokens["eos_token"],) if t]
        matches = [t for t in specials if t and after.startswith(t)]
        return self.token_id(max(matches, key=len)) if matches else None

    def __repr__(self) -> str:
        return (f"Tokenizer({self.source!r}, vocab {self.vocab_size}, eos_token_ids {list(self.eos_token_ids)}, "
                f"chat template {'yes' if self.chat_template else 'no'})")


def split_at_stop(chunks: Iterable, stop_token_ids: Iterable[int]) -> Iterator[tuple[list[int], bool]]:
    """``(ids, stopped)`` per chunk of a one-row token stream, cut before the first stop id (then ``stopped``
    is True, and the source iterator is closed). A chunk is a 1-D sequence or a ``[1, c]`` array.

    >>> list(split_at_stop(iter([[5, 6], [7, 2, 9], [10]]), [2]))
    [([5, 6], False), ([7], True)]
    """
    stops = set(int(s) for s in stop_token_ids)
    it = iter(chunks)
    try:
        for chunk in it:
            arr = np.asarray(chunk)
            if arr.ndim == 2:
                if arr.shape[0] != 1:
                    raise ValueError(f"chunks: text streaming decodes one row, got a chunk of shape {list(arr.shape)}")
                arr = arr[0]
            ids = [int(t) for t in arr.reshape(-1)]
            cut = next((i for i, t in enumerate(ids) if t in stops), None)
            if cut is not None:
                yield ids[:cut], True
                return
            yield ids, False
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class StreamDecoder:
    """Incremental detokenizer: :meth:`push` token ids as they come, get back only the new, complete text.

    Text that ends in an incomplete UTF-8 character (decoded as U+FFFD while its remaining bytes are still to
    come) is held back until a later token completes it, so no character is ever split or emitted twice;
    :meth:`flush` returns what is left at the end (a genuinely invalid byte sequence stays U+FFFD). Decoding works
    on a window of the last tokens (with a few already-emitted ones before them for context: SentencePiece-style
    decoders drop the leading space of the first token), so the cost per push does not grow with the length.
    The concatenation of every piece equals ``tokenizer.decode(all ids)``.

    >>> from quark_jax.data import bundled_checkpoint
    >>> tok = Tokenizer.from_pretrained(bundled_checkpoint())
    >>> dec = tok.stream_decoder()
    >>> [dec.push([i]) for i in tok.encode("a quick test", add_special_tokens=False)] + [dec.flush()]
    ['a', ' qu', 'ick', ' t', 'es', 't', '']
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._start = 0  # first id of the decoding window
        self._emitted = 0  # characters of decode(ids[start:]) already returned

    def _decode_window(self) -> str:
        return self.tokenizer.decode(self.ids[self._start:], skip_special_tokens=self.skip_special_tokens)

    def push(self, ids) -> str:
        """Append token ids (a sequence or 1-D array); returns the newly completed text (maybe ``""``)."""
        self.ids.extend(int(i) for i in np.asarray(ids).reshape(-1))
        text = self._decode_window()
        complete = text.rstrip("\ufffd")
        new = complete[self._emitted:]
        self._emitted = max(self._emitted, len(complete))
        if len(complete) == len(text) and len(self.ids) - self._start > 2 * _WINDOW_CONTEXT:
            # everything decoded is out: slide the window, keeping a few emitted tokens as context
            self._start = len(self.ids) - _WINDOW_CONTEXT
            self._emitted = len(self._decode_window())
        return new

    def flush(self) -> str:
        """The held-back rest (an incomplete character at the very end decodes as U+FFFD)."""
        text = self._decode_window()
        new = text[self._emitted:]
        self._emitted = len(text)
        return new
