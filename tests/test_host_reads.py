"""Device-to-host reads: a training step makes exactly one (the loss and the global
gradient norm together, after the update), generation one per byte, and every read goes through the backend's
counted readers (``to_float``, ``Backend.to_numpy``), so the count is the whole story."""

import numpy as np
import pytest

from brainlike_np.backends import get_backend, host_reads
from brainlike_np.generate import generate
from brainlike_np.models import MODELS, get_preset
from brainlike_np.train_state import TrainState


def tiny_state(backend, model="brainlike"):
    return TrainState.create(model, get_preset(model, "tiny"), backend)


def batch(state, batch_size=4):
    tokens = np.random.default_rng(1).integers(0, 256, 500).astype(np.uint8)
    return state.sample_batch(tokens, batch_size)


@pytest.mark.parametrize("model", list(MODELS))
def test_a_training_step_reads_the_device_once(model):
    state = tiny_state(get_backend("numpy"), model)
    x, y = batch(state)
    before = host_reads()
    metrics = state.train_step(x, y, lr=1e-3)
    assert host_reads() - before == 1
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


def test_generation_reads_the_device_once_per_byte():
    state = tiny_state(get_backend("numpy"))
    before = host_reads()
    generate(state, b"def ", 5, seed=0)
    assert host_reads() - before == 5


# The conversions of an array-api-strict array to host values (Python scalars, NumPy
# arrays, DLPack capsules, iteration): on a GPU each would wait for the device.
CONVERSIONS = ("__float__", "__int__", "__bool__", "__index__", "__complex__", "__array__",
               "__buffer__", "__dlpack__", "__iter__")


@pytest.fixture
def conversions(monkeypatch):
    """Counts every conversion of an array-api-strict array to a host value."""
    import array_api_strict as xp
    array_type = type(xp.asarray(0.0))
    seen = []
    for name in CONVERSIONS:
        original = getattr(array_type, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(array_type, name, counted)
    return seen


@pytest.mark.parametrize("model", list(MODELS))
def test_every_host_read_of_a_step_goes_through_the_backend(conversions, model):
    """On array-api-strict, the conversions a step makes equal the reads the backend
    counted: no read bypasses the counter (a float(), an int(), an `if` on an array)."""
    state = tiny_state(get_backend("array_api_strict"), model)
    x, y = batch(state)
    before = host_reads()
    state.train_step(x, y, lr=1e-3)
    counted = host_reads() - before
    assert conversions and len(conversions) == counted == 1, conversions
