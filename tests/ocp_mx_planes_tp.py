"""Run by tests/test_ocp_mx_planes.py in a subprocess (XLA_FLAGS must be set before jax initializes): FP6 planes
params sharded with their layer's ``ShardLayout`` specs on 4 forced CPU devices, applied per shard
(``sharded_apply``: column -> N slices, row -> K slices + psum), against the unsharded layer. Prints one JSON
object {"<role>/<element>": max relative difference}."""

from __future__ import annotations


def main() -> None:
    """Set the 4-device flag before jax initializes, then compare (only when run as a script: pytest's doctest
    collection imports this file)."""
    import json
    import os

    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding

    from quark_jax import formats
    from quark_jax.nn import QuarkLinear
    from quark_jax.nn.parallel import DEFAULT_RULES, sharded_apply
    from quark_jax.schemes import QuarkOCP_MX, apply_params, process_params

    mesh = Mesh(np.array(jax.devices()[:4]).reshape(1, 4), ("data", "model"))
    rng = np.random.default_rng(0)
    out = {}
    for path, element in (("model.layers.0.mlp.up_proj", "fp6_e2m3"), ("model.layers.0.mlp.down_proj", "fp6_e3m2")):
        k, n = 512, 64  # row: K slices of 128 (one chunk each)
        scheme = QuarkOCP_MX(weight_dtype=element, input_dtype=element, impl="xla")
        raw = {"weight": formats.pack_fp6(jnp.asarray(rng.integers(0, 64, (n, k)), jnp.uint8)),
               "weight_scale": jnp.asarray(rng.integers(120, 134, (n, k // 32)), jnp.uint8)}
        layout = QuarkLinear(k, n, scheme=scheme, abstract=True, name=path).plan_sharding(mesh, DEFAULT_RULES)
        params = process_params(scheme, raw, (n,))
        sharded = {name: jax.device_put(v, NamedSharding(mesh, layout.spec(name, v.ndim)))
                   for name, v in params.items()}
        x = jnp.asarray(rng.standard_normal((1, 3, k)), jnp.float32)
        got = np.asarray(sharded_apply(layout, scheme, sharded, x), np.float64)
        want = np.asarray(apply_params(scheme, params, x), np.float64)
        out[f"{layout.role}/{element}"] = float(np.abs(got - want).max() / np.abs(want).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
