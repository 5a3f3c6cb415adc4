"""GPU exactness check of the session 9 (helper int4dec) decode candidates, compiled (run on the device before the
benchmark; ~1 min): every ``int4_mm.pallas_nk.CANDIDATES`` entry and every ``mxfp6_mm.pallas_planes.CANDIDATES``
entry against the XLA reference, bit for bit on exact data (f32 output):

- INT4: int4 and uint4 (zero points), both pack orders, bias or not, M 1 / 3 / 16 (fma candidates: M 1), group 128,
  K 512, N 256; x on a 1/4 grid, power-of-two scales (every product and partial sum exact).
- MXFP6: both elements, every code, M 1 / 5 / 16, K 512, N 64, bias; E8M0 bytes 125..129 with x on a 1/4 grid (every f32 partial sum exact), and
  the whole E8M0 range 0..250 (one-hot x: each output is one dequantized weight, so subnormal and huge scales are
  compared value for value).

Usage: PYTHONPATH=.:tests python benchmarks/int4dec_gpu_check.py OUT.json [SUBSTRING]   (prints PASS / FAIL lines;
exit 0; SUBSTRING: only the candidates whose name contains it)
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from quark_jax import formats  # noqa: E402
from quark_jax.kernels.int4_mm import pallas_nk  # noqa: E402
from quark_jax.kernels.mxfp6_mm import pallas_planes  # noqa: E402
from quark_jax.kernels.mxfp6_mm.xla import mxfp6_mm_xla  # noqa: E402


ONLY = sys.argv[2] if len(sys.argv) > 2 else ""


def int4_checks(results):
    from kernels.test_int4_mm import make, run_xla

    rng = np.random.default_rng(0)
    for name in [c for c in pallas_nk.CANDIDATES if ONLY in c]:
        ok, err = True, ""
        try:
            for flavor in ("int4-reorder-bias", "uint4-order-nobias", "uint4-reorder-bias", "int4-order-nobias"):
                for m in ((1,) if name.startswith("fma") else (1, 3, 16)):
                    d = make(rng, m, 512, 256, flavor, gs=128)
                    w, z = pallas_nk.repack(d["w"], d["z"], group_size=128, order=d["order"], signed=d["signed"])
                    cfg = pallas_nk.candidate(name, m, 512, 256, 128)
                    got = pallas_nk.int4_mm_nk_pallas(d["x"], w, d["s"], z, d["bias"], group_size=128,
                                                      signed=d["signed"], out_dtype=jnp.float32, config=cfg)
                    want = run_xla(d)
                    if not np.array_equal(np.asarray(got), np.asarray(want)):
                        ok, err = False, f"{flavor} M={m}: max |diff| {np.abs(np.asarray(got) - np.asarray(want)).max()}"
                        break
                if not ok:
                    break
        except Exception:  # a candidate that does not compile fails
            ok, err = False, traceback.format_exc(limit=3)[-600:]
        results[f"int4 {name}"] = dict(ok=ok, err=err)
        print(("PASS" if ok else "FAIL"), "int4", name, err, flush=True)


def mxfp6_checks(results):
    rng = np.random.default_rng(1)
    n, k = 64, 512
    for name in [c for c in pallas_planes.CANDIDATES if ONLY in c]:
        ok, err = True, ""
        try:
            for element in ("fp6_e2m3", "fp6_e3m2"):
                codes = jnp.asarray(rng.permuted(np.tile(np.arange(64), n * k // 64)).reshape(n, k), jnp.uint8)
                w = formats.pack_fp6(codes)
                for lo_e, hi_e, onehot in ((125, 130, False), (0, 251, True)):
                    s = jnp.asarray(rng.integers(lo_e, hi_e, (n, k // 32)), jnp.uint8)
                    rep = pallas_planes.repack(w, s)
                    for m in ((1,) if name.startswith("fma") else (1, 5, 16)):
                        if onehot:  # row r selects column (r * 37 + c) % K: each output one weight
                            cols = [(r * 37 + 11) % k for r in range(m)]
                            x = jnp.zeros((m, k), jnp.bfloat16).at[jnp.arange(m), jnp.asarray(cols)].set(1)
                            bias = None
                        else:
                            x = jnp.asarray(rng.integers(-8, 9, (m, k)) / 4, jnp.bfloat16)
                            bias = jnp.asarray(rng.integers(-8, 9, n) / 4, jnp.float32)
                        cfg = pallas_planes.candidate(name, m, k, n)
                        got = pallas_planes.mxfp6_mm_planes(x, *rep, bias, element=element, out_dtype=jnp.float32,
                                                            config=cfg)
                        want = mxfp6_mm_xla(x, w, s, bias, element=element, out_dtype=jnp.float32)
                        if not np.array_equal(np.asarray(got), np.asarray(want)):
                            bad = np.argwhere(np.asarray(got) != np.asarray(want))[:3].tolist()
                            ok, err = False, f"{element} M={m} scales {lo_e}..{hi_e - 1}: first mismatches {bad}"
                            break
                    if not ok:
                        break
                if not ok:
                    break
        except Exception:
            ok, err = False, traceback.format_exc(limit=3)[-600:]
        results[f"mxfp6 {name}"] = dict(ok=ok, err=err)
        print(("PASS" if ok else "FAIL"), "mxfp6", name, err, flush=True)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "int4dec_gpu_check.json"
    results = {"device": str(jax.devices()[0])}
    int4_checks(results)
    mxfp6_checks(results)
    Path(out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
