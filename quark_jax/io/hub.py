"""Where a checkpoint name points: an existing local directory, a bundled name, or a Hugging Face Hub id.

:func:`resolve_checkpoint` tries, in this order:

1. an existing local directory (``"path/to/model"``) wins, whatever it is called;
2. a bundled checkpoint name (``"tiny-llama-mxfp4"``, see :mod:`quark_jax.data`);
3. a Hub id (``"org/name"``) through ``huggingface_hub`` (an optional dependency: ``pip install
   "quark-jax[hub]"``): the snapshot in the local Hub cache, downloaded first unless ``local_files_only``.

The Hub client's environment is read when the function is called (not when a module is imported):
``HF_HUB_OFFLINE=1`` means ``local_files_only=True``; the cache folder is ``cache_dir`` if given, else
``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub`` -- the folders ``huggingface_hub`` itself uses (``HF_TOKEN`` and ``HF_ENDPOINT`` are
left to it). Only the files a decoder and its tokenizer need are downloaded (``CHECKPOINT_FILES``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from quark_jax.data import BUNDLED
from quark_jax.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["resolve_checkpoint", "is_hub_id", "hub_cache_dir", "CHECKPOINT_FILES"]

CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model")
"""Patterns of the files fetched from the Hub: configs, weights, tokenizer and chat template (no ``*.bin``,
``*.pth``, ``*.gguf`` copies of the weights)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub model id, ``"org/name"`` (one slash, no ``..``, no leading ``/``).

    >>> is_hub_id("amd/Llama-3.1-8B-Instruct-FP8-KV"), is_hub_id("./model"), is_hub_id("/abs/path"), is_hub_id("a/b/c")
    (True, False, False, False)
    """
    return bool(_HUB_ID.match(name)) and ".." not in name


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> Path:
    """The Hub cache folder from the environment, as ``huggingface_hub`` reads it (see the module docstring).

    >>> import os; os.environ["HF_HUB_CACHE"] = "/tmp/hub-cache"; str(hub_cache_dir())
    '/tmp/hub-cache'
    >>> del os.environ["HF_HUB_CACHE"]
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def resolve_checkpoint(name: str | os.PathLike, *, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None,
                       local_files_only: bool | None = None) -> Path:
    """The local directory of checkpoint ``name``: a local directory, else a bundled name, else a Hub id.

    ``revision`` (branch, tag or commit; default ``main``) and ``local_files_only`` (default: ``HF_HUB_OFFLINE``)
    apply to Hub ids only. Raises :class:`~quark_jax.errors.CheckpointNotFoundError` naming what was tried when
    nothing matches, :class:`~quark_jax.errors.CheckpointError` when ``huggingface_hub`` is needed but not
    installed or the Hub fails.

    >>> resolve_checkpoint("tiny-llama-fp8").name
    'tiny_llama_w_fp8_a_fp8_pertensor_static'
    """
    path = Path(name)
    if path.is_dir():
        return path
    text = str(name)
    if text in BUNDLED:
        return BUNDLED[text]
    if path.exists():
        raise CheckpointNotFoundError(f"checkpoint {text!r}: expected a directory (config.json + safetensors), "
                                      "found a file")
    if not is_hub_id(text):
        raise CheckpointNotFoundError(f"checkpoint {text!r}: no such directory, not a bundled name "
                                      f"({', '.join(sorted(BUNDLED))}) and not a Hugging Face Hub id (org/name)")
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(f"checkpoint {text!r}: no such directory or bundled name; to open it as a Hugging Face "
                              "Hub id, install huggingface_hub (pip install \"quark-jax[hub]\")") from None
    offline = _env_flag("HF_HUB_OFFLINE") if local_files_only is None else local_files_only
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    try:
        snapshot = huggingface_hub.snapshot_download(text, revision=revision, cache_dir=cache, local_files_only=offline,
                                                     allow_patterns=list(CHECKPOINT_FILES))
    except LocalEntryNotFoundError:
        how = "offline (local_files_only / HF_HUB_OFFLINE=1)" if offline else "and could not be downloaded"
        raise CheckpointNotFoundError(f"checkpoint {text!r}: no such directory or bundled name, and Hub id {text!r} "
                              f"(revision {revision or 'main'}) is not in the Hub cache {cache} {how}") from None
    except Exception as e:  # the Hub client's errors: unknown repo, gated repo, network, ...
        raise CheckpointError(f"checkpoint {text!r}: no such directory or bundled name, and the Hugging Face Hub "
                              f"could not provide it: {type(e).__name__}: {e}") from e
    return Path(snapshot)
