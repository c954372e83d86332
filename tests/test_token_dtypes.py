"""Host batches of any integer dtype train, evaluate and predict alike on every backend:
TrainState uploads them with ``backend.asarray_ids``, as int64 ids (PyTorch indexes with
nothing narrower than int32, and its take_along_dim, in the cross-entropy, with nothing
but int64)."""

import numpy as np
import pytest

from brainlike_np.data import random_batch
from brainlike_np.models import get_preset
from brainlike_np.train_state import TrainSettings, TrainState


def fresh_state(backend):
    return TrainState.create("brainlike", get_preset("brainlike", "tiny"), backend,
                             TrainSettings(seed=0, batch_size=3, dtype="float64"))


@pytest.mark.parametrize("token_dtype", ["uint8", "int16", "int32"])
def test_a_batch_of_any_integer_dtype_gives_the_int64_result(backend, token_dtype):
    x, y = random_batch(3, 8, 256, seed=1)                      # int64
    want, got = fresh_state(backend), fresh_state(backend)
    expected = want.train_step(x, y, lr=1e-2)
    assert got.train_step(x.astype(token_dtype), y.astype(token_dtype), lr=1e-2) == expected
    assert got.evaluate([(x.astype(token_dtype), y.astype(token_dtype))]) == \
        want.evaluate([(x, y)])
    np.testing.assert_array_equal(got.next_logits(x.astype(token_dtype)), want.next_logits(x))

