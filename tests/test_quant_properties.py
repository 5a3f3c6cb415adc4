"""Property tests (hypothesis): invariants that hold for any input."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quark_jax import quant

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (2, 64), elements=finite32))
def test_mxfp4_qdq_is_idempotent_and_matches_quantize_dequantize(x):
    once = quant.qdq_mxfp4(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(quant.qdq_mxfp4(once)), np.asarray(once))
    p, s = quant.quantize_mxfp4(jnp.asarray(x))
    back = quant.dequantize_mxfp4(p, s, jnp.float32)
    np.testing.assert_array_equal(np.asarray(back) + 0.0, np.asarray(once) + 0.0)
    # the block amax never grows past the E2M1 range times the scale
    assert np.all(np.abs(np.asarray(once)) <= np.abs(x).reshape(2, 2, 32).max(-1).repeat(32, -1) * 1.5 + 1e-30)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (3, 16), elements=finite32))
def test_fp8_per_token_error_bound(x):
    q, s = quant.scaled_fp8_quant(jnp.asarray(x), per_token=True)
    back = np.asarray(q.astype(jnp.float32)) * np.asarray(s)
    # within half an e4m3 step (relative 2**-4) or the subnormal spacing
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0**-4 + np.asarray(s) * 2.0**-10 + 1e-30)
