"""``QuarkLinear``: a Flax NNX linear layer that runs a Quark scheme (SPEC section 3) on its processed params."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.checkpoint import (CheckpointReader, checkpoint_dtype, layer_geometry, layer_param_specs,
                                  load_layer_params, open_checkpoint)
from quark_jax.config import QuarkConfig
from quark_jax.errors import CheckpointError, InvalidArgumentError
from quark_jax.io import CheckpointSlice
from quark_jax.kernels import tuning
from quark_jax.nn.parallel import MODEL, ShardLayout, axis_size, plan_layer, sharded_apply
from quark_jax.naming import shard_paths
from quark_jax.quant import round_to
from quark_jax.schemes import (QuarkScheme, UnquantizedLinearMethod, apply_params, dequantize_params,
                               logical_widths_of, process_params)
from quark_jax.runtime_checks import check_finite
from quark_jax.value_checks import check_scale, is_scale_name

__all__ = ["QuarkParam", "QuarkLinear", "InputCodes", "TransformedInput", "checkpoint_dtype"]  # checkpoint_dtype re-exported from quark_jax.checkpoint


class QuarkParam(nnx.Variable):
    """A parameter loaded from a Quark checkpoint and processed for inference (quantized weights, scales, zero
    points, bias). Not an ``nnx.Param``, so optimizers built with ``wrt=nnx.Param`` leave it alone."""


@dataclasses.dataclass(frozen=True)
class InputCodes:
    """An activation x [..., K] handed to a :class:`QuarkLinear` already quantized: ``codes`` are the
    float8_e4m3fn or int8 codes of x (``dtype``, the float dtype x had) with the layer's static input
    quantization (:meth:`QuarkLinear.static_input_quant`), as its scheme would compute them; the layer runs its
    GEMM on them without quantizing again (a fused RMSNorm + quantize kernel produces them).

    >>> InputCodes(jnp.zeros((1, 2, 32), jnp.float8_e4m3fn), jnp.bfloat16).shape
    (1, 2, 32)
    """

    codes: Any
    dtype: Any

    @property
    def shape(self):
        return self.codes.shape


@dataclasses.dataclass(frozen=True)
class TransformedInput:
    """An activation x [..., K] handed to a :class:`QuarkLinear` as the operands of the elementwise op that forms
    it (``kernels.prologue.transform_reference``), for a GEMM that forms x in its prologue
    (:meth:`QuarkLinear.takes_transform`; other layers run the XLA composition first): ``transform`` "rmsnorm"
    (``x`` the un-normalized rows [..., K], ``norm_rinv`` [..., 1] float32 = rsqrt(mean(x**2) + eps),
    ``norm_weight`` [K]: the decoder's RMSNorm output) or "silu_mul" (``x`` the fused gate_up output [..., 2K]:
    ``silu(gate) * up``). ``dtype``: x's float dtype.

    >>> TransformedInput("silu_mul", jnp.zeros((1, 2, 64), jnp.bfloat16)).shape
    (1, 2, 32)
    """

    transform: str
    x: Any
    norm_rinv: Any = None
    norm_weight: Any = None

    @property
    def shape(self):
        s = tuple(self.x.shape)
        return s[:-1] + (s[-1] // 2,) if self.transform == "silu_mul" else s

    @property
    def dtype(self):
        return self.x.dtype


@functools.lru_cache(maxsize=512)
def _processed_shapes(scheme: QuarkScheme, widths: tuple, raw: tuple, device: tuple) -> tuple:
    """``((name, shape, dtype name), ...)`` of ``process_params`` on raw params ``((name, shape, dtype name),
    ...)``: traced once per scheme, geometry and device (``tuning.current_device()``: what a scheme stores may
    depend on it, e.g. MXFP4's [K/32, N] scale copy where the Mosaic kernel may run; a model's layers share a
    handful)."""
    del device  # part of the cache key (so is the trace: not ``process_params``, whose jit cache has no device)
    out = jax.eval_shape(lambda p: scheme.process_weights_after_loading(p, widths),
                         {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dt)) for k, shape, dt in raw})
    return tuple((k, tuple(v.shape), np.dtype(v.dtype).name) for k, v in out.items())


class QuarkLinear(nnx.Module):
    """A linear layer ``y = scheme(x) [..., N]`` holding a Quark scheme (static) and its processed params
    (:class:`QuarkParam` variables, so ``nnx.jit``, ``nnx.split`` / ``nnx.merge`` and ``nnx.state`` work).

    Args:
      in_features: K. out_features: N (for a fused layer, the sum of ``logical_widths``).
      scheme: a :class:`~quark_jax.schemes.QuarkScheme`, or None for an unquantized float linear.
      logical_widths: the output sizes of fused shards (q, k, v / gate, up); default one shard.
      use_bias: whether the layer has a bias [N] (kept in ``dtype``, float32 when ``dtype`` is None).
      dtype: the model dtype: x is cast to it and y comes back in it; None keeps x's dtype.
      name: the module path, used in error messages and as the default checkpoint path.

    Params start as zeros of the processed shapes (``abstract=True``: as ``jax.ShapeDtypeStruct``, no memory, as
    under ``nnx.eval_shape`` but without a trace per layer); :meth:`load_params` or :meth:`load_checkpoint` fill them. Calling the layer before that raises
    :class:`~quark_jax.errors.CheckpointError` (also while tracing under ``jax.jit``: ``weights_loaded`` is a
    static attribute); params restored another way (``nnx.update``) are declared with :meth:`mark_loaded`.

    >>> from quark_jax.data import bundled_checkpoint
    >>> layer = QuarkLinear.from_pretrained(bundled_checkpoint("tiny-llama-fp8"), "model.layers.0.self_attn.qkv_proj")
    >>> layer.logical_widths, layer(jnp.ones((2, 3, 64))).shape
    ((64, 32, 32), (2, 3, 128))
    """

    def __init__(self, in_features: int, out_features: int, *, scheme: QuarkScheme | None,
                 logical_widths: Sequence[int] | None = None, use_bias: bool = False, dtype: Any = None,
                 name: str | None = None, abstract: bool = False):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.name = name or "QuarkLinear"
        self.logical_widths = logical_widths_of(f"{self.name}", self.out_features, logical_widths)
        self.scheme = UnquantizedLinearMethod() if scheme is None else scheme
        if not isinstance(self.scheme, QuarkScheme):
            raise TypeError(f"{self.name}: scheme: expected a QuarkScheme or None, got {type(scheme).__name__}")
        self.use_bias = bool(use_bias)
        self.dtype = None if dtype is None else jnp.dtype(dtype)
        try:
            raw = self.raw_param_specs()
        except ValueError as e:
            if type(e) is not ValueError:  # the library's own errors carry their fields
                raise
            raise ValueError(f"layer {self.name} ({self.scheme.summary()}): {e}") from e  # name the layer
        processed = _processed_shapes(self.scheme, self.logical_widths, tuple(
            (k, tuple(v.shape_dtype().shape), np.dtype(v.shape_dtype().dtype).name) for k, v in raw.items()
            if k != "bias" and v.required), tuning.current_device())
        self.param_names = tuple(k for k, _, _ in processed)
        empty = jax.ShapeDtypeStruct if abstract else jnp.zeros
        for k, shape, dt in processed:
            setattr(self, k, QuarkParam(empty(shape, jnp.dtype(dt))))
        self.bias = QuarkParam(empty((self.out_features,), self._float_dtype)) if self.use_bias else None
        self.weights_loaded = False  # static: set by load_params / mark_loaded, checked in __call__
        self.shard_layout = None  # static: a ShardLayout when loaded onto a mesh (load_checkpoint(mesh=...))

    @property
    def _float_dtype(self):
        return self.dtype if self.dtype is not None else jnp.dtype(jnp.float32)

    def raw_param_specs(self):
        """The raw params this layer loads (``scheme.create_weights`` + bias), as the checkpoint stores them."""
        return layer_param_specs(self.scheme, self.logical_widths, self.in_features, use_bias=self.use_bias,
                                 params_dtype=self._float_dtype)

    # ------------------------------------------------------------------ loading
    def load_params(self, raw: Mapping[str, Any]) -> "QuarkLinear":
        """Check raw params (as :meth:`raw_param_specs` declares them), process them with the scheme (jitted) and
        store the result. Returns self."""
        specs = self.raw_param_specs()
        unknown = sorted(set(raw) - set(specs))
        if unknown:
            raise CheckpointError(f"layer {self.name} ({self.scheme.summary()}): unexpected params {unknown}; "
                                  f"expected {sorted(specs)}")
        for k, spec in specs.items():
            if k not in raw:
                if spec.required:
                    raise CheckpointError(f"layer {self.name} ({self.scheme.summary()}): missing param {k!r} "
                                          f"(expected {spec.describe()}, {spec.doc})")
                continue
            a = raw[k]
            if tuple(np.shape(a)) != spec.shape or np.dtype(a.dtype) != spec.dtype:
                raise CheckpointError(f"layer {self.name} ({self.scheme.summary()}): param {k!r}: expected "
                                      f"{spec.describe()}, found {np.dtype(a.dtype).name} {list(np.shape(a))}")
        for k, v in raw.items():  # finite > 0 float scales, E8M0 bytes != 255 (quark_jax.value_checks)
            if is_scale_name(k) and not isinstance(v, jax.core.Tracer):
                check_scale(np.asarray(v), tensor=f"{self.name}.{k}", layer=self.name)
        self.scheme.check_loaded({k: np.asarray(v) for k, v in raw.items() if k != "bias"}, self.name)
        return self._store(raw)

    def _store(self, raw: Mapping[str, Any], *, host_raw: Mapping[str, Any] | None = None) -> "QuarkLinear":
        """Process checked raw params and set the variables. Host (numpy) raw params of a scheme that
        ``processes_on_host`` are processed in numpy and sent to the device as processed (no device program per
        layer geometry, no sync); else the jitted ``process_params`` runs on the device."""
        if host_raw is None and all(isinstance(v, np.ndarray) for v in raw.values()):
            host_raw = raw
        weights = {k: v for k, v in raw.items() if k != "bias"}
        if host_raw is not None and self.scheme.processes_on_host:
            processed = self.scheme.process_on_host({k: v for k, v in host_raw.items() if k != "bias"},
                                                    self.logical_widths)
            for k, v in processed.items():  # the declared (jitted form's) shapes and dtypes, or a clear error
                want = getattr(self, k).get_value() if k in self.param_names else None
                if want is None or tuple(v.shape) != tuple(want.shape) or np.dtype(v.dtype) != np.dtype(want.dtype):
                    raise AssertionError(f"{self.name}: host processing gave {k} {np.dtype(v.dtype).name} "
                                         f"{list(v.shape)}, expected {None if want is None else want.shape}")
            processed = jax.device_put(processed)
        else:
            processed = process_params(self.scheme, weights, self.logical_widths)
        if set(processed) != set(self.param_names):
            raise AssertionError(f"{self.name}: processed params {sorted(processed)} != {sorted(self.param_names)}")
        for k, v in processed.items():
            getattr(self, k).set_value(v)
        if self.use_bias:
            self.bias.set_value(jnp.asarray(raw["bias"], self._float_dtype))
        self.scheme = self.scheme.for_loaded(processed, host_raw=host_raw)  # static: MXFP4's fold where exact
        self.weights_loaded = True
        return self

    def mark_loaded(self) -> "QuarkLinear":
        """Declare the params filled by other means (e.g. ``nnx.update`` from a saved state). Returns self."""
        # decided again from the values now stored; an abstract module (``nnx.eval_shape``) holds
        # ShapeDtypeStructs, which the scheme treats as unknown values (its defaults)
        self.scheme = self.scheme.for_loaded({k: getattr(self, k).get_value() for k in self.param_names})
        self.weights_loaded = True
        return self

    def plan_sharding(self, mesh, rules, layer_path: str | None = None) -> ShardLayout:
        """This layer's :class:`~quark_jax.nn.parallel.ShardLayout` on ``mesh`` under ``rules`` (an
        InvalidArgumentError when the mesh cannot split it)."""
        path = layer_path or self.name
        if not self.scheme.shardable:
            raise InvalidArgumentError(f"layer {path} ({self.scheme.summary()}): tensor parallelism (mesh=) supports "
                                       "the FP8, INT8, MXFP4, OCP MX (not with a per-tensor FP8 input), FP8 "
                                       "per-block, INT4, NVFP4 and unquantized layers; exclude this layer or load "
                                       "without a mesh")
        return plan_layer(path, shard_paths(path), self.logical_widths, self.in_features, mesh=mesh, rules=rules,
                          pack_factor=self.scheme.weight_pack_factor, k_block=self.scheme.shard_k_block,
                          n_block=self.scheme.shard_n_block, transposed=self.scheme.shard_transposed,
                          transposed_params=self.scheme.shard_transposed_params)

    def load_checkpoint(self, checkpoint: CheckpointReader | str | Path, layer_path: str | None = None, *,
                        layout: ShardLayout | None = None) -> "QuarkLinear":
        """Read this layer's raw params from a checkpoint (``layer_path`` defaults to ``name``; fused paths read
        their shards), validate (once, in :func:`quark_jax.checkpoint.load_layer_params`), process and store
        them. Returns self.

        With a ``layout`` (:meth:`plan_sharding`), each "model" index reads only its slice of every tensor
        (validated as a layer of the local sizes), processes it on each device of that index, and the params
        become global arrays with the rules' NamedShardings."""
        path = layer_path or self.name
        if layout is not None:
            return self._load_sharded(open_checkpoint(checkpoint), path, layout)
        return self._store(self.read_checkpoint(checkpoint, path))

    def read_checkpoint(self, checkpoint: CheckpointReader | str | Path, layer_path: str | None = None) -> dict:
        """This layer's raw params as :func:`quark_jax.checkpoint.load_layer_params` reads and validates them
        (host arrays; fused paths concatenated), without processing or storing them: :meth:`load_raw` does that.
        Thread-safe (``load_weights`` reads the next layers while the device processes this one)."""
        return load_layer_params(checkpoint, layer_path or self.name, self.scheme, input_size=self.in_features,
                                 logical_widths=self.logical_widths, use_bias=self.use_bias,
                                 params_dtype=self._float_dtype)

    def load_raw(self, raw: Mapping[str, Any], *, host_raw: Mapping[str, Any] | None = None) -> "QuarkLinear":
        """Process and store raw params returned by :meth:`read_checkpoint` (already validated; host or device
        arrays). ``host_raw``: the same params as host arrays where ``raw`` is their device copy (the scheme's
        load-time look at the values, :meth:`QuarkScheme.for_loaded`, then reads them without a device sync).
        Returns self."""
        return self._store(raw, host_raw=host_raw)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, layer_path: str, *, dtype: Any = None,
                        config: QuarkConfig | None = None, **options) -> "QuarkLinear":
        """Build, load and process one layer of a checkpoint (fused ``...qkv_proj`` / ``...gate_up_proj`` load
        their shards). ``dtype`` defaults to the checkpoint's (config.json ``dtype`` / ``torch_dtype``);
        ``config`` defaults to ``QuarkConfig.from_pretrained(checkpoint_dir, **options)`` (options: impl,
        azp_mode, ...). A checkpoint without ``quantization_config`` gives unquantized layers."""
        reader = open_checkpoint(checkpoint_dir)
        if config is None:
            if "quantization_config" in reader.config:
                config = QuarkConfig.from_pretrained(reader, **options)
        elif options:
            config = config.with_options(**options)
        scheme = config.scheme_for(layer_path) if config is not None else None
        dtype = checkpoint_dtype(reader.config) if dtype is None else dtype
        geo = layer_geometry(reader, layer_path, scheme)
        layer = cls(geo.input_size, geo.output_size, scheme=scheme, logical_widths=geo.logical_widths,
                    use_bias=geo.has_bias, dtype=dtype, name=layer_path)
        return layer.load_checkpoint(reader, layer_path)

    def _load_sharded(self, reader: CheckpointReader, path: str, layout: ShardLayout) -> "QuarkLinear":
        mesh = layout.mesh
        n = layout.model
        model_axis = mesh.axis_names.index(MODEL) if MODEL in mesh.axis_names else None
        widths = layout.local_widths if layout.role == "column" else self.logical_widths
        per_device: dict = {}
        first = mesh.devices.reshape(-1)[0]
        shard_of = {s: (j, w) for j, (s, w) in enumerate(zip(shard_paths(path), self.logical_widths))}
        for m in range(n):
            def index_of(name, shape, m=m):  # this "model" index's slice of the layer's tensors
                hit = shard_of.get(name.rpartition(".")[0])
                return None if hit is None else layout.local_index(hit[0], hit[1], m, shape)

            view = CheckpointSlice(reader, index_of)
            raw = load_layer_params(view, path, self.scheme, input_size=layout.local_k, logical_widths=widths,
                                    use_bias=self.use_bias, params_dtype=self._float_dtype)
            bias = raw.pop("bias", None)
            # processed once per "model" index on the mesh's first device (one compile per geometry; a slice at
            # a time), then copied to each device of that index
            local = process_params(self.scheme, jax.device_put(raw, first), widths)
            if bias is not None:
                local["bias"] = jnp.asarray(bias, self._float_dtype)
            devices = (mesh.devices if model_axis is None else np.take(mesh.devices, [m], axis=model_axis))
            for d in devices.reshape(-1):
                per_device[d] = jax.device_put(local, d)
            del local
        names = list(next(iter(per_device.values())))
        for k in names:
            local = next(iter(per_device.values()))[k]
            spec = layout.spec(k, local.ndim)
            shape = tuple(dim * (axis_size(mesh, a) if a is not None else 1)
                          for dim, a in zip(local.shape, tuple(spec) + (None,) * (local.ndim - len(spec))))
            value = jax.make_array_from_single_device_arrays(
                shape, jax.sharding.NamedSharding(mesh, spec), [per_device[d][k] for d in per_device])
            getattr(self, k).set_value(value)
        self.scheme = self.scheme.for_loaded({})  # no value check across the shards: the default kernel variants
        self.shard_layout = layout
        self.weights_loaded = True
        return self

    # ------------------------------------------------------------------ forward
    def params(self) -> dict[str, jax.Array]:
        """The processed params as a dict (what ``scheme.apply_weights`` takes)."""
        return {k: getattr(self, k)[...] for k in self.param_names}

    def dequantized_weight(self):
        """The effective weight [N, K] float32 (``scheme.dequantize_weight``), e.g. to measure quantization error."""
        return dequantize_params(self.scheme, self.params())

    def static_input_quant(self):
        """The scheme's ``schemes.StaticInputQuant`` when this layer takes x as :class:`InputCodes` (static FP8
        with the stored reciprocal, or static INT8; weights loaded, not sharded), else None."""
        if not self.weights_loaded or self.shard_layout is not None:
            return None
        return self.scheme.static_input_quant(self.params())

    def takes_transform(self) -> bool:
        """Whether this layer forms a :class:`TransformedInput` inside its GEMM (the scheme's
        ``takes_transform``: static FP8; weights loaded, not sharded)."""
        if not self.weights_loaded or self.shard_layout is not None:
            return False
        return self.scheme.takes_transform(self.params())

    def unfinished(self, x):
        """``self(x)``, except that a split-K GEMM may hand back its unfinished partial sums
        (``kernels.tiling.SplitSums``, e.g. the static FP8 scheme on the Pallas kernel at decode) for a consumer
        kernel that runs the epilogue itself (``kernels.add_rmsnorm``); their ``finish()`` is ``self(x)``."""
        if not self.weights_loaded or self.shard_layout is not None or isinstance(x, InputCodes):
            return self(x)
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: x: expected shape [..., {self.in_features}], got {tuple(x.shape)}")
        x = round_to(x, self.dtype if self.dtype is not None else x.dtype)
        bias = self.bias[...] if self.use_bias else None
        return self.scheme.apply_unfinished(self.params(), x, bias)

    def __call__(self, x):
        if not self.weights_loaded:
            raise CheckpointError(f"layer {self.name} ({self.scheme.summary()}): called before its weights were "
                                  "loaded (its params are placeholder zeros); fill them with "
                                  "quark_jax.load_weights(model, checkpoint), layer.load_checkpoint(checkpoint) or "
                                  "layer.load_params(raw), or call layer.mark_loaded() after restoring them",
                                  layer=self.name, expected="loaded weights", found="placeholder zeros")
        if isinstance(x, TransformedInput):  # x's producer (an RMSNorm, SiLU-mul) in the GEMM's prologue
            if x.shape[-1] != self.in_features:
                raise ValueError(f"{self.name}: TransformedInput ({x.transform}): expected [..., {self.in_features}], "
                                 f"got {tuple(x.shape)}")
            bias = self.bias[...] if self.use_bias else None
            if not self.takes_transform():
                from quark_jax.kernels import transform_reference

                v = jnp.asarray(x.x)
                rinv = None if x.norm_rinv is None else jnp.asarray(x.norm_rinv).reshape(-1, 1)
                v2 = transform_reference(x.transform, v.reshape(-1, v.shape[-1]), rinv, x.norm_weight)
                return self(v2.reshape(*x.shape))
            v = round_to(jnp.asarray(x.x), self.dtype if self.dtype is not None else x.dtype)
            return check_finite(self.scheme.apply_transformed(self.params(), v, bias, transform=x.transform,
                                                              norm_rinv=x.norm_rinv, norm_weight=x.norm_weight),
                                self.name)
        if isinstance(x, InputCodes):  # already quantized with this layer's static scale: the GEMM only
            if x.shape[-1] != self.in_features or self.static_input_quant() is None:
                raise ValueError(f"{self.name}: InputCodes input: expected [..., {self.in_features}] codes for a "
                                 f"static FP8 / INT8 scheme, got {tuple(x.shape)} for {self.scheme.summary()}")
            bias = self.bias[...] if self.use_bias else None
            out_dtype = self.dtype if self.dtype is not None else jnp.dtype(x.dtype)
            return check_finite(self.scheme.apply_codes(self.params(), x.codes, bias, out_dtype=out_dtype),
                                self.name)
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: x: expected shape [..., {self.in_features}], got {tuple(x.shape)}")
        # round (not just cast) to the layer dtype: XLA may otherwise skip the rounding of a fused producer
        x = check_finite(round_to(x, self.dtype if self.dtype is not None else x.dtype), self.name, "input")
        bias = self.bias[...] if self.use_bias else None
        if self.shard_layout is not None:
            return check_finite(sharded_apply(self.shard_layout, self.scheme, self.params(), x, bias), self.name)
        return check_finite(apply_params(self.scheme, self.params(), x, bias), self.name)  # checks=True only

