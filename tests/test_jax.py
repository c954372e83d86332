"""The jax backend beyond the shared matrix (which runs every ``backend`` test on it):
its native ops against the reference ops, as the Numba kernels are (tests/test_kernels.py),
the compiled training step against the numpy backend's op-by-op step, and its errors.

Tolerances as in test_kernels.py: float32 1e-5, float64 1e-12; gathers and top-k exact.
"""

import sys

import numpy as np
import pytest

from brainlike_np import TrainSettings, TrainState, get_preset
from brainlike_np.backends import BackendError, backend_is_available, get_backend

ok, reason = backend_is_available("jax")
if not ok:
    pytest.skip(reason, allow_module_level=True)

BACKEND = get_backend("jax")
JAX_OPS = BACKEND.ops
REF_OPS = get_backend("jax", kernels="reference").ops
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(params=["int32", "int64"])
def id_dtype(request):
    return request.param


def on_jax(host):
    return BACKEND.asarray(host)


def host(x):
    return BACKEND.to_numpy(x)


def test_the_jax_backend_takes_its_native_ops():
    assert JAX_OPS.name == "jax" and REF_OPS.name == "reference"
    assert BACKEND.dtype("float64") == np.float64           # x64 on: float64 stays float64
    assert host(BACKEND.zeros((2,), BACKEND.dtype("float64"))).dtype == np.float64


@pytest.mark.parametrize("n, n_rows", [(500, 7), (30, 101), (1, 1), (0, 5)])
def test_scatter_add_rows_matches_reference(dtype_name, id_dtype, n, n_rows):
    rng = np.random.default_rng(n)
    ids = on_jax(rng.integers(0, n_rows, n).astype(id_dtype))           # repeats
    rows = on_jax(rng.standard_normal((n, 9)).astype(dtype_name))
    got, want = (host(ops.scatter_add_rows(ids, rows, n_rows)) for ops in (JAX_OPS, REF_OPS))
    assert got.dtype == want.dtype == np.dtype(dtype_name) and got.shape == (n_rows, 9)
    np.testing.assert_allclose(got, want, **TOL[dtype_name])


@pytest.mark.parametrize("k", [0, 1, 5, 40, 63])
def test_topk_matches_reference(dtype_name, k):
    """lax.top_k alone breaks ties out of order for k above about 10 (see jax/ops.py)."""
    z = np.random.default_rng(k).standard_normal((6, 63)).astype(dtype_name)
    z[1] = np.round(z[1])            # many ties
    z[2] = 0.5                       # all tied: the lower index first
    z[3, [4, 9, 40]] = np.nan        # NaN ranks first, as in a stable descending sort
    z[4] = np.arange(63)             # ascending
    z[5, ::2], z[5, 1::2] = -0.0, 0.0  # -0.0 ties with 0.0
    z[5, :5] = -np.inf
    got, want = (host(ops.topk(on_jax(z), k)) for ops in (JAX_OPS, REF_OPS))
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_topk_refuses_a_k_outside_the_row():
    for k in (-1, 9):
        with pytest.raises(ValueError, match="k must be in"):
            JAX_OPS.topk(on_jax(np.zeros((2, 8), np.float32)), k)


@pytest.mark.parametrize("k", [1, 7, 64])
def test_gather_weighted_sum_and_backward_match_reference(dtype_name, id_dtype, k):
    rng = np.random.default_rng(k)
    table, weights = (on_jax(rng.standard_normal(shape).astype(dtype_name))
                      for shape in ((31, 64), (12, 64)))
    ids = on_jax(rng.integers(0, 31, (5, 10)).astype(id_dtype))
    cols = on_jax(rng.integers(0, 64, (5, k)).astype(id_dtype))          # repeats when k > 1
    dout = on_jax(rng.standard_normal((5, k)).astype(dtype_name))
    np.testing.assert_allclose(host(JAX_OPS.gather_weighted_sum(table, ids, weights)),
                               host(REF_OPS.gather_weighted_sum(table, ids, weights)),
                               **TOL[dtype_name])
    got = JAX_OPS.gather_weighted_sum_backward(dout, cols, table, ids, weights)
    want = REF_OPS.gather_weighted_sum_backward(dout, cols, table, ids, weights)
    for g, w in zip(got, want):
        np.testing.assert_allclose(host(g), host(w), **TOL[dtype_name])


# ---- the compiled step -------------------------------------------------------------
def trained(backend_name, model_name, steps, settings):
    state = TrainState.create(model_name, get_preset(model_name, "tiny"),
                              get_backend(backend_name), settings)
    tokens = np.frombuffer(b"class Point:\n    def norm(self):\n        return 0\n" * 30,
                           dtype=np.uint8)
    losses = []
    for _ in range(steps):
        x, y = state.sample_batch(tokens, 5)
        losses.append(state.train_step(x, y, lr=3e-2)["loss"])
    params = {n: state.backend.to_numpy(v) for n, v in state.params.items()}
    return state, losses, params


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
@pytest.mark.parametrize("model_name", ["brainlike", "transformer"])
def test_the_compiled_step_equals_the_numpy_step(model_name, grad_clip):
    """float64, five steps: the same losses and parameters within 1e-12, with clipping
    on (it clips: the gradient norm exceeds 1 at the start) and off."""
    settings = TrainSettings(seed=4, dtype="float64", grad_clip=grad_clip)
    state, losses, params = trained("jax", model_name, 5, settings)
    _, numpy_losses, numpy_params = trained("numpy", model_name, 5, settings)
    np.testing.assert_allclose(losses, numpy_losses, rtol=1e-12)
    assert list(params) == list(numpy_params)                     # the model's order
    for name, value in numpy_params.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
    assert state.optimizer.step == state.step == 5


def test_states_of_one_model_share_one_compiled_step():
    settings = TrainSettings(seed=1, dtype="float32")
    first, _, _ = trained("jax", "brainlike", 1, settings)
    second, _, _ = trained("jax", "brainlike", 1, settings)
    assert first._step_function() is second._step_function()
    clipped_otherwise = TrainSettings(seed=1, dtype="float32", grad_clip=0.5)
    second.change_settings(clipped_otherwise)
    assert second._step_function() is not first._step_function()


def test_the_compiled_step_donates_the_old_parameters():
    """The step's results take the buffers of the parameters and moments it was given
    (the step holds one copy of the model, not two)."""
    state, _, _ = trained("jax", "brainlike", 1, TrainSettings(seed=2))
    old_params, old_m = dict(state.params), dict(state.optimizer.m)
    x, y = state.sample_batch(np.arange(300, dtype=np.uint8) % 97, 5)
    state.train_step(x, y, lr=1e-3)
    assert all(a.is_deleted() for a in old_params.values())
    assert all(a.is_deleted() for a in old_m.values())
    assert not any(a.is_deleted() for a in state.params.values())


def test_a_step_that_is_not_finite_is_undone_on_jax():
    """The device-side guard inside the compiled step: a NaN weight makes the loss NaN,
    and the step changes no parameter and no moment (NaN stays where it was)."""
    from brainlike_np.train_state import TrainingDiverged
    state, _, _ = trained("jax", "brainlike", 2, TrainSettings(seed=5, dtype="float64"))
    state.params["W_dec"] = state.params["W_dec"].at[1, 2].set(np.nan)
    before = [{n: host(v) for n, v in group.items()}
              for group in (state.params, state.optimizer.m, state.optimizer.v)]
    x, y = state.sample_batch(np.arange(300, dtype=np.uint8) % 97, 5)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        state.train_step(x, y, lr=1e-3)
    assert state.step == state.optimizer.step == 2
    after = [state.params, state.optimizer.m, state.optimizer.v]
    for old, new in zip(before, after):
        for name, value in old.items():
            np.testing.assert_array_equal(host(new[name]), value, err_msg=name)


# ---- errors ---------------------------------------------------------------------------
def test_without_jax_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)          # import jax raises ImportError
    with pytest.raises(BackendError) as info:
        get_backend("jax")
    assert "pip install -e '.[jax]'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"),
                                             ("gpu:x", "unknown device 'gpu:x'"),
                                             ("cpu:3", "cpu 3 was asked for but 1")])
def test_a_device_that_is_not_there_is_one_line(device, message):
    with pytest.raises(BackendError, match=message):
        get_backend("jax", device=device)


def test_the_device_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BRAINLIKE_DEVICE", "cpu")
    assert get_backend("jax").device.platform == "cpu"
    assert get_backend("jax", device=1).device.platform == "cpu"   # a rank's GPU index: ignored
    monkeypatch.setenv("BRAINLIKE_DEVICE", "abacus")
    with pytest.raises(BackendError, match="unknown device 'abacus'"):
        get_backend("jax")


# ---- the trainer and the generator ---------------------------------------------------
def test_the_trainer_and_generator_on_jax_match_numpy(tmp_path, monkeypatch, capsys):
    """``BRAINLIKE_BACKEND=jax python -m brainlike_np.train``, in float64: the logged losses
    and the validation loss equal the numpy backend's; the generator then continues the
    prompt from the jax checkpoint with the same bytes as numpy's."""
    import json

    import brainlike_np.generate as gen
    from brainlike_np import train
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n" * 60)
    records, texts = {}, {}
    for name in ("jax", "numpy"):
        monkeypatch.setenv("BRAINLIKE_BACKEND", name)
        out_dir = tmp_path / name
        assert train.main(["--preset", "tiny", "--eval-every", "3", "--eval-batches", "2",
                           "--max-iters", "6", "--dtype", "float64", "--data", str(corpus),
                           "--out-dir", str(out_dir)]) == 0
        with open(out_dir / "metrics.jsonl") as f:
            records[name] = [json.loads(line) for line in f]
        capsys.readouterr()                                         # the trainer's report
        assert gen.main(["--checkpoint", str(out_dir / "ckpt.npz"), "--prompt", "def ",
                         "--max-new-bytes", "12", "--seed", "1"]) == 0
        texts[name] = capsys.readouterr().out
    for key in ("loss", "val_loss"):
        got = [r[key] for r in records["jax"] if key in r]
        want = [r[key] for r in records["numpy"] if key in r]
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=key)
    assert texts["jax"] == texts["numpy"] and texts["jax"].startswith("def ")


def test_importing_the_package_and_other_backends_never_imports_jax():
    import subprocess
    code = ("import sys, brainlike_np; from brainlike_np.backends import get_backend; "
            "get_backend('numpy'); get_backend('array_api_strict'); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
