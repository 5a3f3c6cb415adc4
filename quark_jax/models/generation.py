"""Generation on the device: one jitted prefill, then jitted chunks of decode steps over a fixed-size KV cache.

* **Programs per model graph.** The model is split into its graph definition and state once per call; the
  jitted programs close over the graph definition and are cached per graph definition, so a call hashes it once
  (never per token) and the weights travel as ordinary (traced) arguments.
* **Prefill** runs the whole prompt in one call. The prompt is right-padded to a bucket (the next power of two,
  at least 16, at most the cache size), so it compiles once per bucket, not once per prompt length. Padded tokens
  sit after the real ones: causal masking keeps them out of the real tokens' attention, and the slots they write
  are overwritten by decode before any query can see them. Only the last real token's logits are computed.
* **Decode** runs up to ``chunk_size`` steps per call in one ``lax.while_loop`` on the device: model step,
  sampling, EOS bookkeeping and the output buffer all traced, so the host does nothing per token. The loop
  stops early once every row has produced an EOS id. The host dispatches the next chunk before reading the
  current one; one compile per model, batch and cache size (sampling settings, step counts and EOS ids are
  traced; the program's output buffer holds :data:`DECODE_CAPACITY` steps, so every ``chunk_size`` up to it
  shares one program). The cache is donated on accelerators.
* **Chunk size.** On a GPU a device call of the decode loop costs a fixed ~5 ms beyond its steps (measured on
  an H200, FP8 8B: 8-step chunks 3.45 ms/step, 32-step chunks 3.0 ms/step, GPU work 2.9 ms/step), and XLA's GPU
  while loop holds the dispatching thread until the loop has (nearly) finished, so chunks do not overlap that
  cost. :func:`generate` therefore runs chunks of :data:`DECODE_CAPACITY` steps; :func:`generate_stream` keeps
  smaller chunks (:data:`DEFAULT_CHUNK`, 32) for latency and pays the per-call cost per chunk (not yet
  explained; passing the state as a flat tuple removed ~7 ms per call on a CPU host but not this).
* **Batches with prompts of different lengths** are left-padded (``attention_mask`` [B, T], 1 = real token, as
  Hugging Face's tokenizers pad on the left for generation; or a list of id lists, padded here): row b's real
  tokens occupy slots ``first_slot[b] .. T-1`` at positions ``0 ..``, padded slots are masked out, and every row
  writes its new tokens at the same slot, so one cache write serves the batch.
* The cache holds ``bucket(prompt + max_new_tokens)`` slots (a multiple of 64; or ``max_cache_len``), never more
  than ``max_position_embeddings``; see :mod:`quark_jax.models.kv_cache` for its layout. Before allocating it,
  :func:`check_fits` compares its size (plus the prefill's working memory) with the device's free memory.
* Sampling: greedy by default (``temperature=0``); ``temperature > 0`` samples from ``softmax(logits / T)``,
  optionally restricted to the ``top_k`` largest logits; the key for the token after slot p is
  ``fold_in(PRNGKey(seed), p)``, so a seed gives the same tokens every time (and chunking does not change them).
* EOS: ``eos_token_id`` is one id or a list (as ``generation_config.json`` holds it). A row stops at its first
  EOS id; later positions of that row are padded with the first id of the list.

``TRACE_COUNTS`` counts how often each program was traced (= compiled), for tests and curious users.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.nn import decode_kernel_warmups, kv_cache_sharding, warm_decode_kernels, warmup
from quark_jax.models.compile_cache import cache_compiler_options, enable_compilation_cache
from quark_jax.models.inputs import check_token_ids

__all__ = ["generate", "generate_stream", "GenerationStats", "TRACE_COUNTS", "prefill_bucket", "cache_size",
           "check_fits", "DeviceMemoryError", "DEFAULT_CHUNK", "DECODE_CAPACITY", "decode_capacity", "kernel_warmups"]

TRACE_COUNTS: collections.Counter = collections.Counter()
"""How often ``prefill`` and ``decode`` were traced by jax.jit in this process."""

DEFAULT_CHUNK = 32
"""Decode steps per device call for :func:`generate_stream` (tokens per yielded chunk). A device call costs ~4-5 ms
beyond its steps on the H200 (measured, FP8 8B: 8-step chunks 3.5 ms/step, 32-step 3.0, 128-step 2.96): 32
keeps ~90% of :func:`generate`'s speed with chunks of ~0.1 s."""

DECODE_CAPACITY = 128
"""Steps the decode program's output buffer holds: the most steps one device call runs for ``chunk_size`` up to
it (a larger ``chunk_size`` compiles a program of that size), and :func:`generate`'s default ``chunk_size``."""


def decode_capacity(chunk_size: int) -> int:
    """The decode program's static buffer size for ``chunk_size``: one program for every chunk <= the capacity.

    >>> decode_capacity(8), decode_capacity(128), decode_capacity(200)
    (128, 128, 200)
    """
    return max(int(chunk_size), DECODE_CAPACITY)


class DeviceMemoryError(MemoryError):
    """The KV cache (plus working memory) does not fit the device's free memory."""


@dataclasses.dataclass
class GenerationStats:
    """Wall times of one :func:`generate` call (seconds; the first call of a shape includes compilation).

    ``prefill_s``: until the first new token is on the host. ``decode_s``: one entry per decode step, each
    chunk's wall time divided by its steps; they sum to the wall time from the first token to the last (on a GPU
    the dispatch of the next chunk returns late, so one chunk's time can land on its neighbour: use the sum or
    :attr:`per_token_s`, not single entries).
    """

    prompt_tokens: int
    new_tokens: int
    prefill_bucket: int
    cache_len: int
    prefill_s: float
    decode_s: list

    @property
    def per_token_s(self) -> float:
        return float(np.mean(self.decode_s)) if self.decode_s else 0.0


def prefill_bucket(prompt_len: int, cache_len: int) -> int:
    """The padded prompt length: next power of two >= max(prompt_len, 16), capped at ``cache_len``.

    >>> prefill_bucket(5, 64), prefill_bucket(17, 64), prefill_bucket(40, 48)
    (16, 32, 48)
    """
    return min(max(16, 1 << (prompt_len - 1).bit_length()), cache_len)


def cache_size(total_len: int, max_positions: int) -> int:
    """Cache slots for ``total_len`` tokens: rounded up to a multiple of 64, capped at ``max_positions``.

    >>> cache_size(21, 128), cache_size(65, 128), cache_size(100, 100)
    (64, 128, 100)
    """
    return min(-(-total_len // 64) * 64, max_positions)


def check_fits(need_bytes: int, what: str, device=None) -> None:
    """Raise :class:`DeviceMemoryError` when ``need_bytes`` more cannot fit ``device``'s free memory (devices
    that report no memory statistics, like the CPU, are not checked).

    >>> check_fits(1 << 20, "a 1 MiB cache")  # CPU: nothing to check
    """
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    if need_bytes > free:
        gib = 1 << 30
        raise DeviceMemoryError(f"{what} needs {need_bytes / gib:.2f} GiB but {device.device_kind} has "
                                f"{free / gib:.2f} GiB free ({stats.get('bytes_in_use', 0) / gib:.2f} GiB in use "
                                f"of {stats['bytes_limit'] / gib:.2f} GiB); use a smaller batch, prompt or "
                                "max_new_tokens")


def _is_eos(tokens, eos):
    return jnp.any(tokens[:, None] == eos[None, :], axis=-1)


def _sample(logits, key, position, temperature, top_k):
    """Next token [B] from logits [B, V]: argmax when temperature == 0, else categorical over logits / T
    restricted to the ``top_k`` largest (ties at the k-th value included), with the key ``fold_in(key, position)``.
    temperature and top_k are traced, so changing them does not recompile; the sampling branch (the key, a sort
    of the logits) only runs when T > 0."""
    logits = logits.astype(jnp.float32)

    def sample(logits):
        key_p = jax.random.fold_in(key, position)
        v = logits.shape[-1]
        k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, v)
        kth = jax.lax.dynamic_index_in_dim(jnp.sort(logits, axis=-1), v - k, axis=-1, keepdims=True)
        masked = jnp.where(logits >= kth, logits / temperature, -jnp.inf)
        return jax.random.categorical(key_p, masked, axis=-1).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sample, greedy, logits)


def _prefill(graphdef, state, cache, input_ids, first_slot, prompt_len, key, temperature, top_k, eos):
    TRACE_COUNTS["prefill"] += 1
    model = nnx.merge(graphdef, state)
    logits, cache = model._cached(input_ids, cache, 0, first_slot, last=prompt_len - 1)  # a static 0: the
    # fused prefill attention applies (the new tokens attend only to each other)
    token = _sample(logits[:, 0], key, prompt_len - 1, temperature, top_k)
    return token, _is_eos(token, eos), cache


def _decode_chunk(graphdef, chunk, state, cache, token, slot, done, first_slot, key, temperature, top_k, eos,
                  n_steps):
    """Up to ``n_steps`` (traced, <= ``chunk``, the static buffer size) decode steps from ``token`` at ``slot``;
    stops once every row is done. Returns (new tokens [B, chunk] (pad after the steps run), steps run, last
    token, next slot, done, cache)."""
    TRACE_COUNTS["decode"] += 1
    model = nnx.merge(graphdef, state)
    pad = eos[0]
    out = jnp.full((token.shape[0], chunk), pad, jnp.int32)

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < n_steps) & ~jnp.all(done)

    def body(carry):
        i, token, slot, done, cache, out = carry
        logits, cache = model._cached(token[:, None], cache, slot, first_slot)
        nxt = _sample(logits[:, 0], key, slot, temperature, top_k)
        nxt = jnp.where(done, pad, nxt)
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i, axis=1)
        return i + 1, nxt, slot + 1, done | _is_eos(nxt, eos), cache, out

    i, token, slot, done, cache, out = jax.lax.while_loop(
        cond, body, (jnp.int32(0), token, slot, done, cache, out))
    return out, i, token, slot, done, cache


def _mesh_sharding(x):
    """x's NamedSharding (a tensor-parallel model's state and cache), else None."""
    s = getattr(x, "sharding", None)
    return s if isinstance(s, jax.sharding.NamedSharding) else None


DECODE_COMPILER_OPTIONS: dict = {}
"""XLA options the decode-chunk program is compiled with on a GPU (only that program: no process-wide
XLA_FLAGS), read when a model's programs are first built."""


PREFILL_COMPILER_OPTIONS: dict = {"xla_gpu_enable_triton_gemm": False}
"""XLA options the prefill program is compiled with on a GPU. XLA's Triton GEMM off: the prefill's XLA GEMMs
(FP8 and bf16 dots at M = prompt tokens) then autotune over cuBLAS(Lt) algorithms only, not hundreds of Triton
configurations. Measured on the H200 (FP8 8B, benchmarks/NOTES.md "Session 8"): first ``generate`` 23.1 -> 10.1 s
(empty cache), the 2048-token prefill's compile 51.7 -> 7.5 s, its run time 111 -> 100 ms. The decode chunk keeps
XLA's default (there the Triton GEMMs are faster: FP8 decode 2.92 vs 3.90 ms/step with them off)."""


def prefill_compiler_options() -> dict:
    """:data:`PREFILL_COMPILER_OPTIONS` on a GPU backend, over ``compile_cache.cache_compiler_options()`` (the
    persistent cache's form of the executable); else none (the options are GPU ones).

    >>> prefill_compiler_options() if jax.default_backend() == "cpu" else {}  # CPU: none
    {}
    """
    return {**cache_compiler_options(), **PREFILL_COMPILER_OPTIONS} if jax.default_backend() == "gpu" else {}


def decode_compiler_options() -> dict:
    """:data:`DECODE_COMPILER_OPTIONS` on a GPU backend, over ``compile_cache.cache_compiler_options()``; else none.

    >>> decode_compiler_options() if jax.default_backend() == "cpu" else {}  # CPU: none
    {}
    """
    return {**cache_compiler_options(), **DECODE_COMPILER_OPTIONS} if jax.default_backend() == "gpu" else {}


class _Programs:
    """The jitted prefill and decode-chunk programs of one model graph definition and state structure.

    The programs take the model state as a flat tuple of arrays (``treedef`` rebuilds it inside): jit flattens
    a tuple of arrays in C++, while an ``nnx.State`` is flattened through Python per Variable on every call
    (measured: ~16 us per leaf, ~9 ms per call for a 32-layer FP8 model on a CPU host)."""

    def __init__(self, graphdef, treedef):
        donate = jax.default_backend() != "cpu"  # CPU buffers are not donatable (jax would warn on every call)

        def prefill(leaves, *args):
            return _prefill(graphdef, jax.tree_util.tree_unflatten(treedef, leaves), *args)

        def decode(chunk, leaves, *args):
            return _decode_chunk(graphdef, chunk, jax.tree_util.tree_unflatten(treedef, leaves), *args)

        self.prefill = jax.jit(prefill, donate_argnums=(1,) if donate else (),
                               compiler_options=prefill_compiler_options() or None)
        self.decode = jax.jit(decode, static_argnums=(0,), donate_argnums=(2,) if donate else (),
                              compiler_options=decode_compiler_options() or None)
        self._warm: dict = {}
        self._warm_kernels: set = set()

    def warm_up_kernels(self, model, batch: int, at: str = "generate") -> list:
        """Once per batch size and caller: compile the model's process-cached decode kernels ahead, in parallel
        (``nn.warmup``; ``at``: "generate" or "compile"); returns the futures."""
        if (batch, at) in self._warm_kernels:
            return []
        self._warm_kernels.add((batch, at))
        return _warm_kernels(model, batch, at)

    def warm_up_decode(self, args, slow=None):
        """Compile the decode chunk for these argument shapes in a background thread (once per shape signature),
        so that its compile overlaps the prefill's; returns a future (or None when already compiled). ``slow``:
        called if the XLA compile (after lowering) runs longer than ``nn.warmup.WARM_AFTER_S`` (not a
        persistent-cache hit)."""
        sig = jax.tree_util.tree_structure(args[1:]), tuple(
            (a.shape, a.dtype) for a in jax.tree_util.tree_leaves(args[1:])), args[0]
        if sig in self._warm:
            return None
        self._warm[sig] = True

        def job():
            lowered = self.decode.lower(*args)
            timer = None if slow is None else threading.Timer(warmup.WARM_AFTER_S, slow)
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                return lowered.compile()
            finally:
                if timer is not None:
                    timer.cancel()

        return _POOL.submit(job)


_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="quark_jax-compile")


def kernel_warmups(model, batch: int) -> list:
    """``[(jitted function, abstract args)]``: :func:`quark_jax.nn.warmup.decode_kernel_warmups` over the model's
    layers: one small program per distinct layer geometry whose decode GEMM runs a process-cached kernel (the
    Mosaic GPU MXFP4 kernel), compiling the same kernel as the decode program (the same hash).

    >>> from quark_jax.data import bundled_checkpoint
    >>> from quark_jax.models import from_pretrained
    >>> kernel_warmups(from_pretrained(bundled_checkpoint()), 1)   # on CPU no layer runs the Mosaic kernel
    []
    """
    return [(fn, args) for _, fn, args in decode_kernel_warmups([m for _, m in nnx.iter_modules(model)], batch)]


def _warm_kernels(model, batch: int, at: str = "generate") -> list:
    """Before the first decode program of ``model`` compiles: the warm-ups not submitted yet in this process
    (``nn.warmup.warm_decode_kernels``: GPU only, ``nn.warmup.DECODE_KERNEL_WARMUP``); their futures."""
    if getattr(model, "mesh", None) is not None:
        return []
    return warm_decode_kernels([m for _, m in nnx.iter_modules(model)], batch, at=at)
_PROGRAMS: dict = {}
_MAX_PROGRAMS = 8  # graph definitions kept (each holds its compiled executables)


def _programs(model):
    """(the model's :class:`_Programs`, its state as a flat tuple of arrays); one Python flatten per call."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    progs = _PROGRAMS.get((graphdef, treedef))
    if progs is None:
        enable_compilation_cache()
        if len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        progs = _PROGRAMS[(graphdef, treedef)] = _Programs(graphdef, treedef)
    return progs, tuple(leaves)


def _eos_ids(eos_token_id) -> np.ndarray | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if np.ndim(eos_token_id) == 0 else list(eos_token_id)
    if not ids or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in ids):
        raise ValueError(f"eos_token_id: expected an int or a non-empty list of ints, got {eos_token_id!r}")
    return np.asarray(ids, np.int32)


def _prompts(input_ids, attention_mask):
    """(ids [B, T] int, first_slot [B]) from an array (+ left-padding mask) or a list of id lists."""
    if isinstance(input_ids, (list, tuple)) and input_ids and all(np.ndim(r) == 1 for r in input_ids):
        if attention_mask is not None:
            raise ValueError("attention_mask: not accepted with a list of prompts (they are padded here)")
        lens = [len(r) for r in input_ids]
        if min(lens) == 0:
            raise ValueError(f"input_ids: prompt {lens.index(0)} is empty")
        ids = np.zeros((len(lens), max(lens)), np.int64)
        for i, r in enumerate(input_ids):
            ids[i, ids.shape[1] - len(r):] = np.asarray(r)
        first = np.asarray([ids.shape[1] - n for n in lens], np.int32)
        return ids, first
    ids = np.asarray(input_ids)
    if attention_mask is None:
        return ids, None
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask: expected shape {list(ids.shape)} (as input_ids), got {list(mask.shape)}")
    mask = mask.astype(bool)
    first = ids.shape[1] - mask.sum(axis=1)
    left = np.arange(ids.shape[1])[None, :] >= first[:, None]
    bad = np.nonzero((left != mask).any(axis=1) | (first == ids.shape[1]))[0]
    if bad.size:
        raise ValueError(f"attention_mask: row {int(bad[0])} is not left-padded with at least one real token "
                         f"(expected 0...0 1...1, got {mask[bad[0]].astype(int).tolist()})")
    return ids, first.astype(np.int32)


def generate_stream(model, input_ids, max_new_tokens: int, *, chunk_size: int = DEFAULT_CHUNK,
                    temperature: float = 0.0, top_k: int | None = None, seed: int = 0, eos_token_id=None,
                    attention_mask=None, max_cache_len: int | None = None):
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens, yielding them as the device produces them.

    An iterator of numpy int32 arrays [B, c] (c <= ``chunk_size``): the first token alone as soon as the prefill
    has run, then chunks of the device-side decode loop. It stops after ``max_new_tokens`` tokens or once every
    row has produced an EOS id (``eos_token_id``: an int or a list); rows that finished earlier are padded with
    the first EOS id. ``input_ids`` is [B, T] (optionally left-padded, ``attention_mask`` [B, T] with 1 for real
    tokens) or a list of id lists of any lengths. Arguments are checked when this is called; concatenating the
    chunks gives :func:`generate`'s new tokens.

    >>> for chunk in model.generate_stream(ids, 32, eos_token_id=[2, 128009]):  # doctest: +SKIP
    ...     print(tokenizer.decode(chunk[0]), end="")
    """
    run = _Run(model, input_ids, max_new_tokens, chunk_size, temperature, top_k, seed, eos_token_id,
               attention_mask, max_cache_len)
    return run.stream()


class _Run:
    """One generation: validated arguments, the programs, and the stream of new tokens."""

    def __init__(self, model, input_ids, max_new_tokens, chunk_size, temperature, top_k, seed, eos_token_id,
                 attention_mask, max_cache_len):
        cfg = model.config
        ids, first = _prompts(input_ids, attention_mask)
        check_token_ids(ids if first is None else np.where(np.arange(ids.shape[1]) >= first[:, None], ids, 0),
                        cfg.vocab_size)
        b, t = ids.shape
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens}")
        if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k: expected a positive integer or None, got {top_k}")
        total = t + max_new_tokens
        if total > cfg.max_position_embeddings:
            raise ValueError(f"prompt ({t} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
                             f"model's max_position_embeddings {cfg.max_position_embeddings}")
        cache_len = max_cache_len or cache_size(total, cfg.max_position_embeddings)
        if cache_len < total:
            raise ValueError(f"max_cache_len: {cache_len} slots cannot hold {total} tokens")
        mesh = getattr(model, "mesh", None)
        data = dict(mesh.shape).get("data", 1) if mesh is not None else 1
        if b % data:
            raise ValueError(f"input_ids: batch {b} is not a multiple of the mesh's 'data' axis of {data} (the "
                             "batch is split over it)")
        self.eos = _eos_ids(eos_token_id)
        self.ids, self.first = ids.astype(np.int32), first
        self.model, self.b, self.t, self.n = model, b, t, int(max_new_tokens)
        self.chunk = int(chunk_size)
        self.capacity = decode_capacity(self.chunk)
        self.cache_len, self.bucket = cache_len, prefill_bucket(t, cache_len)
        self.sampling = (np.float32(temperature), np.int32(cfg.vocab_size if top_k is None else top_k))
        self.seed = seed
        kv_bytes = (2 * cfg.num_hidden_layers * b * cache_len * cfg.num_key_value_heads * cfg.head_dim
                    * np.dtype(model.kv_cache_dtype).itemsize)
        work = 4 * b * self.bucket * (3 * cfg.hidden_size + 2 * cfg.intermediate_size) + (1 << 28)
        check_fits(kv_bytes + work, f"generation with batch {b} and a {cache_len}-slot KV cache "
                                    f"({kv_bytes / (1 << 20):.0f} MiB) plus its working memory")
        self.prefill_s, self.decode_s = 0.0, []

    def stream(self):
        progs, state = _programs(self.model)
        b, t = self.b, self.t
        eos = jnp.asarray(self.eos if self.eos is not None else np.array([-1], np.int32))
        first = jnp.asarray(self.first if self.first is not None else np.zeros((b,), np.int32))
        key = jax.random.PRNGKey(self.seed)
        padded = np.zeros((b, self.bucket), np.int32)
        padded[:, :t] = self.ids
        cache = self.model.init_cache(b, self.cache_len)
        mesh = getattr(self.model, "mesh", None)
        if mesh is not None:  # tensor-parallel: heads over "model", batch over "data"
            cache = jax.device_put(cache, kv_cache_sharding(mesh, self.model.config.num_key_value_heads))

        t0 = time.perf_counter()
        compiling = None
        if self.n > 1:  # the first call of a shape: compile the decode chunk while the prefill compiles and runs
            sds = partial(jax.tree.map, lambda x: jax.ShapeDtypeStruct(  # a mesh's arrays keep their sharding
                jnp.shape(x), jnp.result_type(x), sharding=_mesh_sharding(x)))
            tok = jax.ShapeDtypeStruct((b,), jnp.int32)
            args = (self.capacity, sds(state), sds(cache), tok, sds(jnp.int32(0)), jax.ShapeDtypeStruct((b,), bool),
                    sds(first), sds(key), *sds(self.sampling), sds(eos), sds(np.int32(0)))
            progs.warm_up_kernels(self.model, b)  # first, while no XLA compile holds LLVM: see nn.warmup
            compiling = progs.warm_up_decode(args, slow=partial(progs.warm_up_kernels, self.model, b, "compile"))
        token, done, cache = progs.prefill(state, cache, jnp.asarray(padded), first, np.int32(t), key,
                                           *self.sampling, eos)
        slot = jnp.int32(t)
        if compiling is not None:
            compiling.result()

        def dispatch(n_steps):
            return progs.decode(self.capacity, state, cache, token, slot, done, first, key, *self.sampling, eos,
                                np.int32(n_steps))

        # the first token is read before the first chunk is dispatched: on a GPU the dispatch of a while loop
        # returns only when the loop has (nearly) run, so reading it afterwards would delay it by a chunk and
        # count the chunk as prefill time
        head = np.asarray(token)[:, None]
        t1 = time.perf_counter()  # the prefill is done
        self.prefill_s, t0 = t1 - t0, t1
        left = self.n - 1
        pending = None
        if left:
            pending = dispatch(min(self.chunk, left))
            _, _, token, slot, done, cache = pending
            left -= min(self.chunk, left)
        yield head
        if pending is None or (self.eos is not None and np.isin(head, self.eos).all()):
            return
        while True:
            nxt = None
            if left:
                nxt = dispatch(min(self.chunk, left))
                _, _, token, slot, done, cache = nxt
                left -= min(self.chunk, left)
            out, steps, all_done = np.asarray(pending[0]), int(pending[1]), bool(np.all(np.asarray(pending[4])))
            now = time.perf_counter()
            self.decode_s += [(now - t0) / max(steps, 1)] * steps
            t0 = now
            if steps:
                yield out[:, :steps]
            if nxt is None or all_done:
                return
            pending = nxt


def generate(model, input_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             seed: int = 0, eos_token_id=None, attention_mask=None, max_cache_len: int | None = None,
             chunk_size: int = DECODE_CAPACITY, return_stats: bool = False, checks: bool = False):
    """Continue ``input_ids`` [B, T] by ``max_new_tokens`` tokens; returns ids [B, T + max_new_tokens] (int32).

    Greedy unless ``temperature > 0`` (then ``top_k`` optionally limits the candidates; ``seed`` fixes the draws).
    With ``eos_token_id`` (an int or a list), each row stops at its first EOS id and is padded with the first
    EOS id; generation ends once every row has stopped. Prompts of different lengths: left-pad them with an
    ``attention_mask`` (1 = real token), or pass a list of id lists (left-padded with id 0 in the result).
    ``return_stats=True`` also returns a :class:`GenerationStats`. Same tokens as concatenating
    :func:`generate_stream`'s chunks. ``checks=True`` (debugging) runs ``model(ids, checks=True)`` over the
    prompt before and over prompt + new tokens after generating: a non-finite activation raises
    :class:`~quark_jax.errors.RuntimeCheckError` naming the layer (a full causal pass computes what prefill and
    decode computed, up to the KV cache's FP8 rounding).

    >>> model.generate(np.array([[1, 5, 9]]), max_new_tokens=4).shape  # doctest: +SKIP
    (1, 7)
    """
    run = _Run(model, input_ids, max_new_tokens, chunk_size, temperature, top_k, seed, eos_token_id,
               attention_mask, max_cache_len)
    if checks:
        model(run.ids, checks=True)
    new = np.concatenate(list(run.stream()), axis=1)
    if new.shape[1] < run.n:  # every row stopped early: pad with the (first) eos id
        new = np.concatenate([new, np.full((run.b, run.n - new.shape[1]), run.eos[0], np.int32)], axis=1)
    result = jnp.asarray(np.concatenate([run.ids, new], axis=1))
    if checks:
        model(result, checks=True)
    if return_stats:
        return result, GenerationStats(run.t, run.n, run.bucket, run.cache_len, run.prefill_s, run.decode_s)
    return result
