"""Gradient accumulation (issue 32 item 5): --grad-accum N is the update of a batch N
times larger, to 1e-12 in float64, clipping included, in one process and over MPI
ranks, with one micro-batch's activations alive at a time."""

import json
import os

import numpy as np
import pytest

from brainlike_np import train
from brainlike_np.backends import get_backend
from brainlike_np.models import get_preset
from brainlike_np.train_state import TrainSettings, TrainState

TEXT = (b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 60)


def state_with(grad_accum: int, grad_clip: float, model="brainlike",
               backend=None) -> TrainState:
    settings = TrainSettings(seed=3, dtype="float64", grad_accum=grad_accum,
                             grad_clip=grad_clip)
    return TrainState.create(model, get_preset(model, "tiny"),
                             backend or get_backend("numpy"), settings)


@pytest.mark.parametrize("model", ["brainlike", "transformer"])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05])      # 0.05: every step is clipped
def test_accumulated_steps_equal_the_large_batch_to_1e_12(model, grad_clip):
    large, accumulated = state_with(1, grad_clip, model), state_with(3, grad_clip, model)
    for step in range(3):
        x, y = large.sample_batch(TEXT, 15)                 # 3 micro-batches of 5
        x2, y2 = accumulated.sample_batch(TEXT, 15)
        assert np.array_equal(x, x2)
        a = large.train_step(x, y, lr=2e-3)
        b = accumulated.train_step(x2, y2, lr=2e-3)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-12, abs=0)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-12, abs=0)
        if grad_clip:
            assert a["grad_norm"] > grad_clip               # clipping was in play
    for name, p in large.params.items():
        np.testing.assert_allclose(accumulated.params[name], p, rtol=0, atol=1e-12,
                                   err_msg=name)
    for moments in ("m", "v"):
        for name, value in getattr(large.optimizer, moments).items():
            np.testing.assert_allclose(getattr(accumulated.optimizer, moments)[name], value,
                                       rtol=0, atol=1e-12, err_msg=f"{moments} {name}")


def test_accumulation_matches_the_large_batch_on_every_backend(backend):
    large, accumulated = (state_with(n, 0.05, backend=backend) for n in (1, 2))
    x, y = large.sample_batch(TEXT, 14)
    a, b = large.train_step(x, y, lr=2e-3), accumulated.train_step(x, y, lr=2e-3)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-12, abs=0)
    for name, p in large.params.items():
        np.testing.assert_allclose(backend.to_numpy(accumulated.params[name]),
                                   backend.to_numpy(p), rtol=0, atol=1e-12, err_msg=name)


def test_a_batch_that_does_not_split_evenly_is_refused():
    state = state_with(4, 1.0)
    x, y = state.sample_batch(TEXT, 10)
    with pytest.raises(ValueError, match="cannot be split into --grad-accum 4"):
        state.train_step(x, y, lr=1e-3)


def test_the_peak_is_one_micro_batchs_activations():
    """The step at 4 x 60 windows peaks at the 60-window step's peak plus about one
    gradient accumulator (the parameters' size), far below the 240-window step's."""
    backend = get_backend("numpy")

    def step_peak(batch, accum):
        state = state_with(accum, 1.0)
        x, y = state.sample_batch(TEXT, batch)
        state.train_step(x, y, lr=1e-3)             # AdamW's moments exist from here on
        memory = backend.memory_tracker(exact_peak=True)
        memory.reset_peak()
        base = memory.current_bytes()
        state.train_step(x, y, lr=1e-3)
        peak = memory.peak_bytes() - base
        memory.stop()
        return peak
    small, large, accumulated = step_peak(60, 1), step_peak(240, 1), step_peak(240, 4)
    grads = sum(p.nbytes for p in state_with(1, 1.0).params.values())
    assert small < accumulated <= small + 1.5 * grads and large > 3 * small


def test_the_trainer_takes_grad_accum_and_matches_the_large_batch(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    run = ["--preset", "tiny", "--dtype", "float64", "--max-iters", "4", "--eval-every", "4",
           "--eval-batches", "1", "--grad-clip", "0.05", "--data", str(corpus)]
    assert train.main(run + ["--batch-size", "12", "--out-dir", str(tmp_path / "a")]) == 0
    assert train.main(run + ["--batch-size", "4", "--grad-accum", "3",
                             "--out-dir", str(tmp_path / "b")]) == 0
    assert "batch 4 x 3 micro-batches" in capsys.readouterr().out
    a, b = (np.load(tmp_path / d / "ckpt.npz") for d in "ab")
    for name in a.files:
        if name.startswith("params/"):
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-12, err_msg=name)
    meta = json.loads(b["meta.json"].tobytes())
    assert meta["train"]["grad_accum"] == 3 and meta["train"]["batch_size"] == 4


def test_the_benchs_accumulated_largest_batch_fits_its_budget(monkeypatch):
    """bench/claims.py's --grad-accum row: the micro-batch it finds, accumulated 8 times,
    fits the budget (measured), and it is the largest: one window more would not fit
    beside the gradient accumulator."""
    from conftest import BENCH, load_bench_module
    monkeypatch.syspath_prepend(str(BENCH))           # claims.py imports lab, measure
    claims = load_bench_module("claims")
    lab = claims.Lab(get_backend("numpy"))
    subject = claims.Subject("tiny", "brainlike", get_preset("brainlike", "tiny"))
    for B in (4, 16):                                 # the line the bisection starts from
        lab.step_peak(subject, B)
    budget = lab.fixed_bytes(subject) + 2 * lab.step_peak(subject, 16)
    got = claims.accumulated_max_batch(lab, subject, budget, tolerance=0.0)
    assert got["n"] == claims.GRAD_ACCUM and got["micro_batch"] > 16
    assert got["training_bytes"] <= budget
    measured = lab.fixed_bytes(subject) + lab.accumulated_peak(subject, got["micro_batch"], 8)
    assert measured == pytest.approx(got["training_bytes"], rel=0.05)
    accumulator = sum(p.nbytes for p in lab.params(subject).values())
    over = lab.fixed_bytes(subject) + lab.step_peak(subject, got["micro_batch"] + 1)
    assert over > budget - accumulator
