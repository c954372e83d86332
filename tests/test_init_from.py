"""--init-from / TrainState.start_from: a new run from a checkpoint's parameters, with
fresh or kept AdamW state, recording where it started; its files round-trip through
--resume, generate and evaluate."""

import json
import os

import numpy as np
import pytest

import brainlike_np.generate as gen
from brainlike_np import evaluate as ev
from brainlike_np import train
from brainlike_np.backends import get_backend
from brainlike_np.checkpoint import CheckpointError
from brainlike_np.train_state import TrainSettings, TrainState

TEXT = (b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 60)
OTHER = (b"while True:\n    total += step * 3\n    if total > 977: break\n" * 50)
TINY = ["--preset", "tiny", "--eval-batches", "2", "--eval-every", "3"]


@pytest.fixture
def source(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    (tmp_path / "other.txt").write_bytes(OTHER)
    assert train.main(TINY + ["--max-iters", "5", "--data", str(corpus),
                              "--out-dir", str(tmp_path / "base")]) == 0
    capsys.readouterr()
    return str(tmp_path / "base" / "best.npz")


def test_fresh_start_takes_the_parameters_and_nothing_else(source):
    backend = get_backend("numpy")
    saved = TrainState.load(source, backend)
    state = TrainState.start_from(source, backend, TrainSettings(seed=4, lr=1e-3))
    assert state.step == 0 and state.optimizer.step == 0 and not state.optimizer.m
    assert state.run_id != saved.run_id and state.metrics == {}
    assert state.init_from == {"checkpoint": os.path.abspath(source), "run_id": saved.run_id,
                               "step": saved.step, "optimizer_step": 0}
    assert state.sampler.bit_generator.state == backend.rng(5).bit_generator.state
    for name in saved.params:
        np.testing.assert_array_equal(state.params[name], saved.params[name])


def test_a_kept_optimizer_takes_the_same_step_as_the_saved_run_would(source, tmp_path):
    backend = get_backend("numpy")
    saved = TrainState.load(source, backend)
    state = TrainState.start_from(source, backend, saved.settings, keep_optimizer=True)
    x, y = saved.sample_batch(OTHER, 6)
    saved.train_step(x, y, lr=2e-3)
    state.train_step(x, y, lr=2e-3)
    for name in saved.params:
        np.testing.assert_array_equal(state.params[name], saved.params[name])
    path = str(tmp_path / "kept.npz")
    state.save(path)
    again = TrainState.load(path, backend)          # its step count: the run's plus the kept
    assert (again.step, again.optimizer.step) == (1, saved.optimizer.step)


@pytest.mark.parametrize("init_from", [
    {"checkpoint": 3, "run_id": None, "step": 0, "optimizer_step": 0},
    {"checkpoint": "a", "run_id": None, "step": -1, "optimizer_step": 0},
    {"checkpoint": "a", "run_id": None, "step": 0, "optimizer_step": 7},   # not the count
    "a"])
def test_a_crafted_init_from_record_is_refused(source, tmp_path, init_from):
    with np.load(source) as ckpt:
        arrays = {k: ckpt[k] for k in ckpt.files}
    meta = json.loads(arrays["meta.json"].tobytes())
    meta["init_from"] = init_from
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = tmp_path / "crafted.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="init_from|step"):
        TrainState.load(str(path), get_backend("numpy"))


def test_the_command_records_the_start_and_its_files_round_trip(source, tmp_path, capsys):
    out = tmp_path / "tuned"
    other = str(tmp_path / "other.txt")
    assert train.main(["--init-from", source, "--data", other, "--max-iters", "4",
                       "--eval-every", "2", "--eval-batches", "2", "--lr", "1e-3",
                       "--out-dir", str(out)]) == 0
    capsys.readouterr()
    with open(out / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert first["step"] == 0 and first["init_from"]["checkpoint"] == os.path.abspath(source)
    with np.load(out / "ckpt.npz") as ckpt:
        meta = json.loads(ckpt["meta.json"].tobytes())
    assert meta["init_from"] == first["init_from"] and meta["train"]["data"] == other
    assert meta["train"]["lr"] == 1e-3 and meta["step"] == 4
    for name in ("ckpt.npz", "best.npz"):
        assert gen.main(["--checkpoint", str(out / name), "--max-new-bytes", "3"]) == 0
        assert ev.main(["--checkpoint", str(out / name), "--max-windows", "9"]) == 0
        assert "other.txt" in capsys.readouterr().out       # its own data by default
    assert train.main(["--resume", "--max-iters", "6", "--out-dir", str(out)]) == 0
    assert "done: 6 steps" in capsys.readouterr().out
    with open(out / "metrics.jsonl") as f:
        assert json.loads(f.readline()) == first


@pytest.mark.parametrize("argv, expected", [
    (["--resume", "--init-from", "{src}"], "give one"),
    (["--keep-optimizer"], "--keep-optimizer goes with --init-from"),
    (["--init-from", "{src}", "--preset", "default"], "drop --preset"),
    (["--init-from", "{src}", "--dtype", "float64"], "drop --dtype"),
    (["--init-from", "{dir}/missing.npz"], "missing.npz"),
])
def test_bad_init_from_requests_are_one_line(source, tmp_path, capsys, argv, expected):
    argv = [a.format(src=source, dir=tmp_path) for a in argv]
    try:
        code = train.main(argv + ["--data", str(tmp_path / "other.txt"),
                                  "--out-dir", str(tmp_path / "new")])
    except SystemExit as exc:       # a flag mistake: argparse's exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("error: ") and err.count("\n") == 1
    assert expected in err
    assert not os.path.exists(tmp_path / "new" / "ckpt.npz")
