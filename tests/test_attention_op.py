"""The attention op pair: the array-API definition against a per-row loop and central
finite differences; the Numba CPU kernel against the definition here, the Numba CUDA
kernel in the CUDA simulator (tests/cudasim_fused_checks.py, in a subprocess).

Tolerances: float64 rtol = atol = 1e-12, float32 rtol = atol = 1e-5.
"""

import math
import subprocess
import sys
from pathlib import Path

import array_api_compat.numpy as xp
import numpy as np
import pytest

from brainlike_np.backends.numba_cpu import NumbaCpuOps
from brainlike_np.backends.reference import ReferenceOps
from gradcheck import numeric_grad

TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}
# (B, h, Lq, Lk, d): a set attending to itself, and a set reading a longer context
SHAPES = {"self": (3, 2, 6, 6, 4), "read": (2, 3, 5, 9, 4)}


REF = ReferenceOps(xp)


def NumbaCpu(parallel=False):
    """The CPU kernels, serial or with every call parallel."""
    return NumbaCpuOps(parallel_min_work=0 if parallel else math.inf)


def attention_inputs(shape, dtype_name="float64", mask="random", seed=0):
    """q, k, v as [B, h, L, d] views of [B, L, h, d] arrays (the layout the layers pass),
    and key_keep [B, Lk]: None; "some" (random, the first key kept and the last masked
    in every sample); "random" ("some" with sample 1 fully masked)."""
    B, h, Lq, Lk, d = shape
    rng = np.random.default_rng(seed)
    q, k, v = (np.transpose(rng.standard_normal((B, L, h, d)).astype(dtype_name), (0, 2, 1, 3))
               for L in (Lq, Lk, Lk))
    if mask is None:
        return q, k, v, None
    keep = rng.random((B, Lk)) > 0.4
    keep[:, 0], keep[:, -1] = True, False
    if mask == "random":
        keep[1] = False                 # a sample whose every query sees no key
    return q, k, v, keep


def per_row_attention(q, k, v, keep):
    """out, lse by a loop over (b, h, query), with NumPy on each row: independent of
    the definition's batched form."""
    B, h, Lq, d = q.shape
    keep = np.ones((B, k.shape[2]), bool) if keep is None else keep
    out, lse = np.zeros(q.shape), np.full((B, h, Lq), math.inf)
    for b in range(B):
        kept = np.flatnonzero(keep[b])
        for hh in range(h):
            for i in range(Lq):
                if kept.size:
                    s = k[b, hh, kept] @ q[b, hh, i]
                    w = np.exp(s - s.max())
                    out[b, hh, i] = (w / w.sum()) @ v[b, hh, kept]
                    lse[b, hh, i] = s.max() + np.log(w.sum())
    return out, lse


def assert_close(got, want, dtype_name):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, **TOL[dtype_name])


# ---- the definition -------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("mask", [None, "random"])
def test_definition_forward_matches_per_row_loop(shape, mask):
    q, k, v, keep = attention_inputs(shape, mask=mask)
    out, lse = REF.attention_forward(q, k, v, keep)
    want_out, want_lse = per_row_attention(q, k, v, keep)
    assert lse.shape == shape[:3]
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_definition_runs_on_every_backend(backend):
    """The definition on the backend's namespace (array-api-strict included) agrees with
    the per-row loop; every query of sample 1 has no kept key."""
    q, k, v, keep = attention_inputs(SHAPES["read"], mask="random")
    ref = ReferenceOps(backend.xp)
    f64 = backend.dtype("float64")
    dev = [backend.asarray(a, f64) for a in (q, k, v)] + [backend.asarray(keep)]
    out, lse = ref.attention_forward(*dev)
    want_out, want_lse = per_row_attention(q, k, v, keep)
    np.testing.assert_allclose(backend.to_numpy(out), want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(lse), want_lse, rtol=1e-12, atol=1e-12)
    dout = backend.asarray(np.ones(q.shape), f64)
    *grads, rebuilt = ref.attention_backward(dout, *dev[:3], lse, dev[3])
    for g in grads:
        assert np.all(np.isfinite(backend.to_numpy(g)))
    np.testing.assert_allclose(backend.to_numpy(rebuilt), want_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("mask", [None, "random"])
def test_definition_backward_matches_finite_differences(shape, mask):
    q, k, v, keep = attention_inputs(shape, mask=mask, seed=1)
    upstream = np.random.default_rng(2).standard_normal(q.shape)
    out, lse = REF.attention_forward(q, k, v, keep)
    *grads, rebuilt = REF.attention_backward(upstream, q, k, v, lse, keep)
    np.testing.assert_allclose(rebuilt, out, rtol=1e-12, atol=1e-12)

    def loss_of(arrays):
        return float(np.sum(REF.attention_forward(*arrays, keep)[0] * upstream))

    inputs = [np.ascontiguousarray(a) for a in (q, k, v)]
    for which, (name, g) in enumerate(zip("qkv", grads)):
        np.testing.assert_allclose(g, numeric_grad(loss_of, inputs, which), rtol=1e-6,
                                   atol=1e-8, err_msg=f"d{name}")


def test_no_kept_key_gives_zero_output_and_gradient_and_infinite_lse():
    q, k, v, keep = attention_inputs(SHAPES["self"], mask="random")
    for ops in (REF, NumbaCpu()):
        out, lse = ops.attention_forward(q, k, v, keep)
        assert np.all(out[1] == 0) and np.all(lse[1] == math.inf)
        assert np.all(np.isfinite(lse[0])) and np.any(out[0] != 0)
        dq, dk, dv, rebuilt = ops.attention_backward(np.ones(q.shape), q, k, v, lse, keep)
        assert np.all(dq[1] == 0) and np.all(dk[1] == 0) and np.all(dv[1] == 0)
        assert np.all(rebuilt[1] == 0)
        masked = ~keep[0]                                       # masked keys: no gradient
        assert masked.any() and np.all(dk[0][:, masked] == 0) and np.all(dv[0][:, masked] == 0)


# ---- the Numba CPU kernel against the definition --------------------------------------------
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("mask", [None, "random", "some"])
def test_cpu_kernel_matches_definition(dtype_name, parallel, shape, mask):
    q, k, v, keep = attention_inputs(shape, dtype_name, mask)
    cpu = NumbaCpu(parallel)
    out, lse = cpu.attention_forward(q, k, v, keep)
    want_out, want_lse = REF.attention_forward(q, k, v, keep)
    assert_close(out, want_out, dtype_name)
    assert_close(lse, want_lse, dtype_name)
    dout = np.random.default_rng(3).standard_normal(q.shape).astype(dtype_name)
    got = cpu.attention_backward(dout, q, k, v, lse, keep)
    want = REF.attention_backward(dout, q, k, v, want_lse, keep)
    for name, g, w in zip(("dq", "dk", "dv", "out"), got, want):
        assert_close(g, w, dtype_name)
    assert_close(got[3], want_out, dtype_name)           # the rebuilt output is the forward's


def test_cpu_kernel_at_a_model_size_and_large_scores():
    """Rows of 64 keys, head width 32 and scores of a few hundred (exp's range
    reduction over many powers of two), float64."""
    q, k, v, keep = attention_inputs((2, 2, 64, 64, 32), mask="some")
    q = q * 8.0
    out, lse = NumbaCpu().attention_forward(q, k, v, keep)
    want_out, want_lse = REF.attention_forward(q, k, v, keep)
    assert np.abs(want_lse).max() > 100
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_cpu_kernel_serial_equals_parallel():
    q, k, v, keep = attention_inputs((4, 2, 16, 24, 8), "float32", "random")
    serial, parallel = NumbaCpu(False), NumbaCpu(True)
    out, lse = serial.attention_forward(q, k, v, keep)
    for a, b in zip((out, lse), parallel.attention_forward(q, k, v, keep)):
        assert np.array_equal(a, b)
    dout = np.ones(q.shape, np.float32)
    for a, b in zip(serial.attention_backward(dout, q, k, v, lse, keep),
                    parallel.attention_backward(dout, q, k, v, lse, keep)):
        assert np.array_equal(a, b)


def test_nan_score_gives_nan_output_as_the_definition():
    q, k, v, keep = attention_inputs(SHAPES["self"], mask=None)
    q = q.copy()
    q[0, 1, 2, 0] = np.nan
    for ops in (REF, NumbaCpu()):
        out, lse = ops.attention_forward(q, k, v, keep)
        assert np.all(np.isnan(out[0, 1, 2])) and np.isnan(lse[0, 1, 2])
        assert np.all(np.isfinite(out[0, 0])) and np.all(np.isfinite(out[1]))


@pytest.mark.parametrize("ops", [REF, NumbaCpu()], ids=["reference", "numba"])
def test_shape_mismatch_says_which(ops):
    q, k, v, keep = attention_inputs(SHAPES["read"], mask="some")
    with pytest.raises(ValueError, match=r"k, v both \[B, h, Lk, d\]"):
        ops.attention_forward(q, k, v[:, :, :3], keep)
    with pytest.raises(ValueError, match="do not match in B, h or d"):
        ops.attention_forward(q[..., :3], k, v, keep)
    with pytest.raises(ValueError, match=r"key_keep must be \[B, Lk\]"):
        ops.attention_forward(q, k, v, keep[:, :4])


def test_cpu_kernels_run_scipys_own_blas_on_one_thread_and_leave_numpys():
    """Numba's np.dot calls the OpenBLAS of SciPy's wheel; after an attention call that
    library runs one thread, and NumPy's BLAS keeps its thread count."""
    from threadpoolctl import ThreadpoolController
    numpy_blas_threads = {lib.filepath: lib.num_threads
                          for lib in ThreadpoolController().lib_controllers
                          if "numpy" in lib.filepath}
    q, k, v, keep = attention_inputs(SHAPES["self"], mask="some")
    NumbaCpu().attention_forward(q, k, v, keep)
    libs = ThreadpoolController().lib_controllers
    scipys = [lib for lib in libs if "scipy.libs" in lib.filepath]
    if not scipys:
        pytest.skip("SciPy shares its BLAS with NumPy here: nothing is limited")
    assert all(lib.num_threads == 1 for lib in scipys)
    for lib in libs:
        if lib.filepath in numpy_blas_threads:
            assert lib.num_threads == numpy_blas_threads[lib.filepath], lib.filepath


WITHOUT_SCIPY = """
import sys
sys.modules["scipy"] = None                    # import scipy raises ImportError
sys.path.insert(0, {tests!r})
import numpy as np
from test_attention_op import NumbaCpu, REF, SHAPES, attention_inputs
q, k, v, keep = attention_inputs(SHAPES["read"], mask="random")
cpu = NumbaCpu()
for _ in range(2):
    out, lse = cpu.attention_forward(q, k, v, keep)
    grads = cpu.attention_backward(np.ones(q.shape), q, k, v, lse, keep)
want_out, want_lse = REF.attention_forward(q, k, v, keep)
want_grads = REF.attention_backward(np.ones(q.shape), q, k, v, want_lse, keep)
assert np.array_equal(out, want_out) and np.array_equal(lse, want_lse)
assert all(np.array_equal(g, w) for g, w in zip(grads, want_grads))
print("same as the definition")
"""


def test_without_scipy_the_cpu_ops_run_the_definition_and_say_so_once():
    script = WITHOUT_SCIPY.format(tests=str(Path(__file__).parent))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "same as the definition"
    lines = [line for line in result.stderr.splitlines() if "SciPy" in line]
    assert lines == ["the CPU attention kernel needs SciPy for its BLAS calls (pip install "
                     "-e '.[cpu]'): attention runs as array-API code on NumPy instead"]


def _grown(a, axis, by=1):
    """``a`` with ``by`` more entries along ``axis`` (copies of its first)."""
    return np.concatenate([a, np.take(a, range(by), axis=axis)], axis=axis)


# (B, h, Lq, Lk, d) = (2, 3, 5, 9, 4): each input wrong one way, smaller and larger
BAD_SHAPES = {
    "q 3-d": (lambda q, k, v, m: (q[0], k, v, m), r"k, v both \[B, h, Lk, d\]"),
    "q 5-d": (lambda q, k, v, m: (q[None], k, v, m), r"k, v both \[B, h, Lk, d\]"),
    "k, v 3-d": (lambda q, k, v, m: (q, k[0], v[0], m), r"k, v both \[B, h, Lk, d\]"),
    "k, v 5-d": (lambda q, k, v, m: (q, k[None], v[None], m), r"k, v both \[B, h, Lk, d\]"),
    "v shorter": (lambda q, k, v, m: (q, k, v[:, :, :8], m), r"k, v both \[B, h, Lk, d\]"),
    "v longer": (lambda q, k, v, m: (q, k, _grown(v, 2), m), r"k, v both \[B, h, Lk, d\]"),
    "q fewer samples": (lambda q, k, v, m: (q[:1], k, v, m), "do not match in B, h or d"),
    "q more heads": (lambda q, k, v, m: (_grown(q, 1), k, v, m), "do not match in B, h or d"),
    "q narrower": (lambda q, k, v, m: (q[..., :3], k, v, m), "do not match in B, h or d"),
    "q wider": (lambda q, k, v, m: (_grown(q, 3), k, v, m), "do not match in B, h or d"),
    "mask shorter": (lambda q, k, v, m: (q, k, v, m[:, :4]),
                     r"key_keep must be \[B, Lk\] = \(2, 9\), got \(2, 4\)"),
    "mask longer": (lambda q, k, v, m: (q, k, v, _grown(m, 1)),
                    r"key_keep must be \[B, Lk\] = \(2, 9\), got \(2, 10\)"),
    "mask one sample": (lambda q, k, v, m: (q, k, v, m[:1]),
                        r"key_keep must be \[B, Lk\] = \(2, 9\), got \(1, 9\)"),
}


@pytest.mark.parametrize("ops", [REF, NumbaCpu()], ids=["reference", "numba"])
@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_every_shape_mismatch_either_way_is_refused(ops, case):
    bad, says = BAD_SHAPES[case]
    q, k, v, keep = bad(*attention_inputs(SHAPES["read"], mask="some"))
    with pytest.raises(ValueError, match=says):
        ops.attention_forward(q, k, v, keep)
    if q.ndim == 4:
        lse = np.zeros(q.shape[:3])
        with pytest.raises(ValueError, match=says):
            ops.attention_backward(np.ones(q.shape), q, k, v, lse, keep)


@pytest.mark.parametrize("ops", [REF, NumbaCpu()], ids=["reference", "numba"])
def test_a_head_width_above_256_is_a_width_like_any_other(ops):
    """CPython caches the ints up to 256 only: sizes compared by identity would differ
    beyond them."""
    q, k, v, keep = attention_inputs((2, 1, 3, 5, 300), mask="some")
    out, lse = ops.attention_forward(q, k, v, keep)
    want_out, want_lse = per_row_attention(q, k, v, keep)
    assert_close(out, want_out, "float64")
    assert_close(lse, want_lse, "float64")
