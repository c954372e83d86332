"""Progress off a terminal, --log-csv, --tensorboard, the callback hook, the warm-up
that keeps kernel compilation out of the run's clock, and --help's choices."""

import csv
import json
import os
import struct
import sys
import time

import numpy as np
import pytest

from brainlike_np import train
from brainlike_np.backends import get_backend
from brainlike_np.models import get_preset
from brainlike_np.progress import warm_up
from brainlike_np.train_state import TrainSettings, TrainState

TINY = ["--preset", "tiny", "--eval-batches", "2", "--eval-every", "4"]


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_off_a_terminal_a_line_every_log_every_steps(tmp_path, corpus_file, capsys):
    assert train.main(TINY + ["--max-iters", "7", "--log-every", "3", "--data", corpus_file,
                              "--out-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "ms/step" in line]
    assert [line.split("|")[0].split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    for line in lines:
        for field in ("loss ", "tok/s", "ETA ", "peak ", "MiB"):
            assert field in line
    assert "preparing the" in out and "kernels" in out


def test_the_csv_and_the_callbacks_get_every_record_also_across_a_resume(tmp_path,
                                                                      corpus_file, capsys):
    out, table = tmp_path / "run", tmp_path / "log.csv"
    seen = []
    assert train.main(TINY + ["--max-iters", "5", "--data", corpus_file, "--out-dir", str(out),
                              "--log-csv", str(table)], callbacks=[seen.append]) == 0
    logged = metrics(out)
    assert [{k: v for k, v in r.items() if k != "run"} for r in logged] == seen
    assert train.main(["--resume", "--max-iters", "9", "--out-dir", str(out),
                       "--log-csv", str(table)]) == 0
    capsys.readouterr()
    with open(table) as f:
        rows = list(csv.DictReader(f))
    logged = metrics(out)
    assert [int(r["step"]) for r in rows] == [r["step"] for r in logged]
    assert [float(r["loss"]) for r in rows if r["loss"]] == [r["loss"] for r in logged
                                                             if "loss" in r]
    assert [float(r["val_loss"]) for r in rows if r["val_loss"]] == [
        r["val_loss"] for r in logged if "val_loss" in r]


def test_a_csv_path_holding_something_else_is_refused_unchanged(tmp_path, corpus_file, capsys):
    table = tmp_path / "notes.csv"
    table.write_bytes(b"precious,data\n")
    assert train.main(TINY + ["--data", corpus_file, "--out-dir", str(tmp_path / "run"),
                              "--log-csv", str(table)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--log-csv" in err
    assert table.read_bytes() == b"precious,data\n"


def read_scalars(path) -> dict:
    """tag -> [(step, value)] of a TensorBoard event file: TFRecords (length, its CRC,
    the Event protobuf, its CRC), parsed with tensorboardX's own Event message."""
    from tensorboardX.proto.event_pb2 import Event
    scalars, data = {}, open(path, "rb").read()
    at = 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_event_files_and_the_missing_extra(tmp_path, corpus_file, capsys,
                                                       monkeypatch):
    pytest.importorskip("tensorboardX")
    board = tmp_path / "tb"
    assert train.main(TINY + ["--max-iters", "4", "--data", corpus_file,
                              "--out-dir", str(tmp_path / "a"), "--tensorboard", str(board)]) == 0
    events = [p for p in os.listdir(board) if p.startswith("events.out.tfevents")]
    assert len(events) == 1
    scalars = read_scalars(board / events[0])         # read back as TensorBoard reads it
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "a" / "metrics.jsonl")
              if "loss" in json.loads(line)]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], losses, rtol=1e-6)
    assert [step for step, _ in scalars["valid/val_loss"]] == [4]
    monkeypatch.setitem(sys.modules, "tensorboardX", None)        # not installed
    capsys.readouterr()
    assert train.main(TINY + ["--data", corpus_file, "--out-dir", str(tmp_path / "b"),
                              "--tensorboard", str(board)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'pip install -e ".[tensorboard]"' in err


def test_the_warm_up_changes_neither_parameters_nor_data_order():
    state = TrainState.create("brainlike", get_preset("brainlike", "tiny"),
                              get_backend("numpy"), TrainSettings(seed=3))
    params = {n: np.array(a) for n, a in state.params.items()}
    rng = state.sampler.bit_generator.state
    warm_up(state, 5, announce=False)
    assert state.sampler.bit_generator.state == rng
    for name, before in params.items():
        np.testing.assert_array_equal(state.params[name], before)


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for choices in ("tiny, default, note", "one of replace, residual", "one of last, all",
                    "one of learned, random", "one of sparse, dense", "one of all, last"):
        assert choices in text


def test_on_a_terminal_the_bar_replaces_the_lines(monkeypatch, capsys):
    from brainlike_np.progress import Progress
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    seen = []
    progress = Progress(total=9, initial=2, log_every=1, callbacks=[seen.append])
    record = {"step": 3, "loss": 2.5, "ms_per_step": 4.0, "tokens_per_s": 10.0,
              "peak_bytes": 2**20}
    progress.record(record)
    assert progress.bar is not None and progress.bar.n == 3 and seen == [record]
    progress.close()
    assert "ms/step" not in capsys.readouterr().out


def test_the_warm_up_stays_out_of_the_runs_seconds_and_peak_memory(tmp_path, corpus_file,
                                                                   capsys, monkeypatch):
    """A slow, memory-hungry warm-up (as a first run's compilation is) shows in neither
    the first step's time_s nor its peak_bytes."""
    real = train.warm_up

    def slow_and_big(state, local_batch, announce=True):
        real(state, local_batch, announce)
        hog = state.backend.xp.ones(2**24, dtype=state.backend.xp.float32)   # 64 MiB
        del hog
        time.sleep(1.5)
    monkeypatch.setattr(train, "warm_up", slow_and_big)
    out = tmp_path / "run"
    assert train.main(TINY + ["--max-iters", "2", "--data", corpus_file,
                              "--out-dir", str(out)]) == 0
    first = metrics(out)[0]
    assert first["step"] == 1 and first["time_s"] < 1.0
    assert first["peak_bytes"] < 2**24 * 4 / 2
