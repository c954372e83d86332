"""A checkpoint written on any backend resumes on every other: after the load, the
parameters, moments, step and sampler are the writer's, bit for bit; the next step then
agrees with the writer's own next step to the cross-backend tolerance. Every available
backend writes and every available backend reads (BACKEND_NAMES: a new backend joins)."""

import numpy as np
import pytest

from brainlike_np.backends import BACKEND_NAMES, backend_is_available, get_backend
from brainlike_np.models import MODELS, get_preset
from brainlike_np.train_state import TrainSettings, TrainState
from conftest import single_threaded_torch
from gradcheck import CROSS_BACKEND_TOL

TOKENS = np.frombuffer(b"def f(x):\n    return x * 2 + 1\n" * 40, dtype=np.uint8)


def available(name):
    ok, reason = backend_is_available(name)
    if not ok:
        pytest.skip(reason)
    if name == "torch":
        single_threaded_torch()
    return get_backend(name)


def host_state(state) -> dict:
    arrays = {f"p/{n}": state.backend.to_numpy(v) for n, v in state.params.items()}
    for group, moments in (("m", state.optimizer.m), ("v", state.optimizer.v)):
        arrays.update({f"{group}/{n}": state.backend.to_numpy(v) for n, v in moments.items()})
    return {k: np.array(a, copy=True) for k, a in arrays.items()}


def step(state):
    x, y = state.sample_batch(TOKENS, 3)
    return state.train_step(x, y, lr=1e-2)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("reader", BACKEND_NAMES)
@pytest.mark.parametrize("writer", BACKEND_NAMES)
def test_a_checkpoint_resumes_on_every_backend(writer, reader, model_name, dtype_name, tmp_path):
    written_on, read_on = available(writer), available(reader)
    settings = TrainSettings(seed=5, dtype=dtype_name, batch_size=3)
    state = TrainState.create(model_name, get_preset(model_name, "tiny"), written_on, settings)
    for _ in range(2):
        step(state)
    path = str(tmp_path / "ckpt.npz")
    state.save(path)
    saved = host_state(state)

    loaded = TrainState.load(path, read_on)
    assert loaded.step == state.step == loaded.optimizer.step
    got = host_state(loaded)
    assert {k: (a.shape, a.dtype) for k, a in got.items()} == \
        {k: (a.shape, a.dtype) for k, a in saved.items()}
    for key, value in saved.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)

    theirs, ours = step(state), step(loaded)               # the same window, both sides
    assert loaded.step == state.step == 3
    tol = CROSS_BACKEND_TOL[dtype_name]
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=tol)
    after_theirs, after_ours = host_state(state), host_state(loaded)
    for key, value in after_theirs.items():
        scale = np.max(np.abs(value)) + 1e-30
        np.testing.assert_allclose(after_ours[key] / scale, value / scale, atol=tol, err_msg=key)
