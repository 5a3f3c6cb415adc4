"""Tensor parallelism over a ``jax.sharding.Mesh`` with axes ``"data"`` (the batch) and ``"model"`` (Megatron
splits): the partitioning rules (data, overridable), each Quark layer's shard layout, and its GEMM per shard.

* :class:`PartitionRules`: which role a module path has (``column``, ``heads``, ``kv_heads``, ``row``,
  ``vocab``, ``replicated``; first fnmatch wins) and which ``PartitionSpec`` a parameter of a role gets (by name
  and rank). :data:`DEFAULT_RULES` covers the Llama family (HF / vLLM paths).
* :class:`ShardLayout` / :func:`plan_layer`: a :class:`~quark_jax.nn.QuarkLinear`'s layout on the mesh --
  column-parallel layers hold, per device, their slice of each logical shard (q, k, v / gate, up) in shard order
  (KV heads fewer than the "model" axis: every device holds them all); row-parallel layers their K slice.
* :func:`sharded_apply`: the scheme's ``apply_weights`` inside ``shard_map`` (Pallas calls cannot be partitioned
  automatically): column-parallel -> each device its N slice; row-parallel -> partial sums in float32, ``psum``
  over "model", then the bias and the cast (so a row split changes results only by float32 summation order).

Everything else (attention, norms, embeddings, the float LM head, the KV cache) is partitioned by XLA (GSPMD) from
the parameters' and cache's shardings.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from quark_jax import formats
from quark_jax.errors import InvalidArgumentError

__all__ = ["DATA", "MODEL", "PartitionRules", "DEFAULT_RULES", "ShardLayout", "plan_layer", "param_sharding",
           "sharded_apply", "kv_cache_sharding", "axis_size", "check_mesh"]

DATA, MODEL = "data", "model"

DEFAULT_LAYER_ROLES: tuple[tuple[str, str], ...] = (
    ("*.q_proj", "heads"), ("*.k_proj", "kv_heads"), ("*.v_proj", "kv_heads"), ("*.qkv_proj", "column"),
    ("*.gate_proj", "column"), ("*.up_proj", "column"), ("*.gate_up_proj", "column"),
    ("*.o_proj", "row"), ("*.down_proj", "row"),
    ("lm_head", "column"), ("*embed_tokens", "vocab"),
    ("*", "replicated"),
)
"""(fnmatch pattern of a module path, role), first match wins. A fused layer (``qkv_proj``) is column-parallel
and each logical shard (``q_proj``, ``k_proj``, ``v_proj``) takes its own role."""

DEFAULT_PARAM_SPECS: tuple[tuple[str, str, int | None, tuple], ...] = (
    # (role, param name pattern, rank or None for any, PartitionSpec axes)
    ("column", "kernel", 2, (None, MODEL)),  # nnx.Linear kernel [in, out]: its outputs
    ("column", "weight_scale_kn", 2, (None, MODEL)),  # MXFP4 scales stored [K/32, N] for the Mosaic kernel
    ("column", "*", 0, ()),  # per-tensor scales, zero points: replicated
    ("column", "*", 1, (MODEL,)),  # per-channel scales, azp_adj, bias [N]: with their channels
    ("column", "*", 2, (MODEL, None)),  # weight [N, K] (packed MXFP4 [N, K/2]), E8M0 scales [N, K/32]
    ("row", "kernel", 2, (MODEL, None)),  # nnx.Linear kernel [in, out]: its inputs
    ("row", "weight_scale_kn", 2, (MODEL, None)),  # MXFP4 scales [K/32, N]: with their K slice
    ("row", "azp_adj", 1, (MODEL,)),  # INT8 azp_adj: each device's partial sum over its K slice, stacked
    ("row", "*", 2, (None, MODEL)),  # weight along K (MXFP4: whole 32-blocks), E8M0 scales [N, K/32] with them
    ("row", "*", None, ()),  # per-channel scales, bias, per-tensor scales: replicated (applied after the psum)
    ("vocab", "embedding", 2, (MODEL, None)),  # nnx.Embed [V, H]: over the vocabulary
    ("*", "*", None, ()),  # everything else replicated
)
"""(role, parameter name pattern, rank, PartitionSpec axes) of processed / model parameters; first match wins.
Axes missing from a mesh are dropped (replicated)."""


@dataclass(frozen=True, kw_only=True)
class PartitionRules:
    """Partitioning as data: module roles and parameter specs (see :data:`DEFAULT_LAYER_ROLES` and
    :data:`DEFAULT_PARAM_SPECS`); override either with ``dataclasses.replace`` or the constructor.

    >>> r = PartitionRules(head_dim=16)
    >>> r.role("model.layers.0.self_attn.o_proj"), r.role("model.norm")
    ('row', 'replicated')
    >>> r.spec("row", "weight", 2), r.spec("column", "weight_scale", 0)
    (P(None, 'model'), P())
    """

    layers: tuple[tuple[str, str], ...] = DEFAULT_LAYER_ROLES  # (module path pattern, role)
    params: tuple[tuple[str, str, int | None, tuple], ...] = DEFAULT_PARAM_SPECS  # (role, name, rank, axes)
    head_dim: int | None = None  # the unit of "heads" / "kv_heads" splits (None: any column split)

    def role(self, path: str) -> str:
        """The role of a module path: the first matching pattern's (``"replicated"`` when none matches)."""
        for pattern, role in self.layers:
            if fnmatch.fnmatchcase(path, pattern):
                return role
        return "replicated"

    def spec(self, role: str, name: str, ndim: int) -> PartitionSpec:
        """The ``PartitionSpec`` of parameter ``name`` (rank ``ndim``) of a layer with ``role``."""
        for r, pattern, rank, axes in self.params:
            if fnmatch.fnmatchcase(role, r) and fnmatch.fnmatchcase(name, pattern) and rank in (None, ndim):
                return PartitionSpec(*axes)
        return PartitionSpec()


DEFAULT_RULES = PartitionRules()


def axis_size(mesh: Mesh | None, name: str) -> int:
    """The size of mesh axis ``name`` (1 when the mesh or the axis is absent).

    >>> axis_size(AbstractMesh((2, 4), ("data", "model")), "model"), axis_size(None, "model")
    (4, 1)
    """
    return 1 if mesh is None else int(dict(mesh.shape).get(name, 1))


def check_mesh(mesh) -> Mesh:
    """``mesh`` if it is a ``jax.sharding.Mesh`` (or an ``AbstractMesh``, enough to plan) whose axes are among "data" and "model", else
    InvalidArgumentError.

    >>> check_mesh(AbstractMesh((2,), ("batch",)))
    Traceback (most recent call last):
    ...
    quark_jax.errors.InvalidArgumentError: mesh: expected axes named 'data' and/or 'model', got ('batch',)
    """
    if not isinstance(mesh, (Mesh, AbstractMesh)):
        raise InvalidArgumentError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    bad = [a for a in mesh.axis_names if a not in (DATA, MODEL)]
    if bad:
        raise InvalidArgumentError(f"mesh: expected axes named {DATA!r} and/or {MODEL!r}, got {tuple(mesh.axis_names)}")
    return mesh


def _fit(mesh: Mesh, spec: PartitionSpec) -> PartitionSpec:
    """``spec`` with the axes the mesh lacks (or has with size 1) replaced by None."""
    return PartitionSpec(*(a if a is not None and axis_size(mesh, a) > 1 else None for a in spec))


def param_sharding(mesh: Mesh, rules: PartitionRules, role: str, name: str, ndim: int) -> NamedSharding:
    """The NamedSharding of a parameter (rules, then the mesh's axes: one of size 1 is dropped).

    >>> import numpy as np, jax
    >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    >>> param_sharding(mesh, DEFAULT_RULES, "row", "weight", 2).spec
    P(None, None)
    """
    return NamedSharding(mesh, _fit(mesh, rules.spec(role, name, ndim)))


def kv_cache_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """A KV cache array [B, S, H_kv, D]: the batch over "data", the heads over "model" (replicated when the
    heads do not split evenly, as the k/v projections are).

    >>> import numpy as np, jax
    >>> kv_cache_sharding(Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model")), 2).spec
    P(None, None, None, None)
    """
    n = axis_size(mesh, MODEL)
    return NamedSharding(mesh, _fit(mesh, PartitionSpec(DATA, None, MODEL if num_kv_heads % n == 0 else None, None)))


@dataclass(frozen=True, kw_only=True)
class ShardLayout:
    """How a QuarkLinear is laid out over ``mesh`` (static: part of the graph definition)."""

    mesh: Mesh = field(compare=True)  # the mesh
    role: str  # "column" or "row" ("replicated": every device holds all of it)
    split: tuple[bool, ...]  # column: per logical shard, split over "model" (False: replicated on each device)
    local_widths: tuple[int, ...]  # per logical shard, the rows one device holds
    local_k: int  # the input size one device holds (row: K / model)
    rules: PartitionRules  # the parameter specs
    transposed: bool = False  # the scheme stores weights [K, N...] (per-group INT4): 2-D tensors split on the other axis
    transposed_params: tuple[str, ...] | None = None  # processed rank-2 params stored [K, N...] (None: all when transposed)

    @property
    def model(self) -> int:
        return axis_size(self.mesh, MODEL)

    def spec(self, name: str, ndim: int) -> PartitionSpec:
        """The PartitionSpec of processed parameter ``name`` of rank ``ndim`` (the rules on this mesh; a
        transposed layout swaps the two axes of a rank-2 spec of the ``transposed_params``, all by default)."""
        spec = self.rules.spec(self.role, name, ndim)
        if self.transposed and ndim == 2 and (self.transposed_params is None or name in self.transposed_params):
            spec = PartitionSpec(*reversed(tuple(spec) + (None,) * (2 - len(spec))))
        return _fit(self.mesh, spec)

    def local_index(self, shard: int, width: int, m: int, shape: tuple) -> tuple | None:
        """The slice "model" index ``m`` reads of a raw tensor of logical shard ``shard`` (``width`` rows) with
        stored ``shape``: column -> its rows (when the shard is split and the tensor's N axis holds the outputs,
        or a whole number of them per entry: block scales [N/rows, ...], packed zero points [N/8]); row -> its K
        slice of a 2-D tensor (weight, block scales); None (the whole tensor) otherwise. Transposed layouts
        ([K, N...]) take N from axis 1 and K from axis 0."""
        if self.model == 1 or not shape:
            return None
        n_axis = 1 if self.transposed and len(shape) == 2 else 0
        if self.role == "column" and self.split[shard]:
            lw, entries = self.local_widths[shard], shape[n_axis]
            per = width // entries if entries and width % entries == 0 else 0  # outputs per entry
            if per and lw % per == 0:
                c = lw // per
                idx = [slice(None)] * len(shape)
                idx[n_axis] = slice(m * c, (m + 1) * c)
                return tuple(idx)
            return None
        if self.role == "row" and len(shape) == 2:
            k_axis = 0 if self.transposed else 1
            if shape[k_axis] > 1:
                c = shape[k_axis] // self.model
                idx = [slice(None), slice(None)]
                idx[k_axis] = slice(m * c, (m + 1) * c)
                return tuple(idx)
        return None


def _split_units(role: str, width: int, head_dim: int | None) -> int:
    return width // head_dim if role in ("heads", "kv_heads") and head_dim else width


def plan_layer(path: str, shard_paths: Sequence[str], widths: Sequence[int], input_size: int, *, mesh: Mesh,
               rules: PartitionRules, pack_factor: int = 1, k_block: int = 1, n_block: int = 1,
               transposed: bool = False, transposed_params: tuple[str, ...] | None = None) -> ShardLayout:
    """The layout of layer ``path`` (logical shards ``shard_paths`` of ``widths`` rows, K = ``input_size``) on
    ``mesh``; an InvalidArgumentError when the "model" axis cannot split it (more devices than heads, a K slice
    that is not whole MXFP4 32-blocks or whole ``k_block`` scale groups, a column slice that is not whole
    ``n_block`` rows, a size not divisible). ``transposed``: the scheme's raw 2-D tensors are [K, N...], and of its
    processed ones ``transposed_params`` (None: all) (the QuarkScheme attributes ``shard_k_block``,
    ``shard_n_block``, ``shard_transposed``, ``shard_transposed_params`` give these).

    >>> import numpy as np, jax
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    >>> plan_layer("l.qkv_proj", ("l.q_proj", "l.k_proj", "l.v_proj"), (64, 32, 32), 64, mesh=mesh,
    ...            rules=PartitionRules(head_dim=16)).local_widths
    (64, 32, 32)
    """
    n = axis_size(mesh, MODEL)
    role = rules.role(path)
    roles = [rules.role(s) for s in shard_paths] if len(shard_paths) > 1 else [role]
    if role in ("heads", "kv_heads"):
        role = "column"
    if role == "column":
        split, local = [], []
        for s, r, w in zip(shard_paths, roles, widths):
            units = _split_units(r, w, rules.head_dim)
            if r == "kv_heads" and units % n:
                if n % units:
                    raise InvalidArgumentError(f"layer {path}: {units} KV heads of {s} neither split over nor divide "
                                               f"the 'model' axis of {n}")
                split.append(False)
                local.append(w)
                continue
            if units % n:
                what = f"{units} heads" if r in ("heads", "kv_heads") and rules.head_dim else f"{w} rows"
                raise InvalidArgumentError(f"layer {path}: the 'model' axis of {n} devices does not split the "
                                           f"{what} of {s} evenly (use a smaller 'model' axis)")
            if (w // n) % n_block:
                raise InvalidArgumentError(f"layer {path}: the 'model' axis of {n} splits the {w} rows of {s} into "
                                           f"slices of {w // n}, not whole blocks of {n_block} rows (the scheme's "
                                           f"scale / packing unit; use a smaller 'model' axis)")
            split.append(True)
            local.append(w // n)
        return ShardLayout(mesh=mesh, role="column", split=tuple(split), local_widths=tuple(local),
                           local_k=int(input_size), rules=rules, transposed=transposed,
                           transposed_params=transposed_params)
    if role == "row":
        k = int(input_size)
        if k % n:
            raise InvalidArgumentError(f"layer {path}: K = {k} does not split over the 'model' axis of {n}")
        if pack_factor > 1 and k_block == 1 and (k // n) % formats.MX_BLOCK_SIZE:  # MXFP4 (no k_block given)
            raise InvalidArgumentError(f"layer {path}: the 'model' axis of {n} splits K = {k} into slices of "
                                       f"{k // n}, not whole MXFP4 blocks of {formats.MX_BLOCK_SIZE} (use a "
                                       f"'model' axis of at most {k // formats.MX_BLOCK_SIZE})")
        if k_block > 1 and (k // n) % k_block:
            raise InvalidArgumentError(f"layer {path}: the 'model' axis of {n} splits K = {k} into slices of "
                                       f"{k // n}, not whole groups of {k_block} (the scheme's scale group along "
                                       f"K; use a 'model' axis of at most {max(k // k_block, 1)})")
        return ShardLayout(mesh=mesh, role="row", split=(False,) * len(widths), local_widths=tuple(widths),
                           local_k=k // n, rules=rules, transposed=transposed,
                           transposed_params=transposed_params)
    return ShardLayout(mesh=mesh, role="replicated", split=(False,) * len(widths), local_widths=tuple(widths),
                       local_k=int(input_size), rules=rules, transposed=transposed,
                           transposed_params=transposed_params)


def _token_spec(layout: ShardLayout, x, last):
    d = axis_size(layout.mesh, DATA)
    if d > 1 and (x.ndim < 2 or x.shape[0] % d):
        raise InvalidArgumentError(f"x: the batch (leading axis of {tuple(x.shape)}) must be a multiple of the "
                                   f"'data' axis of {d}")
    lead = (DATA if d > 1 else None,) + (None,) * (x.ndim - 2) if x.ndim >= 2 else ()
    return PartitionSpec(*lead, last)


def sharded_apply(layout: ShardLayout, scheme, params: dict, x, bias=None):
    """``scheme.apply_weights(params, x, bias)`` per shard under ``layout`` (params are the global sharded
    arrays the loader placed; x [B, ..., K] with B a multiple of "data"). Returns y [B, ..., N] in x's dtype,
    in logical shard order, column outputs sharded over "model".

    >>> import numpy as np, jax
    >>> from quark_jax.schemes import UnquantizedLinearMethod
    >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    >>> lay = plan_layer("l.down_proj", ("l.down_proj",), (2,), 3, mesh=mesh, rules=DEFAULT_RULES)
    >>> sharded_apply(lay, UnquantizedLinearMethod(), {"weight": jnp.ones((2, 3))}, jnp.ones((1, 1, 3))).tolist()
    [[[3.0, 3.0]]]
    """
    mesh = layout.mesh
    tok = (DATA,) if axis_size(mesh, DATA) > 1 else ()
    n = layout.model
    pspecs = {k: layout.spec(k, jnp.ndim(v)) for k, v in params.items()}
    if layout.role == "row" and n > 1:
        local = scheme.for_shard(token_axes=tok, k_axes=(MODEL,))
        x_spec = _token_spec(layout, x, MODEL)

        def body(p, xl, b):
            y = lax.psum(local.apply_weights(p, xl.astype(jnp.float32), None), MODEL)
            if b is not None:
                y = y + b.astype(jnp.float32)
            return y.astype(xl.dtype)

        b_spec = None if bias is None else layout.spec("bias", 1)
        out = _token_spec(layout, x, None)
        return jax.shard_map(body, mesh=mesh, in_specs=(pspecs, x_spec, b_spec), out_specs=out,
                             check_vma=False)(params, x, bias)
    local = scheme.for_shard(token_axes=tok)
    x_spec = _token_spec(layout, x, None)
    widths = layout.local_widths
    split = layout.split if layout.role == "column" and n > 1 else (False,) * len(widths)

    def body(p, xl, b):
        y = local.apply_weights(p, xl, b)
        offs = [0]
        for w in widths:
            offs.append(offs[-1] + w)
        return tuple(y[..., offs[i]:offs[i + 1]] for i in range(len(widths)))

    b_spec = None if bias is None else layout.spec("bias", 1)
    outs = tuple(_token_spec(layout, x, MODEL if s else None) for s in split)
    parts = jax.shard_map(body, mesh=mesh, in_specs=(pspecs, x_spec, b_spec), out_specs=outs,
                          check_vma=False)(params, x, bias)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
