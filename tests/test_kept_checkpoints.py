"""best.npz, --keep-last, --save-every: written as ckpt.npz is, and each taken by
--resume, generate and evaluate."""

import json
import os

import numpy as np
import pytest

import brainlike_np.generate as gen
from brainlike_np import evaluate as ev
from brainlike_np import train
from conftest import CORPUS_TEXT as TEXT

TINY = ["--preset", "tiny", "--eval-batches", "2"]


def meta(path):
    with np.load(path) as ckpt:
        return json.loads(ckpt["meta.json"].tobytes())


def evaluations(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["val_loss"] for r in map(json.loads, f) if "val_loss" in r}


def test_best_keep_last_and_save_every(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    argv = TINY + ["--max-iters", "11", "--eval-every", "4", "--save-every", "3",
                   "--keep-last", "2", "--lr", "0.05", "--data", corpus_file,
                   "--out-dir", str(out)]
    assert train.main(argv) == 0
    capsys.readouterr()
    evals = evaluations(out)
    assert sorted(evals) == [4, 8, 11]
    best_step = min(evals, key=evals.get)
    assert meta(out / "best.npz")["step"] == best_step
    assert meta(out / "best.npz")["metrics"]["val_loss"] == evals[best_step]
    # saves at 3, 4, 6, 8, 9, 11: the last two are kept
    assert sorted(p for p in os.listdir(out) if p.startswith("ckpt-")) == [
        "ckpt-000009.npz", "ckpt-000011.npz"]
    assert meta(out / "ckpt-000009.npz")["step"] == 9
    assert meta(out / "ckpt.npz")["step"] == 11
    # a numbered checkpoint of another run, put in the folder, is never pruned
    foreign = tmp_path / "foreign"
    assert train.main(TINY + ["--max-iters", "1", "--eval-every", "1", "--keep-last", "1",
                              "--data", corpus_file, "--out-dir", str(foreign)]) == 0
    os.rename(foreign / "ckpt-000001.npz", out / "ckpt-000001.npz")
    assert train.main(["--resume", "--max-iters", "13", "--out-dir", str(out)]) == 0
    assert sorted(p for p in os.listdir(out) if p.startswith("ckpt-")) == [
        "ckpt-000001.npz", "ckpt-000012.npz", "ckpt-000013.npz"]


def test_best_is_never_replaced_by_a_worse_state(tmp_path, corpus_file, capsys):
    """A run whose lr diverges its validation loss upward keeps the early best."""
    out = tmp_path / "run"
    assert train.main(TINY + ["--max-iters", "4", "--eval-every", "2", "--data", corpus_file,
                              "--out-dir", str(out)]) == 0
    best = meta(out / "best.npz")
    # make the saved best look better than anything the run can reach
    os.rename(out / "best.npz", tmp_path / "kept.npz")
    with np.load(tmp_path / "kept.npz") as ckpt:
        arrays = {k: ckpt[k] for k in ckpt.files}
    best["metrics"]["val_loss"] = 1e-9
    arrays["meta.json"] = np.frombuffer(json.dumps(best).encode(), dtype=np.uint8)
    np.savez(out / "best.npz", **arrays)
    assert train.main(["--resume", "--max-iters", "8", "--out-dir", str(out)]) == 0
    capsys.readouterr()
    assert meta(out / "best.npz")["step"] == best["step"]
    assert meta(out / "ckpt.npz")["step"] == 8


@pytest.mark.parametrize("name", ["best.npz", "ckpt-000004.npz"])
def test_every_kept_checkpoint_resumes_generates_and_evaluates(tmp_path, corpus_file,
                                                               capsys, name):
    out = tmp_path / "run"
    assert train.main(TINY + ["--max-iters", "6", "--eval-every", "2", "--save-every", "4",
                              "--keep-last", "3", "--data", corpus_file,
                              "--out-dir", str(out)]) == 0
    capsys.readouterr()
    path = str(out / name)
    assert gen.main(["--checkpoint", path, "--max-new-bytes", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert ev.main(["--checkpoint", path, "--max-windows", "20"]) == 0
    assert f"model brainlike at step {meta(path)['step']}" in capsys.readouterr().out
    # resumed in its own out-dir: trains on from its step to the new --max-iters
    assert train.main(["--resume", path, "--max-iters", "8", "--out-dir", str(out)]) == 0
    assert "done: 8 steps" in capsys.readouterr().out
    assert meta(out / "ckpt.npz")["step"] == 8


def test_a_new_run_refuses_a_folder_with_a_kept_checkpoint(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.npz").write_bytes(b"")
    assert train.main(TINY + ["--data", corpus_file, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "best.npz' already exists" in err


@pytest.mark.parametrize("name", ["best.npz", "ckpt-000200.npz"])
def test_a_data_glob_that_matches_a_kept_checkpoint_is_refused(tmp_path, corpus_file,
                                                                capsys, name):
    out = tmp_path / "run"
    prefix = name.split("0")[0].split(".")[0]         # best, ckpt-
    out.mkdir()
    (out / (prefix + "data.txt")).write_bytes(TEXT)
    pattern = str(out / (prefix + "*"))
    assert train.main(TINY + ["--data", pattern, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"matches '{name}'" in err


@pytest.mark.parametrize("flags, expected", [(["--save-every", "0"], "--save-every"),
                                             (["--keep-last", "-1"], "--keep-last"),
                                             (["--log-every", "0"], "--log-every")])
def test_bad_save_and_log_intervals(tmp_path, corpus_file, capsys, flags, expected):
    assert train.main(TINY + flags + ["--data", corpus_file,
                                      "--out-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err


@pytest.mark.parametrize("kept", ["ckpt.npz", "best.npz"])
def test_a_checkpoint_of_another_run_is_not_resumed_into_a_folder(tmp_path, corpus_file,
                                                                  capsys, kept):
    """Another run's ckpt.npz or best.npz in --out-dir: refused, nothing changed."""
    for name, seed in (("a", "1"), ("b", "2")):
        assert train.main(TINY + ["--max-iters", "2", "--eval-every", "2", "--seed", seed,
                                  "--data", corpus_file, "--out-dir", str(tmp_path / name)]) == 0
    target = tmp_path / "b"
    if kept == "best.npz":      # b's best.npz stays, its ckpt.npz goes: only best.npz differs
        os.remove(target / "ckpt.npz")
        os.remove(target / "metrics.jsonl")
    before = {p: (target / p).read_bytes() for p in os.listdir(target) if p != ".lock"}
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "a" / "best.npz"), "--max-iters", "4",
                       "--out-dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "another run's checkpoint" in err
    assert {p: (target / p).read_bytes() for p in os.listdir(target) if p != ".lock"} == before


def test_a_checkpoint_saved_between_evaluations_resumes_bit_for_bit(tmp_path, corpus_file,
                                                                    capsys):
    """ckpt-000004.npz of a --save-every 2 run (no evaluation at step 4), resumed in a copy
    of its folder, ends at the same parameters and moments as the uninterrupted run."""
    out = tmp_path / "run"
    assert train.main(TINY + ["--max-iters", "7", "--eval-every", "3", "--save-every", "2",
                              "--keep-last", "9", "--data", corpus_file,
                              "--out-dir", str(out)]) == 0
    assert meta(out / "ckpt-000004.npz")["metrics"]["step"] == 3    # its last evaluation
    again = tmp_path / "again"
    again.mkdir()
    (again / "ckpt.npz").write_bytes((out / "ckpt-000004.npz").read_bytes())
    (again / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes())
    assert train.main(["--resume", "--out-dir", str(again)]) == 0
    capsys.readouterr()
    with np.load(out / "ckpt.npz") as a, np.load(again / "ckpt.npz") as b:
        arrays = [k for k in a.files if k != "meta.json"]
        assert arrays and all(np.array_equal(a[k], b[k]) for k in arrays)
    assert evaluations(again) == evaluations(out)
