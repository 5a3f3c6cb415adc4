"""One GPU call for issue 19's kernels (run on the device from the repo root, PYTHONPATH=.): the compiled-kernel
tests of ``int4_mm`` / ``fp8_block_mm``, then ``bench_gemm`` rows (GPU kernel time) in priority order under one
time budget: INT4 W4A16 decode (M = 1, 16) and block FP8 prefill (M = 2048) on the two large 8B shapes, then the
other 8B shapes and INT4 at prefill while time is left. Writes into OUT_DIR: pytest.txt and one JSON per step.

Usage: python benchmarks/issue19_gpu.py OUT_DIR [BUDGET_SECONDS]
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BIG = "4096x14336,14336x4096"
SMALL = "4096x4096,8192x8192"
STEPS = (  # (name, ops, ms, shapes, seconds it may start new points for)
    ("int4_decode", "int4", "1,16", BIG, 40),
    ("fp8block_prefill", "fp8block", "2048", BIG, 20),
    ("int4_decode_small", "int4", "1,16", SMALL, 15),
    ("fp8block_prefill_small", "fp8block", "2048", SMALL, 10),
    ("int4_prefill", "int4", "2048", "4096x14336", 5),
)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + (float(argv[1]) if len(argv) > 1 else 150.0)
    import jax
    import pytest

    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}", flush=True)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = pytest.main(["-q", "-p", "no:cacheprovider", "--maxfail=8", "tests/kernels/test_int4_mm.py",
                          "tests/kernels/test_fp8_block_mm.py", "-k", "backend_matches or random or entry_pallas"])
    (out / "pytest.txt").write_text(buf.getvalue())
    print(f"pytest rc={rc}, {end - time.monotonic():.0f} s of the budget left", flush=True)
    import bench_gemm

    for name, ops, ms, shapes, share in STEPS:
        left = end - time.monotonic()
        if left < 8:
            print(f"skip {name}: {left:.0f} s left", flush=True)
            continue
        bench_gemm.main(["--ops", ops, "--m", ms, "--shapes", shapes, "--json",
                         str(out / f"{name}_h200_2026-12-02_kernel.json"), "--deadline", str(min(share, left - 5))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
