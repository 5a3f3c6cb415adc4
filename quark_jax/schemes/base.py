"""The scheme lifecycle (vLLM's ``QuarkScheme``, made functional) and the parameter specs schemes declare.

A scheme object is configuration only (a frozen, hashable dataclass, so it can be a static argument of ``jax.jit``
and a static attribute of a Flax module). Its methods take and return arrays:

1. ``create_weights(output_partition_sizes, input_size, params_dtype)`` -> ``{name: ParamSpec}``: the raw
   parameters, named, shaped and typed as the checkpoint stores them (fused layers: shards combined);
2. a loader fills them (``quark_jax.checkpoint.load_layer_params``);
3. ``process_weights_after_loading(params, logical_widths)`` -> params: a jittable pure function, run once;
4. ``apply_weights(params, x, bias=None)`` -> y: a jittable pure function, ``x [..., K] -> y [..., N]`` in x's dtype.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quark_jax.kernels import check_impl

__all__ = ["ParamSpec", "QuarkScheme", "SCALE_DTYPES", "logical_widths_of", "flatten_tokens", "process_params",
           "apply_params", "dequantize_params"]

SCALE_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))
"""Dtypes a checkpoint may store float scales in (Quark follows the model dtype); loaded as float32."""


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """One raw parameter of a layer, as ``process_weights_after_loading`` receives it.

    * ``shape``/``dtype``: the loaded array (all shards combined).
    * ``checkpoint_dtypes``: dtypes a checkpoint may store it in; the loader casts to ``dtype`` (scale dtype
      normalisation: f32/bf16/f16 scales become f32).
    * ``shard_shapes``: the stored shape of each fused shard, in shard order (one entry for an unfused layer).
    * ``combine``: ``"concat"`` (shards are row blocks, concatenated along axis 0), ``"concat_cols"`` (shards are
      column blocks, concatenated along the last axis: Quark's transposed INT4 layout ``[K, N/8]``) or ``"stack"``
      (one scalar per shard, stacked into ``[n_shards]``; stored as shape ``()`` or ``(1,)``).
    * ``required``: a missing optional tensor is left out of the params (e.g. a zero point the scheme ignores).

    >>> spec = ParamSpec(shape=(3,), dtype=np.dtype(np.float32), checkpoint_dtypes=SCALE_DTYPES,
    ...                  shard_shapes=((), (), ()), combine="stack")
    >>> spec.accepts(0, (1,)), spec.accepts(0, (2,))
    (True, False)
    """

    shape: tuple[int, ...]  # the loaded array, all shards combined
    dtype: np.dtype  # its dtype after loading
    checkpoint_dtypes: tuple[np.dtype, ...]  # dtypes a checkpoint may store it in
    shard_shapes: tuple[tuple[int, ...], ...]  # the stored shape of each shard
    combine: str  # "concat" (row blocks), "concat_cols" (column blocks) or "stack" (one scalar per shard)
    required: bool = True  # False: a missing tensor is left out
    doc: str = ""  # what it is, for messages

    @classmethod
    def rows(cls, widths: Sequence[int], trailing: Sequence[int] = (), *, dtype, checkpoint_dtypes=None,
             doc: str = "", required: bool = True) -> "ParamSpec":
        """Row blocks ``[w_i, *trailing]`` of the shards, concatenated into ``[sum(widths), *trailing]``;
        ``checkpoint_dtypes`` defaults to ``(dtype,)``.

        >>> ParamSpec.rows((4, 2), (8,), dtype=np.int8).shard_shapes
        ((4, 8), (2, 8))
        """
        widths, trailing = tuple(int(w) for w in widths), tuple(int(t) for t in trailing)
        dtype = np.dtype(dtype)
        return cls(shape=(sum(widths),) + trailing, dtype=dtype, checkpoint_dtypes=tuple(checkpoint_dtypes or (dtype,)),
                   shard_shapes=tuple((w,) + trailing for w in widths), combine="concat", required=required, doc=doc)

    @classmethod
    def cols(cls, widths: Sequence[int], leading: Sequence[int] = (), *, dtype, checkpoint_dtypes=None,
             doc: str = "", required: bool = True) -> "ParamSpec":
        """Column blocks ``[*leading, w_i]`` of the shards, concatenated into ``[*leading, sum(widths)]``.

        >>> ParamSpec.cols((4, 2), (8,), dtype=np.int32).shape
        (8, 6)
        """
        widths, leading = tuple(int(w) for w in widths), tuple(int(t) for t in leading)
        dtype = np.dtype(dtype)
        return cls(shape=leading + (sum(widths),), dtype=dtype, checkpoint_dtypes=tuple(checkpoint_dtypes or (dtype,)),
                   shard_shapes=tuple(leading + (w,) for w in widths), combine="concat_cols", required=required,
                   doc=doc)

    @classmethod
    def per_shard(cls, n_shards: int, *, dtype=np.float32, checkpoint_dtypes=SCALE_DTYPES, doc: str = "",
                  required: bool = True) -> "ParamSpec":
        """One scalar per shard (stored as ``()`` or ``(1,)``), stacked into ``[n_shards]``.

        >>> ParamSpec.per_shard(3).shape, ParamSpec.per_shard(3).combine
        ((3,), 'stack')
        """
        return cls(shape=(int(n_shards),), dtype=np.dtype(dtype), checkpoint_dtypes=tuple(checkpoint_dtypes),
                   shard_shapes=((),) * int(n_shards), combine="stack", required=required, doc=doc)

    def __post_init__(self):
        if self.combine not in ("concat", "concat_cols", "stack"):
            raise ValueError(f"combine: expected 'concat', 'concat_cols' or 'stack', got {self.combine!r}")

    def accepts(self, shard: int, stored_shape: Sequence[int]) -> bool:
        """Whether a tensor of ``stored_shape`` fits shard ``shard``; scalars may be () or (1,), per-row vectors
        [n] or [n, 1]."""
        want = self.shard_shapes[shard]
        stored = tuple(int(d) for d in stored_shape)
        if stored == want:
            return True
        if len(want) <= 1:  # scales and zero points: size-1 axes do not matter
            return tuple(d for d in stored if d != 1) == tuple(d for d in want if d != 1) and \
                int(np.prod(stored)) == int(np.prod(want))
        return False

    def describe(self, shard: int | None = None) -> str:
        shape = self.shape if shard is None else self.shard_shapes[shard]
        return f"{np.dtype(self.dtype).name} {list(shape)}"

    def shape_dtype(self):
        import jax

        return jax.ShapeDtypeStruct(self.shape, self.dtype)


def logical_widths_of(name: str, rows: int, logical_widths) -> tuple[int, ...]:
    """Validated shard sizes of a layer with ``rows`` outputs; ``None`` means one shard of all rows."""
    if logical_widths is None:
        return (rows,)
    widths = tuple(int(w) for w in logical_widths)
    if not widths or any(w <= 0 for w in widths) or sum(widths) != rows:
        raise ValueError(f"logical_widths: expected positive shard sizes summing to {rows} rows of {name}, "
                         f"got {widths}")
    return widths


def flatten_tokens(x, k: int, what: str):
    """``x [..., K]`` -> ``([T, K], leading shape)``; a clear error when the last axis is not K."""
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"x: expected shape [..., {k}] for {what}, got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected floating-point activations (bf16, f16, f32) for {what}, got {x.dtype}")
    return x.reshape(-1, k), x.shape[:-1]


@dataclass(frozen=True)
class StaticInputQuant:
    """How a scheme quantizes its input with static per-tensor parameters, for a producer kernel that writes the
    codes itself (:meth:`QuarkScheme.static_input_quant`, then :meth:`QuarkScheme.apply_codes`): ``codes`` "fp8"
    (float8_e4m3fn: ``x * scale_reciprocal``, vLLM's clamp / NaN -> max / RNE cast, as
    ``quant.scaled_fp8_quant``) or "int8" (``quant.scaled_int8_quant``: symmetric ``sat8(rne(x / scale))``, with
    a ``zero_point`` ``sat8(rne(x * (1 / scale)) + zero_point)``).

    >>> StaticInputQuant("int8", 0.5).zero_point is None
    True
    """

    codes: str
    scale: Any
    scale_reciprocal: Any = None
    zero_point: Any = None


@dataclass(frozen=True, kw_only=True)
class QuarkScheme(abc.ABC):
    """Abstract scheme (vLLM's ``QuarkScheme``): config only, hashable; methods are pure functions of arrays.

    ``impl`` picks the GEMM implementation of :mod:`quark_jax.kernels` ("auto", "pallas" or "xla").
    """

    impl: str = "auto"  # GEMM implementation of quark_jax.kernels: "auto", "pallas" or "xla"

    #: how many logical K elements one stored weight column holds (2 for packed MXFP4)
    weight_pack_factor = 1
    #: the quark_jax.kernels entry ``apply_weights`` calls (what ``impl`` selects for), None if none
    kernel_op = None
    #: minimum CUDA compute capability (times 10) that vLLM requires for the scheme (informational here)
    min_capability = 0
    #: whether the tensor-parallel layouts of quark_jax.nn.parallel apply (raw params [N, ...] rows, K along
    #: axis 1, activation statistics per token, per 32-block or reduced through for_shard)
    shardable = False
    #: K elements a row (K) split must keep together on one device (a scale group / MX block), N rows a column
    #: split must (a weight scale block, 8 INT4 columns packed in a word), and whether the raw 2-D tensors are
    #: stored [K, N...] (per-group INT4) instead of [N, K...]
    shard_k_block = 1
    shard_n_block = 1
    shard_transposed = False
    #: with ``shard_transposed``: the processed rank-2 params still stored [K..., N...] (None: all of them; per-group
    #: INT4 repacks its weight to [N, K/2] and keeps its scales / zero points [G, N])
    shard_transposed_params = None
    #: option name -> its allowed values, checked at construction
    choices: ClassVar[Mapping[str, tuple]] = {}

    def __post_init__(self):
        check_impl(self.impl)
        for name, allowed in self.choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {getattr(self, name)!r}")

    @classmethod
    def get_min_capability(cls) -> int:
        """Minimum CUDA compute capability (times 10) that vLLM requires for this scheme (informational here)."""
        return cls.min_capability

    @abc.abstractmethod
    def create_weights(self, output_partition_sizes: Sequence[int], input_size: int,
                       params_dtype: Any = None) -> dict[str, ParamSpec]:
        """Raw parameters as the checkpoint stores them: ``{name: ParamSpec}``."""

    @abc.abstractmethod
    def process_weights_after_loading(self, params: Mapping[str, Any], logical_widths=None) -> dict[str, Any]:
        """Raw loaded params -> the params ``apply_weights`` takes. Jittable; run once per layer."""

    @abc.abstractmethod
    def apply_weights(self, params: Mapping[str, Any], x, bias=None):
        """``x [..., K]`` -> ``y [..., N]`` in x's dtype. Jittable."""

    def static_input_quant(self, params: Mapping[str, Any]) -> StaticInputQuant | None:
        """A :class:`StaticInputQuant` where this scheme quantizes x with static per-tensor parameters that a
        producer kernel can apply (it then hands the codes to :meth:`apply_codes`), else None (the default)."""
        return None

    def apply_codes(self, params: Mapping[str, Any], codes, bias=None, *, out_dtype, finish: bool = True):
        """``apply_weights`` on x already quantized: ``codes`` [..., K] are the codes that quantizing x as
        :meth:`static_input_quant` says gives; the same result, no quantization here (``finish`` as in
        :meth:`apply_unfinished`). Only for schemes whose :meth:`static_input_quant` is not None."""
        raise NotImplementedError(f"{type(self).__name__}: takes no pre-quantized input")

    def takes_transform(self, params: Mapping[str, Any]) -> bool:
        """Whether :meth:`apply_transformed` forms x inside its GEMM (a static FP8 input on the Pallas kernel's
        prologue); default False."""
        return False

    def apply_transformed(self, params: Mapping[str, Any], x, bias=None, *, transform: str, norm_rinv=None,
                          norm_weight=None):
        """``apply_weights`` of ``kernels.prologue.transform_reference(transform, x, norm_rinv, norm_weight)``
        (an RMSNorm's or ``silu(gate) * up``'s output, from their operands), the GEMM forming it itself where it
        can (:meth:`takes_transform`). Default: the XLA composition, then :meth:`apply_weights`."""
        from quark_jax.kernels import transform_reference

        x = jnp.asarray(x)
        x2 = transform_reference(transform, x.reshape(-1, x.shape[-1]),
                                 None if norm_rinv is None else jnp.asarray(norm_rinv).reshape(-1, 1), norm_weight)
        return self.apply_weights(params, x2.reshape(*x.shape[:-1], x2.shape[-1]), bias)

    def apply_unfinished(self, params: Mapping[str, Any], x, bias=None):
        """``apply_weights``, except that a GEMM whose epilogue a consumer kernel can run itself may return its
        unfinished partial sums (``kernels.tiling.SplitSums``; its ``finish()`` is ``apply_weights``' result).
        Default: ``apply_weights``."""
        return self.apply_weights(params, x, bias)

    def dequantize_weight(self, params: Mapping[str, Any]):
        """The weight that ``apply_weights`` effectively multiplies by, as float32 [N, K], from processed params
        (for inspection and error analysis; the GEMMs never materialize it)."""
        w = jnp.asarray(params["weight"]).astype(jnp.float32)
        s = jnp.asarray(params["weight_scale"], jnp.float32)
        return w * (s.reshape(-1, 1) if s.ndim else s)

    def weight_geometry(self, stored_shape: Sequence[int]) -> tuple[int, int]:
        """``(N, K)`` of a layer from its stored ``weight`` shape (default ``[N, K / weight_pack_factor]``)."""
        return int(stored_shape[0]), int(stored_shape[1]) * self.weight_pack_factor

    def for_shard(self, *, token_axes: tuple[str, ...] = (), k_axes: tuple[str, ...] = ()) -> "QuarkScheme":
        """This scheme as it runs on one shard inside ``shard_map``, x split over the mesh axes ``token_axes``
        (its leading axes) and ``k_axes`` (K): a scheme whose activation statistics span those axes (FP8 dynamic
        scales) reduces them across the shards, so each shard quantizes as the unsharded layer does. Default:
        itself (static scales, per-32-block MXFP4 and unquantized inputs need nothing).

        >>> from quark_jax.schemes import QuarkW8A8Fp8
        >>> QuarkW8A8Fp8(activation="dynamic_per_token").for_shard(k_axes=("model",)).amax_axes
        ('model',)
        """
        return self

    #: whether :meth:`process_on_host` processes this scheme's raw params on the host (numpy), with no device
    #: program: a loader then runs no compile per layer geometry (a relayout the host does at memory speed)
    processes_on_host = False

    def process_on_host(self, params: Mapping[str, np.ndarray], logical_widths=None) -> dict[str, np.ndarray]:
        """``process_weights_after_loading`` on host arrays, in numpy, for schemes whose processing is a relayout
        (:attr:`processes_on_host`): the same names, shapes, dtypes and values as the jitted form, as host arrays
        for the loader to send to the device (MXFP4: the scales' [K/32, N] copy). The default raises
        ``NotImplementedError`` (schemes that compute, e.g. FP8's re-quantization of fused shards, process on the
        device).

        >>> from quark_jax.schemes import QuarkW8A8Fp8
        >>> QuarkW8A8Fp8().processes_on_host
        False
        """
        raise NotImplementedError(f"{type(self).__name__}: processes its params on the device")

    def runs_process_cached_kernel(self, param_names) -> bool:
        """Whether :meth:`apply_weights` at decode sizes (M <= 16 rows) on params named ``param_names`` runs a
        kernel that the runtime compiles once per process and caches across XLA programs by the kernel's hash
        (Mosaic GPU's custom call does; XLA's Triton kernels do not): compiling a layer of each distinct geometry
        ahead (``models.generation`` does, in parallel threads, before the model's programs compile) takes that
        compile off the programs' critical path. Default False.

        >>> from quark_jax.schemes import QuarkW8A8Fp8
        >>> QuarkW8A8Fp8().runs_process_cached_kernel(("weight", "weight_scale"))
        False
        """
        return False

    def check_loaded(self, params: Mapping[str, np.ndarray], layer: str) -> None:
        """Host-side checks of raw loaded params that a jitted function cannot make (default: none)."""

    def for_loaded(self, params: Mapping[str, Any], *, host_raw: Mapping[str, Any] | None = None) -> "QuarkScheme":
        """The scheme a layer runs once its processed params are known: a host-side look at them, made once at
        load (``QuarkLinear`` stores the result as the layer's static scheme), that may pick a faster exact
        kernel variant for this layer's values (MXFP4: the Mosaic kernel's folded decode when every scale byte
        allows it). ``host_raw``: the raw checkpoint params as host arrays, where the loader still holds them
        (looked at instead of the device arrays: no device sync per layer). Default: itself. Params that are
        tracers give back itself too (nothing is known).

        >>> from quark_jax.schemes import QuarkW8A8Fp8
        >>> s = QuarkW8A8Fp8(); s.for_loaded({}) is s
        True
        """
        return self

    def replace(self, **changes) -> "QuarkScheme":
        """A copy with some options changed, e.g. ``scheme.replace(impl="xla")``."""
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """One line naming the scheme and its modes, e.g. ``QuarkW8A8Fp8(weight per_tensor, input static)``."""
        fields = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self) if f.name != "impl"]
        return f"{type(self).__name__}({', '.join(fields)})"

    def _widths(self, rows: int, logical_widths) -> tuple[int, ...]:
        return logical_widths_of(type(self).__name__ + " weight", rows, logical_widths)


@functools.partial(jax.jit, static_argnames=("scheme", "logical_widths"))
def process_params(scheme: QuarkScheme, params: Mapping[str, Any], logical_widths: tuple[int, ...]):
    """``scheme.process_weights_after_loading`` jitted (cached per scheme and shapes)."""
    return scheme.process_weights_after_loading(params, logical_widths)


@functools.partial(jax.jit, static_argnames=("scheme",))
def apply_params(scheme: QuarkScheme, params: Mapping[str, Any], x, bias=None):
    """``scheme.apply_weights`` jitted (cached per scheme and shapes; inlined when called under another jit)."""
    return scheme.apply_weights(params, x, bias)


@functools.partial(jax.jit, static_argnames=("scheme",))
def dequantize_params(scheme: QuarkScheme, params: Mapping[str, Any]):
    """``scheme.dequantize_weight`` jitted (cached per scheme and shapes)."""
    return scheme.dequantize_weight(params)
