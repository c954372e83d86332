"""Checkpoint writes are atomic: a save that fails partway leaves the previous checkpoint
byte-identical and loadable, and leaves no temporary file behind."""

import errno
import io
import os

import numpy as np
import pytest

from brainlike_np import TrainSettings, TrainState, get_backend, get_preset
from brainlike_np.checkpoint import CheckpointFile
from brainlike_np.data import random_batch
from diskfull import disk_fills_up

TINY = get_preset("brainlike", "tiny")


def trained_state(seed):
    """A tiny state after one AdamW step, so params and both moments are saved."""
    state = TrainState.create("brainlike", TINY, get_backend("numpy"), TrainSettings(seed=seed))
    state.train_step(*random_batch(4, TINY.context, seed=seed), lr=1e-3)
    return state


def array_writer_fails(monkeypatch):
    """``np.savez`` writes the first half of the archive, then raises."""
    real_savez = np.savez

    def half_then_raise(file, *args, **kwargs):
        whole = io.BytesIO()
        real_savez(whole, *args, **kwargs)
        file.write(whole.getvalue()[:len(whole.getvalue()) // 2])
        raise RuntimeError("the array writer failed partway")
    monkeypatch.setattr(np, "savez", half_then_raise)


@pytest.mark.parametrize("failure, error", [(array_writer_fails, RuntimeError),
                                            (disk_fills_up, OSError)])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure, error):
    """A save over an existing checkpoint that fails partway (the writer raising, or
    ENOSPC) raises, leaves the old file byte-identical and loadable with the old state,
    and leaves nothing else in the folder."""
    path = tmp_path / "ckpt.npz"
    old = trained_state(seed=0)
    old.save(str(path))
    old_bytes = path.read_bytes()

    with monkeypatch.context() as m:
        failure(m)
        with pytest.raises(error) as caught:
            trained_state(seed=1).save(str(path))
    if error is OSError:
        assert caught.value.errno == errno.ENOSPC

    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    with CheckpointFile(str(path)) as checkpoint:
        assert checkpoint.meta["step"] == old.step
    resumed = TrainState.load(str(path), get_backend("numpy"))
    assert resumed.step == old.step and set(resumed.optimizer.m) == set(old.params)
    for name, value in old.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)
