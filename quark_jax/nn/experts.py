"""``QuarkExperts``: one projection of a mixture-of-experts layer, every expert's weight stacked into [E, N, K].

A MoE layer has two: ``<moe>.experts.gate_up_proj`` (gate and up fused, rows gate then up, N = 2 I) and
``<moe>.experts.down_proj`` (N = hidden). The checkpoint stores one linear per expert, in either spelling:
``<moe>.experts.{i}.{gate,up,down}_proj`` (Quark's exports, HF Qwen3-MoE) or ``<moe>.experts.{i}.w1 / w3 / w2``
(Mixtral's ``block_sparse_moe``; gate = w1, up = w3, down = w2); a float checkpoint may also hold the 3-D
``<moe>.experts.gate_up_proj`` [E, 2I, H] / ``down_proj`` [E, H, I] of transformers 5. Each expert's tensors are read
and validated as a dense layer of the same scheme (:func:`quark_jax.checkpoint.load_layer_params`: errors name the
expert's tensor), then stacked at load (docs/SPEC.md section 13):

* float: ``weight`` [E, N, K] in the model dtype;
* FP8 (:class:`~quark_jax.schemes.QuarkW8A8Fp8`): ``weight`` fp8 [E, N, K]; ``weight_scale`` per tensor [E] (gate and
  up requantized to their max per expert, vLLM's ``QuarkW8A8Fp8MoEMethod``) or per channel [E, N];
  a static ``input_scale``: the max over experts, a scalar (vLLM's rule);
* MXFP4 (W4A4 / W4A8 FP8 static input / W4A16): ``weight`` uint8 [E, N, K/2] packed, ``weight_scale`` uint8 E8M0
  [E, N, K/32] (never dequantized: :func:`quark_jax.kernels.grouped_mm` reads them); W4A8's ``input_scale`` as FP8's.

``expert_scales="checkpoint"`` keeps Quark's per-expert semantics instead (the fixtures' reference): per-tensor
gate / up scales become a per-row scale [E, N] (no requantization) and static input scales stay per expert [E]
(each row quantized with its expert's scale).

Applied to rows sorted by expert (``x`` [M, K], ``group_sizes`` [E], ``row_expert`` [M]), it runs one
:func:`quark_jax.kernels.grouped_mm`; activations are quantized per row as the dense scheme does.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax import kernels, quant
from quark_jax.checkpoint import CheckpointReader, load_layer_params, open_checkpoint
from quark_jax.errors import CheckpointError, UnsupportedSchemeError
from quark_jax.nn.linear import QuarkParam
from quark_jax.schemes import (QuarkScheme, QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4, QuarkW8A8Fp8,
                               qdq_fp8_static)

__all__ = ["QuarkExperts", "EXPERT_PROJECTIONS", "EXPERT_SPELLINGS", "EXPERT_SCALE_MODES", "expert_tensor_paths"]

EXPERT_PROJECTIONS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}
"""A stacked experts module's name -> the per-expert projections it holds, in row order."""

EXPERT_SPELLINGS = {"gate_proj": ("gate_proj", "w1"), "up_proj": ("up_proj", "w3"), "down_proj": ("down_proj", "w2")}
"""A per-expert projection -> its names in checkpoints (HF / Quark first, then Mixtral's w1 / w3 / w2)."""

EXPERT_SCALE_MODES = ("vllm", "checkpoint")
_MXFP4 = (QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, QuarkW4A16MXFP4)


def expert_tensor_paths(reader: CheckpointReader, experts_path: str, expert: int, projection: str) -> str | None:
    """The checkpoint module path of ``projection`` ("gate_proj", "up_proj", "down_proj") of expert ``expert``
    under ``experts_path`` (``...mlp.experts``), in whichever spelling the checkpoint uses; None when absent.

    >>> from quark_jax.data import bundled_checkpoint
    >>> expert_tensor_paths(open_checkpoint(bundled_checkpoint()), "model.layers.0.mlp.experts", 0, "gate_proj") is None
    True
    """
    for spelling in EXPERT_SPELLINGS[projection]:
        path = f"{experts_path}.{expert}.{spelling}"
        if f"{path}.weight" in reader:
            return path
    return None


class QuarkExperts(nnx.Module):
    """The stacked weights of one projection of ``num_experts`` experts and their grouped GEMM.

    Args:
      num_experts: E. in_features: K. logical_widths: the output size of each fused projection ((I, I) for
        gate_up, (H,) for down); N is their sum.
      scheme: None (float), :class:`~quark_jax.schemes.QuarkW8A8Fp8`, or an MXFP4 scheme (W4A4, W4A8 FP8,
        W4A16); anything else is an :class:`~quark_jax.errors.UnsupportedSchemeError` naming the layer.
      dtype: the model dtype (float weights, activations in and out).
      name: the module path ``<moe>.experts.gate_up_proj`` / ``.down_proj`` (errors, checkpoint paths).
      expert_scales: "vllm" (default: vLLM's shared scales) or "checkpoint" (per-expert scales, Quark's).

    ``__call__(x [M, K], group_sizes int32 [E], row_expert int32 [M]) -> [M, N]`` in ``dtype``; rows sorted by
    expert (``row_expert`` non-decreasing, ``group_sizes`` its counts).

    >>> e = QuarkExperts(2, 32, (16,), scheme=None, dtype=jnp.float32, name="m.experts.down_proj")
    >>> e.weight.set_value(jnp.stack([jnp.ones((16, 32)), 2 * jnp.ones((16, 32))])); e = e.mark_loaded()
    >>> e(jnp.ones((3, 32)), jnp.array([1, 2], jnp.int32), jnp.array([0, 1, 1], jnp.int32))[:, 0].tolist()
    [32.0, 64.0, 64.0]
    """

    def __init__(self, num_experts: int, in_features: int, logical_widths: Sequence[int], *,
                 scheme: QuarkScheme | None, dtype, name: str, expert_scales: str = "vllm"):
        self.num_experts, self.in_features = int(num_experts), int(in_features)
        self.logical_widths = tuple(int(w) for w in logical_widths)
        self.out_features = sum(self.logical_widths)
        self.name = name
        self.leaf = name.rpartition(".")[2]
        if self.leaf not in EXPERT_PROJECTIONS or len(EXPERT_PROJECTIONS[self.leaf]) != len(self.logical_widths):
            raise ValueError(f"{name}: expected a name ending in one of {sorted(EXPERT_PROJECTIONS)} with one width "
                             f"per projection, got widths {self.logical_widths}")
        if expert_scales not in EXPERT_SCALE_MODES:
            raise ValueError(f"expert_scales: expected one of {EXPERT_SCALE_MODES}, got {expert_scales!r}")
        self.expert_scales = expert_scales
        self.dtype = jnp.dtype(dtype)
        self.scheme = scheme
        self.kind = _kind_of(scheme, name)
        e, n, k = self.num_experts, self.out_features, self.in_features
        if self.kind == "float":
            self.weight = nnx.Param(jnp.zeros((e, n, k), self.dtype))
            names = ("weight",)
        elif self.kind == "fp8":
            self.weight = QuarkParam(jnp.zeros((e, n, k), jnp.dtype(scheme.fp8_dtype)))
            per_row = scheme.weight_qscheme == "per_channel" or (expert_scales == "checkpoint"
                                                                 and len(self.logical_widths) > 1)
            self.weight_scale = QuarkParam(jnp.zeros((e, n) if per_row else (e,), jnp.float32))
            names = ("weight", "weight_scale")
        else:
            if k % 32:
                raise ValueError(f"{name}: MXFP4 experts need K to be a multiple of 32, got {k}")
            self.weight = QuarkParam(jnp.zeros((e, n, k // 2), jnp.uint8))
            self.weight_scale = QuarkParam(jnp.zeros((e, n, k // 32), jnp.uint8))
            names = ("weight", "weight_scale")
        if self.static_input:
            self.input_scale = QuarkParam(jnp.zeros((e,) if expert_scales == "checkpoint" else (), jnp.float32))
            names += ("input_scale",)
        self.param_names = names
        self.weights_loaded = False  # static: set by load_checkpoint / mark_loaded

    @property
    def static_input(self) -> bool:
        """Whether the activations are quantized with a static (calibrated) per-tensor scale."""
        return getattr(self.scheme, "is_static_input_scheme", False) and self.kind != "float"

    @property
    def experts_path(self) -> str:
        """``<moe>.experts``: the checkpoint module under which the per-expert linears live."""
        return self.name.rpartition(".")[0]

    def summary(self) -> str:
        s = "unquantized" if self.scheme is None else self.scheme.summary()
        return f"{self.num_experts} experts [{self.out_features}, {self.in_features}], {s}"

    def mark_loaded(self) -> "QuarkExperts":
        """Declare the params filled by other means. Returns self."""
        self.weights_loaded = True
        return self

    # ------------------------------------------------------------------ loading
    def _fused_float_tensor(self, reader) -> str | None:
        name = f"{self.experts_path}.{self.leaf}"
        return name if self.kind == "float" and name in reader else None

    def _expert_tensor_names(self, reader: CheckpointReader, i: int) -> list[str]:
        out = []
        for proj in EXPERT_PROJECTIONS[self.leaf]:
            path = expert_tensor_paths(reader, self.experts_path, i, proj)
            if path is not None:
                out += [n for n in reader.tensors_of(path) if n.rpartition(".")[2] != "output_scale"]
        return out

    def tensor_names(self, reader: CheckpointReader) -> list[str]:
        """Every checkpoint tensor this module reads (for the loader's unexpected-tensor check)."""
        fused = self._fused_float_tensor(reader)
        if fused is not None:
            return [fused]
        return [n for i in range(self.num_experts) for n in self._expert_tensor_names(reader, i)]

    def missing_tensors(self, reader: CheckpointReader) -> list[str]:
        """The per-expert weights the checkpoint lacks, named in the HF spelling (empty when complete)."""
        if self._fused_float_tensor(reader) is not None:
            return []
        return [f"{self.experts_path}.{i}.{proj}.weight" for i in range(self.num_experts)
                for proj in EXPERT_PROJECTIONS[self.leaf]
                if expert_tensor_paths(reader, self.experts_path, i, proj) is None]

    def _check_complete(self, reader: CheckpointReader) -> None:
        missing = self.missing_tensors(reader)
        if missing:
            more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
            raise CheckpointError(f"checkpoint {reader.directory}: MoE layer {self.experts_path} "
                                  f"({self.num_experts} experts, {self.summary()}): missing expert tensors "
                                  f"{', '.join(missing[:4])}{more} (also looked for Mixtral's w1 / w3 / w2 names)",
                                  layer=self.experts_path, tensor=missing[0])

    def expert_chunks(self, reader: CheckpointReader, max_bytes: int) -> list[tuple[int, int, int]]:
        """The experts cut into consecutive ranges ``(first, stop, checkpoint bytes)`` of at most ``max_bytes``
        each (at least one expert): the units :meth:`read_experts` reads (``load_weights`` runs one per job).

        >>> from quark_jax.data import bundled_checkpoint
        >>> e = QuarkExperts(4, 32, (16,), scheme=None, dtype=jnp.float32, name="m.experts.down_proj")
        >>> e.expert_chunks(open_checkpoint(bundled_checkpoint()), 1 << 20)  # no such tensors: 0 bytes each
        [(0, 4, 0)]
        """
        fused = self._fused_float_tensor(reader)
        if fused is not None:
            sizes = [reader.nbytes(fused) // self.num_experts] * self.num_experts
        else:
            sizes = [sum(reader.nbytes(n) for n in self._expert_tensor_names(reader, i))
                     for i in range(self.num_experts)]
        chunks, first, total = [], 0, 0
        for i, b in enumerate(sizes):
            if i > first and total + b > max_bytes:
                chunks.append((first, i, total))
                first, total = i, 0
            total += b
        chunks.append((first, self.num_experts, total))
        return chunks

    def read_experts(self, reader: CheckpointReader, first: int, stop: int) -> list[dict[str, np.ndarray]]:
        """Experts ``first .. stop - 1``'s raw params, validated per expert, as host arrays with a leading expert
        axis: one dict per projection (gate, up / down), ``{name: [stop - first, ...]}`` (a single expert's
        arrays are views of what was read: no copy). Thread-safe; :meth:`load_experts` stacks and processes the
        chunks. A transformers-5 fused float tensor is read as those rows only."""
        fused = self._fused_float_tensor(reader)
        if fused is not None:
            return [{"weight": self._read_fused_float(reader, fused, first, stop)}]
        per_expert = [self._read_expert(reader, i) for i in range(first, stop)]
        return [{k: parts[0][k][None] if len(parts) == 1 else np.stack([d[k] for d in parts]) for k in parts[0]}
                for parts in zip(*per_expert)]  # per projection: its dicts over the experts

    def load_experts(self, chunks) -> "QuarkExperts":
        """Stack, process and store the experts from :meth:`read_experts`' chunks (in expert order, covering all
        experts; host or device arrays). The projections' rows are concatenated and the chunks stacked on the
        device. Returns self."""
        processed = _assemble(self.kind, self.scheme, self.expert_scales, self.logical_widths, self.dtype,
                              list(chunks))
        for k in self.param_names:
            getattr(self, k).set_value(processed[k])
        self.weights_loaded = True
        return self

    def load_checkpoint(self, checkpoint: CheckpointReader | str) -> "QuarkExperts":
        """Read every expert's tensors (validated per expert), stack, process and store them. Returns self."""
        reader = open_checkpoint(checkpoint)
        self._check_complete(reader)
        return self.load_experts([self.read_experts(reader, a, b)
                                  for a, b, _ in self.expert_chunks(reader, 1 << 62)])

    def _read_fused_float(self, reader, name, first: int, stop: int) -> np.ndarray:
        info = reader.info(name)
        want = (self.num_experts, self.out_features, self.in_features)
        if tuple(info.shape) != want:
            raise CheckpointError(f"checkpoint {reader.directory}: tensor {name}: expected shape {list(want)} "
                                  f"([experts, N, K]), found {list(info.shape)}", tensor=name, layer=self.name,
                                  expected=str(list(want)), found=str(list(info.shape)))
        if not (info.dtype.kind == "f" or info.dtype.name == "bfloat16") or info.dtype.itemsize < 2:
            raise CheckpointError(f"checkpoint {reader.directory}: tensor {name}: dtype {info.dtype} is quantized, "
                                  "but this MoE layer is float", tensor=name, layer=self.name)
        if (first, stop) == (0, self.num_experts):
            return reader.get(name)
        return reader.get_slice(name, (slice(first, stop),))

    def _read_expert(self, reader, i: int) -> list[dict[str, np.ndarray]]:
        """Expert i's raw params, one dict per projection (as read and validated; no concatenation)."""
        parts = []
        for proj, width in zip(EXPERT_PROJECTIONS[self.leaf], self.logical_widths):
            path = expert_tensor_paths(reader, self.experts_path, i, proj)
            if path is None:
                self._check_complete(reader)
            if self.kind == "float":
                parts.append(self._read_float_expert(reader, path, width))
            else:
                raw = load_layer_params(reader, path, self.scheme, input_size=self.in_features,
                                        logical_widths=(width,), use_bias=False, params_dtype=self.dtype)
                parts.append({k: np.asarray(v) for k, v in raw.items()})
        return parts

    def _read_float_expert(self, reader, path, width) -> dict[str, np.ndarray]:
        name = f"{path}.weight"
        info = reader.info(name)
        if tuple(info.shape) != (width, self.in_features):
            raise CheckpointError(f"checkpoint {reader.directory}: tensor {name}: expected shape "
                                  f"{[width, self.in_features]}, found {list(info.shape)}", tensor=name,
                                  layer=path, expected=str([width, self.in_features]), found=str(list(info.shape)))
        extra = [n for n in reader.tensors_of(path) if n != name and n.rpartition(".")[2] != "output_scale"]
        if extra:
            raise CheckpointError(f"checkpoint {reader.directory}: tensor {extra[0]} of expert layer {path}: this "
                                  "MoE layer is float (no quantization_config applies to it), so it reads only "
                                  f"{name}", tensor=extra[0], layer=path)
        a = reader.get(name)
        if not (a.dtype.kind == "f" or a.dtype.name == "bfloat16") or a.dtype.itemsize < 2:
            raise CheckpointError(f"checkpoint {reader.directory}: tensor {name}: dtype {a.dtype} is quantized, "
                                  "but this MoE layer is float", tensor=name, layer=path)
        return {"weight": a}

    # ------------------------------------------------------------------ forward
    def __call__(self, x, group_sizes, row_expert):
        if not self.weights_loaded:
            raise CheckpointError(f"MoE experts {self.name} ({self.summary()}): called before their weights were "
                                  "loaded", layer=self.name, expected="loaded weights", found="placeholder zeros")
        x = jnp.asarray(x).astype(self.dtype)
        impl = getattr(self.scheme, "impl", "auto")
        impl = impl if impl in ("auto", "xla", "pallas") else "auto"
        if self.kind == "float":
            return kernels.grouped_mm(x, self.weight[...].astype(self.dtype), group_sizes, scheme="bf16",
                                      out_dtype=self.dtype, impl=impl)
        if self.kind == "fp8":
            fp8 = jnp.dtype(self.scheme.fp8_dtype)
            if self.static_input:
                s = self.input_scale[...]
                if s.ndim:  # per expert: each row with its expert's scale
                    s_rows = s[row_expert]
                    q = jax.vmap(lambda r, sr: quant.scaled_fp8_quant(r, sr, dtype=fp8)[0])(x, s_rows)
                    s = s_rows[:, None]
                else:
                    q, s = quant.scaled_fp8_quant(x, s, dtype=fp8)
            else:
                q, s = quant.scaled_fp8_quant(x, per_token=self.scheme.activation == "dynamic_per_token", dtype=fp8)
            return kernels.grouped_mm(q, self.weight[...], group_sizes, w_scale=self.weight_scale[...], x_scale=s,
                                      scheme="fp8", out_dtype=self.dtype, impl=impl)
        mode = type(self.scheme).input_mode
        if mode == "mxfp4":
            x = quant.qdq_mxfp4(x)
        elif mode == "fp8_static":
            s = self.input_scale[...]
            x = (jax.vmap(qdq_fp8_static)(x, s[row_expert]) if s.ndim else qdq_fp8_static(x, s))
        return kernels.grouped_mm(x, self.weight[...], group_sizes, w_scale=self.weight_scale[...], scheme="mxfp4",
                                  out_dtype=self.dtype, impl=impl)


def _kind_of(scheme, name) -> str:
    if scheme is None:
        return "float"
    if isinstance(scheme, QuarkW8A8Fp8):
        return "fp8"
    if isinstance(scheme, _MXFP4):
        if scheme.dequantize_at_load:
            raise UnsupportedSchemeError(f"MoE experts {name}: dequantize_at_load is not supported for experts (the "
                                         "grouped GEMM reads the packed MXFP4 weights)")
        return "mxfp4"
    raise UnsupportedSchemeError(f"MoE experts {name}: scheme {scheme.summary()} is not supported for experts "
                                 "(supported: unquantized, QuarkW8A8Fp8, QuarkW4A4MXFP4, QuarkW4A8MXFP4Fp8, "
                                 "QuarkW4A16MXFP4)")


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _assemble(kind, scheme, expert_scales, widths, dtype, chunks):
    """:meth:`QuarkExperts.read_experts` chunks -> the module's params: per chunk, each param's projections
    concatenated along rows (scalars / vectors per expert side by side), the chunks stacked along experts, then
    :func:`_process`."""
    def rows(a):  # [c, ...] -> [c, rows...]: a per-projection scalar or vector becomes a row of its expert
        return a.reshape(a.shape[0], -1) if a.ndim <= 2 else a

    raw = {k: jnp.concatenate([jnp.concatenate([rows(p[k]) for p in chunk], axis=1) for chunk in chunks], axis=0)
           for k in chunks[0][0]}
    return _process(kind, scheme, expert_scales, widths, dtype, raw)


def _process(kind, scheme, expert_scales, widths, dtype, raw):
    """Stacked raw params (per expert: rows concatenated; per-tensor scales [E, n_proj]) -> the module's params."""
    if kind == "float":
        return {"weight": raw["weight"].astype(dtype)}
    out = {"weight": raw["weight"], "weight_scale": raw["weight_scale"]}
    if "input_scale" in raw:
        per_expert = jnp.max(raw["input_scale"].reshape(raw["input_scale"].shape[0], -1), axis=1)  # [E]
        out["input_scale"] = per_expert if expert_scales == "checkpoint" else jnp.max(per_expert)
    if kind == "mxfp4":
        return out
    w, ws = raw["weight"], raw["weight_scale"].astype(jnp.float32)
    if scheme.fp8_dtype == "float8_e4m3fnuz":
        w, ws, _ = quant.normalize_e4m3fn_to_e4m3fnuz(w, ws)
        if "input_scale" in out:
            out["input_scale"] = out["input_scale"] * 2.0
    if scheme.weight_qscheme == "per_channel":
        out.update(weight=w, weight_scale=ws.reshape(w.shape[0], -1))
    elif len(widths) == 1:  # down_proj: one scale per expert, kept
        out.update(weight=w, weight_scale=ws.reshape(-1))
    elif expert_scales == "checkpoint":  # each projection's rows keep its own scale: exact, no requantization
        rows = jnp.repeat(ws.reshape(w.shape[0], -1), jnp.asarray(widths), axis=1, total_repeat_length=sum(widths))
        out.update(weight=w, weight_scale=rows)
    else:  # vLLM: gate and up requantized to their max scale, per expert
        q, s = jax.vmap(lambda a, b: quant.requantize_with_max_scale(a, b, widths))(w, ws.reshape(w.shape[0], -1))
        out.update(weight=q, weight_scale=s)
    return out

