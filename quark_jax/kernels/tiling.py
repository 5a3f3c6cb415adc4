"""What every kernel op shares: the one M-bucketing, the one tuning-table key format, the program ordering, and the
Pallas-Triton GEMM pieces (tile-size checks, the split-K choice, output and epilogue, masked loads and stores).

**M buckets.** A GEMM's row count M falls in the bucket of the smallest bound in ``M_BUCKETS`` that is >= M, or
in ``"max"`` above the last: ``"1"``, ``"16"``, ``"64"``, ``"128"``, ``"256"``, ``"512"``, ``"max"``. Shape classes
name groups of buckets: decode (M <= 16), small (<= 64), medium (<= 512), prefill (larger).

**Table keys.** Every table that depends on the shape (the ``impl="auto"`` tables under ``tuning/`` and each
backend's tuned block configs) maps ``"<bucket>"`` or ``"<bucket>@<K>x<N>"`` (one weight shape) to a value.
:func:`lookup` walks the buckets from M's upward and takes, in each, the exact-shape key before the bucket key: an
entry serves its bucket and the buckets below it that have none.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
from jax import lax

M_BUCKETS = (1, 16, 64, 128, 256, 512)
BUCKETS = tuple(str(b) for b in M_BUCKETS) + ("max",)
SHAPE_CLASSES = {"decode": ("1", "16"), "small": ("64",), "medium": ("128", "256", "512"), "prefill": ("max",)}
_KEY = re.compile(r"^(1|16|64|128|256|512|max)(?:@(\d+)x(\d+))?$")


def m_bucket(m: int) -> str:
    """The bucket of row count ``m``.

    >>> [m_bucket(m) for m in (1, 2, 16, 17, 100, 512, 513)]
    ['1', '16', '16', '64', '128', '512', 'max']
    """
    return next((str(b) for b in M_BUCKETS if m <= b), "max")


def shape_class(m: int) -> str:
    """decode (M <= 16), small (M <= 64), medium (M <= 512), prefill (larger).

    >>> [shape_class(m) for m in (1, 16, 64, 65, 4096)]
    ['decode', 'decode', 'small', 'medium', 'prefill']
    """
    b = m_bucket(m)
    return next(c for c, bs in SHAPE_CLASSES.items() if b in bs)


def table_key(bucket: str, k: int | None = None, n: int | None = None) -> str:
    """``"<bucket>"`` or ``"<bucket>@<K>x<N>"``; raises on a bucket that is not one of ``BUCKETS``.

    >>> table_key("16", 4096, 14336), table_key("max")
    ('16@4096x14336', 'max')
    """
    if bucket not in BUCKETS:
        raise ValueError(f"bucket: expected one of {BUCKETS}, got {bucket!r}")
    return bucket if k is None else f"{bucket}@{k}x{n}"


def check_key(key: str, where: str) -> None:
    """Raise a ValueError naming ``where`` if ``key`` is not a table key."""
    if not _KEY.match(key):
        raise ValueError(f"{where}: key {key!r} is not '<bucket>' or '<bucket>@<K>x<N>' with bucket in {BUCKETS}")


def lookup(table, m: int, k: int, n: int):
    """``(value, key)`` of the entry serving shape (m, k, n), or ``(None, None)``; see the module docstring.

    >>> lookup({"16": "a", "max@4096x4096": "b", "max": "c"}, 2, 4096, 4096)
    ('a', '16')
    >>> lookup({"16": "a", "max@4096x4096": "b", "max": "c"}, 100, 4096, 4096)
    ('b', 'max@4096x4096')
    """
    if not table:
        return None, None
    start = BUCKETS.index(m_bucket(m))
    for b in BUCKETS[start:]:
        for key in (f"{b}@{k}x{n}", b):
            if key in table:
                return table[key], key
    return None, None


def grouped_program(pid, num_m: int, num_n: int, group_m: int):
    """``(pid_m, pid_n)`` of program ``pid`` over a [num_m, num_n] grid of output tiles: programs sweep ``group_m``
    row blocks per column block before moving on (column strips of ``group_m`` row blocks share the weight tile in
    L2); ``group_m == 1`` is row-major order. Works on traced ids (Pallas) and on Python ints.

    >>> [tuple(int(v) for v in grouped_program(p, 3, 2, 2)) for p in range(6)]
    [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)]
    """
    if group_m == 1 or num_m == 1:
        return pid // num_n, pid % num_n
    group = min(group_m, num_m)
    per_group = group * num_n
    # program ids are non-negative: truncating division and remainder need no floor fix-ups
    first_m = lax.div(pid, per_group) * group if not isinstance(pid, int) else (pid // per_group) * group
    size = jnp.minimum(num_m - first_m, group)
    local = lax.rem(pid, per_group) if not isinstance(pid, int) else pid % per_group
    return first_m + local % size, local // size


def pow2_floor(v: int) -> int:
    """The largest power of two <= max(v, 1).

    >>> pow2_floor(96), pow2_floor(1)
    (64, 1)
    """
    return 1 << (max(int(v), 1).bit_length() - 1)


def pow2_ceil(v: int) -> int:
    """The smallest power of two >= v.

    >>> pow2_ceil(5), pow2_ceil(16)
    (8, 16)
    """
    return 1 << max(int(v) - 1, 0).bit_length()


def check_powers_of_two(cfg, names) -> None:
    """Raise a ValueError naming ``Config.<field>`` if a field of ``names`` of the backend config ``cfg`` is not a
    power of two (>= 1): every backend's ``Config.__post_init__`` checks its tile sizes so.

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     block_m: int = 48
    >>> check_powers_of_two(Config(), ("block_m",))
    Traceback (most recent call last):
    ValueError: Config.block_m: expected a power of two, got 48
    """
    for name in names:
        v = getattr(cfg, name)
        if v < 1 or v & (v - 1):
            raise ValueError(f"Config.{name}: expected a power of two, got {v}")


def grow_split_k(split_k: int, *, tiles: int, groups: int, target_programs: int) -> int:
    """The K split of a split-K kernel with ``tiles`` output tiles over ``groups`` K steps (scale groups): doubled
    from ``split_k`` (up to 8, while twice it divides ``groups``) until ``tiles * split_k >= target_programs``,
    then halved until it divides ``groups``.

    >>> grow_split_k(1, tiles=4, groups=32, target_programs=64), grow_split_k(4, tiles=4, groups=6, target_programs=0)
    (8, 2)
    """
    while tiles * split_k < target_programs and split_k < 8 and groups % (2 * split_k) == 0:
        split_k *= 2
    while groups % split_k:
        split_k //= 2
    return split_k


def halve_to_divide(cfg, *, n: int, k: int, min_n: int, min_k: int):
    """``cfg`` (a Config with ``block_n``, ``block_k``, ``split_k``) with each halved until it fits (n, k):
    ``block_n`` divides n (down to ``min_n``), ``split_k`` divides k into multiples of ``min_k`` (down to 1),
    ``block_k`` divides k / split_k (down to ``min_k``).

    >>> C = dataclasses.make_dataclass("C", ["block_n", "block_k", "split_k"])
    >>> halve_to_divide(C(128, 256, 4), n=192, k=96, min_n=64, min_k=32)
    C(block_n=64, block_k=32, split_k=1)
    """
    bn = cfg.block_n
    while n % bn and bn > min_n:
        bn //= 2
    splits = cfg.split_k
    while splits > 1 and k % (splits * min_k):
        splits //= 2
    bk = cfg.block_k
    while (k // splits) % bk and bk > min_k:
        bk //= 2
    return dataclasses.replace(cfg, block_n=bn, block_k=bk, split_k=splits)


def triton_call(kernel, *, cfg, name: str, interpret: bool, **kwargs):
    """``pl.pallas_call`` for a Pallas-Triton backend, launched with ``cfg.num_warps`` / ``cfg.num_stages``
    (every backend's Config has them); ``kwargs`` are pallas_call's (out_shape, grid, in_specs, ...)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    params = plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return pl.pallas_call(kernel, compiler_params=params, interpret=interpret, name=name, **kwargs)


def split_k_output(m: int, n: int, *, splits: int, block_m: int, block_n: int, out_dtype, tile):
    """``(out_shape, out_spec, kernel_out_dtype)`` of a split-K GEMM's ``pallas_call`` over the grid
    (programs, splits): the [M, N] output in ``out_dtype`` for one split, else float32 partial sums [S, M, N] (split
    ``s`` writes slice s; :func:`finish_splits` adds them). ``tile(pid) -> (m tile, n tile)`` of a program.

    >>> shape, spec, dtype = split_k_output(4, 32, splits=2, block_m=16, block_n=16, out_dtype=jnp.bfloat16,
    ...                                     tile=lambda pid: (0, pid))
    >>> shape.shape, dtype.name
    ((2, 4, 32), 'float32')
    """
    from jax.experimental import pallas as pl

    if splits == 1:
        return (jax.ShapeDtypeStruct((m, n), out_dtype), pl.BlockSpec((block_m, block_n), lambda pid, s: tile(pid)),
                out_dtype)
    spec = pl.BlockSpec((getattr(pl, "squeezed", None), block_m, block_n), lambda pid, s: (s, *tile(pid)))
    return jax.ShapeDtypeStruct((splits, m, n), jnp.float32), spec, jnp.dtype(jnp.float32)


def masked_load(ref, mask):
    """Load a Pallas-Triton (sub)ref, reading zeros of the ref's dtype where ``mask`` (broadcastable to the ref's
    block) is False; ``mask=None``: a plain load. The zero is typed: Triton cannot convert an int 0 to fp8.

    >>> from jax.experimental import pallas as pl
    >>> def k(x_ref, o_ref):
    ...     o_ref[...] = masked_load(x_ref, lax.broadcasted_iota(jnp.int32, (4,), 0) < 2)
    >>> pl.pallas_call(k, out_shape=jax.ShapeDtypeStruct((4,), jnp.float32), interpret=True)(jnp.ones(4)).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    if mask is None:
        return ref[...]
    from jax.experimental.pallas import triton as plgpu

    return plgpu.load(ref, mask=mask, other=jnp.zeros((), ref.dtype))


def k_loop(k_steps: int, step, load_step, acc0, *, prefetch: bool, zero=0):
    """A kernel's K loop: ``acc = step(i, acc, load_step(i))`` for i < ``k_steps``. With ``prefetch`` the next step's
    operands are loaded before this step's compute (a register double buffer: ``load_step`` of the last index is
    loaded twice, once unused); ``zero`` is the first index it loads (inside a Pallas kernel pass a traced 0, e.g.
    ``pl.program_id(1) * 0``, so that load has the loop's types).

    >>> int(k_loop(3, lambda i, a, v: a + v, lambda i: i * 10, jnp.int32(0), prefetch=True))
    30
    """
    if not prefetch:
        return lax.fori_loop(0, k_steps, lambda i, a: step(i, a, load_step(i)), acc0)

    def body(i, carry):
        acc, cur = carry
        nxt = load_step(jnp.minimum(i + 1, k_steps - 1))
        return step(i, acc, cur), nxt

    return lax.fori_loop(0, k_steps, body, (acc0, load_step(zero)))[0]


def store_rows(o_ref, value, valid_rows=None) -> None:
    """Store the tile ``value`` [rows, cols] into a Pallas-Triton output ref: only its first ``valid_rows`` rows (a
    traced int32, for a ragged last row tile: the output has exactly M rows), or all of it (``None``).

    >>> from jax.experimental import pallas as pl
    >>> def k(o_ref):
    ...     store_rows(o_ref, jnp.ones((4, 2)), jnp.int32(3))
    >>> pl.pallas_call(k, out_shape=jax.ShapeDtypeStruct((4, 2), jnp.float32), interpret=True)()[:, 0].tolist()[:3]
    [1.0, 1.0, 1.0]
    """
    if valid_rows is None:
        o_ref[...] = value
        return
    from jax.experimental.pallas import triton as plgpu

    shape = value.shape
    valid = lax.broadcasted_iota(jnp.int32, shape, 0) < (valid_rows + jnp.zeros(shape, jnp.int32))
    plgpu.store(o_ref, value, mask=valid)


def finish_splits(parts, bias, out_dtype):
    """The epilogue of a split-K kernel's float32 partial sums ``parts`` [S, ...]: :func:`sum_splits`, plus
    ``bias`` (broadcast to the output, added in float32; None: none), cast to ``out_dtype``.

    >>> finish_splits(jnp.ones((2, 1, 3)), jnp.arange(3.0), jnp.bfloat16).tolist()
    [[2.0, 3.0, 4.0]]
    """
    out = sum_splits(parts)
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    return out.astype(out_dtype)


def sum_splits(parts):
    """``parts`` [S, ...] (a split-K kernel's partial sums) summed over the leading axis as a left fold of
    elementwise adds, ``((p0 + p1) + p2) + ...``.

    The same value as ``parts.sum(axis=0)`` for S <= 2 (and for integers at any S); for S > 2 a fixed summation
    order (float sums agree up to rounding). Unlike a reduce, the adds are elementwise: XLA fuses them (and the
    scaling that follows) into the consumer, so a split-K GEMM costs no separate epilogue kernel.

    >>> sum_splits(jnp.arange(6.0).reshape(3, 2)).tolist()
    [6.0, 9.0]
    """
    out = parts[0]
    for i in range(1, parts.shape[0]):
        out = out + parts[i]
    return out


@functools.partial(jax.tree_util.register_dataclass, data_fields=["parts", "x_scale", "w_scale"],
                   meta_fields=["out_dtype"])
@dataclasses.dataclass(frozen=True)
class SplitSums:
    """A split-K scaled GEMM's output left unfinished: the float32 partial sums ``parts`` [S, ..., N] and the
    epilogue :meth:`finish` would apply, ``out_dtype(x_scale * (w_scale * sum_splits(parts)))`` (``x_scale`` a
    per-tensor scalar, ``w_scale`` () or [N]; no bias). A consumer kernel can run the epilogue itself (one launch
    fewer: ``kernels.add_rmsnorm``); anything else calls :meth:`finish`. A pytree (crosses ``jit``).

    >>> s = SplitSums(jnp.ones((2, 1, 3)), jnp.float32(0.5), jnp.float32(3.0), jnp.dtype(jnp.bfloat16))
    >>> s.shape, s.finish().tolist()
    ((1, 3), [[3.0, 3.0, 3.0]])
    """

    parts: jax.Array
    x_scale: jax.Array
    w_scale: jax.Array
    out_dtype: object

    @property
    def shape(self):
        return tuple(self.parts.shape[1:])

    @property
    def dtype(self):
        return jnp.dtype(self.out_dtype)

    def finish(self):
        """The GEMM's output, as the kernel entry would have returned it."""
        return (self.x_scale * (self.w_scale * sum_splits(self.parts))).astype(self.out_dtype)

    def reshape(self, *shape):
        """The same sums with the output's leading (token) axes reshaped (N stays last)."""
        return SplitSums(self.parts.reshape(self.parts.shape[0], *shape), self.x_scale, self.w_scale,
                         self.out_dtype)
