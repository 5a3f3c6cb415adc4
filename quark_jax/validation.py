"""``validate_checkpoint``: read every tensor of a checkpoint and report every problem found (``quark-jax check``).

What is checked, each problem reported once and the search continuing after it:

1. the files: ``config.json`` (valid JSON object), ``model.safetensors`` or the index and every shard it names
   (headers, sizes, truncation, tensors stored twice);
2. the ``quantization_config`` (:class:`~quark_jax.QuarkConfig`), and per layer its plan (an unsupported scheme is
   a problem) and everything :func:`~quark_jax.checkpoint.load_layer_params` checks (missing, unexpected, dtype,
   shape, the scheme's own checks); the repeated decoder blocks (``layers.<i>``) store each tensor alike;
3. the values of every tensor (:mod:`quark_jax.value_checks`): scales finite and > 0, E8M0 bytes not 255, FP8
   weights without NaN codes, float tensors finite.

4. for a decoder ``config.json`` (:class:`~quark_jax.models.ModelConfig`): the model it describes, built abstractly
   and quantized as :func:`~quark_jax.models.from_pretrained` does, against the checkpoint's names, dtypes and
   shapes (what :func:`~quark_jax.load_weights` checks from the headers before reading data: a missing norm or
   embedding, a tensor no layer reads, a float tensor of the wrong shape). The first such problem is reported.
Loading (``from_pretrained``, ``load_weights``, ``QuarkLinear.from_pretrained``, ``QuarkDense``) checks 1, 2 and
the scale values of 3 and raises the first problem as :class:`~quark_jax.errors.CheckpointError`.

>>> validate_checkpoint("tiny-llama-fp8")
[]
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from quark_jax.checkpoint import INDEX_FILE, SINGLE_FILE, load_layer_params, open_checkpoint
from quark_jax.config import QuarkConfig
from quark_jax.errors import CheckpointError, QuarkConfigError, QuarkJaxError
from quark_jax.io import SafetensorsFile, read_config_json, resolve_checkpoint
from quark_jax.value_checks import CheckpointProblem, is_scale_name, tensor_problem

__all__ = ["validate_checkpoint", "CheckpointProblem"]


def _files(directory: Path, problems: list) -> list[Path]:
    """The safetensors files of a checkpoint (each problem with the index appended to ``problems``)."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map or \
                    not all(isinstance(n, str) for n in weight_map.values()):
                raise TypeError("expected a non-empty object of tensor name -> file name")
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            problems.append(CheckpointProblem(f"{index}: expected JSON with a 'weight_map' object of tensor -> file "
                                              f"name ({type(e).__name__}: {e})", file=str(index)))
            return sorted(directory.glob("*.safetensors"))
        missing = [n for n in names if not (directory / n).is_file()]
        for n in missing:
            problems.append(CheckpointProblem(f"{index}: maps tensors to {n!r}, which does not exist in {directory}",
                                              file=str(index), expected=n, found="no such file"))
        return [directory / n for n in names if n not in missing]
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    found = sorted(p.name for p in directory.iterdir())
    problems.append(CheckpointProblem(f"checkpoint {directory}: expected {SINGLE_FILE} or {INDEX_FILE}, found {found}",
                                      file=str(directory), expected=f"{SINGLE_FILE} or {INDEX_FILE}", found=str(found)))
    return []


class _HeadersChecked(Exception):
    """Raised by :class:`_HeadersOnly` at the first data read: every header-level check has passed by then."""


def _model_problems(directory: Path, config: dict, reader) -> list[CheckpointProblem]:
    """Check 4 of the module doc (decoder checkpoints only; [] for others)."""
    if "model_type" not in config:
        return []
    from flax import nnx

    from quark_jax.io import CheckpointReader
    from quark_jax.models import LlamaForCausalLM, ModelConfig, moe_block_name
    from quark_jax.nn import load_weights, quantize_model

    class _HeadersOnly(CheckpointReader):
        def get(self, name):
            raise _HeadersChecked(name)

    source = str(directory / "config.json")
    try:
        cfg = ModelConfig.from_dict(config, source=source)
        headers = _HeadersOnly(directory, config=config)
        moe = moe_block_name(headers, cfg)  # Mixtral's block_sparse_moe or mlp
        model = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0), fuse_projections=True,
                                                        moe_module=moe))
        if config.get("quantization_config") is not None:
            d, q, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
            widths = {"qkv_proj": (q * d, kv * d, kv * d), "gate_up_proj": (cfg.intermediate_size,) * 2}
            quantize_model(model, QuarkConfig.from_pretrained(headers), logical_widths=widths)
        ignore = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
        load_weights(model, headers, ignore=ignore, progress=False)
    except _HeadersChecked:
        return []
    except QuarkJaxError as e:
        if isinstance(e, QuarkConfigError):  # reported with the quantization_config below
            return []
        return [CheckpointProblem.from_error(e, file=source if not isinstance(e, CheckpointError) else None)]
    return []


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _layer_consistency(reader) -> list[CheckpointProblem]:
    """The repeated blocks of a decoder (``...layers.<i>...``) store each tensor with one dtype and shape: a tensor
    that differs from the one most layers have is a problem (a check that needs no knowledge of the model)."""
    groups: dict[str, list[str]] = {}
    for name in reader.names():
        if _LAYER_INDEX.search(name):
            groups.setdefault(_LAYER_INDEX.sub(".*.", name, count=1), []).append(name)
    problems = []
    for names in groups.values():
        kinds = [(reader.info(n).dtype.name, tuple(reader.info(n).shape)) for n in names]
        common = max(set(kinds), key=kinds.count)
        if kinds.count(common) * 2 <= len(kinds):  # no majority: nothing to compare against
            continue
        for n, k in zip(names, kinds):
            if k != common:
                problems.append(CheckpointProblem(
                    f"tensor {n!r} (in {reader.file_of(n)}): expected {common[0]} {list(common[1])} like the same "
                    f"tensor of the other {kinds.count(common)} layers, found {k[0]} {list(k[1])}",
                    file=str(reader.file_of(n)), tensor=n, layer=n.rpartition(".")[0], field=n.rpartition(".")[2],
                    expected=f"{common[0]} {list(common[1])}", found=f"{k[0]} {list(k[1])}"))
    return problems


def validate_checkpoint(checkpoint: str | os.PathLike, *, weights: bool = True) -> list[CheckpointProblem]:
    """Every problem of a checkpoint (directory, bundled name or Hub id), in file order; ``[]`` when there is none.

    Reads every tensor once (one at a time); ``weights=False`` checks the values of scales only (not of weights
    and other float tensors). Each :class:`CheckpointProblem` names the file, tensor, layer and
    field where they apply, what was expected and what was found (``str(problem)`` says it in one line).
    A checkpoint that does not exist raises :class:`~quark_jax.errors.CheckpointNotFoundError`.
    """
    directory = resolve_checkpoint(checkpoint)
    problems: list[CheckpointProblem] = []
    config = {}
    try:
        config = read_config_json(directory)
    except QuarkJaxError as e:
        problems.append(CheckpointProblem.from_error(e, file=str(directory / "config.json")))

    # 1. files and their headers; 3. every tensor's values
    readable = []
    for path in _files(directory, problems):
        try:
            f = SafetensorsFile(path)
        except QuarkJaxError as e:
            problems.append(CheckpointProblem.from_error(e, file=str(path)))
            continue
        readable.append(f)
        for name in f.names():
            if not weights and not is_scale_name(name):
                continue
            p = tensor_problem(name, f.get(name), layer=name.rpartition(".")[0], file=path)
            if p is not None:
                problems.append(p)
    if len(readable) != len(_files(directory, [])) or not readable or any(p.file == str(directory / INDEX_FILE)
                                                                          for p in problems):
        return problems
    try:
        reader = open_checkpoint(directory, config=config or None)
    except QuarkJaxError as e:
        problems.append(CheckpointProblem.from_error(e))
        return problems

    problems += _layer_consistency(reader)

    problems += _model_problems(directory, config, reader)

    # 2. the quantization config and each layer's tensors
    qc = config.get("quantization_config")
    if qc is None:
        return problems
    try:
        cfg = QuarkConfig.from_pretrained(reader)
    except QuarkJaxError as e:
        problems.append(CheckpointProblem.from_error(e, file=str(directory / "config.json"),
                                                     field="quantization_config"))
        return problems
    seen = {p.tensor for p in problems if p.tensor}
    for path in reader.weight_layer_paths():
        try:
            plan = cfg.plan(path)
            if plan.status == "unsupported":
                problems.append(CheckpointProblem(f"layer {path}: {' '.join(plan.reason.split())}", layer=path,
                                                  file=str(directory / "config.json"), field="quantization_config"))
                continue
            load_layer_params(reader, path, plan.scheme)
        except QuarkJaxError as e:
            if getattr(e, "tensor", None) in seen:  # a value problem already reported
                continue
            problems.append(CheckpointProblem.from_error(e, layer=path))
    return problems
