"""The trainer and generator end to end, resume, Ctrl-C, and every user-facing error."""

import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest

import brainlike_np.generate as gen
from brainlike_np import train
from brainlike_np.train_state import TrainState
from brainlike_np.backends import get_backend
from conftest import CORPUS_TEXT as TEXT

TINY_RUN = ["--preset", "tiny", "--eval-every", "5", "--eval-batches", "2"]


def run_main(argv, capsys):
    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def train_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def test_train_writes_checkpoint_and_metrics_then_generates(tmp_path, corpus_file, capsys):
    out_dir = str(tmp_path / "run")
    code, out, _ = run_main(TINY_RUN + ["--max-iters", "10", "--data", corpus_file,
                                        "--out-dir", out_dir], capsys)
    assert code == 0
    assert "unigram" in out and "bigram" in out and "done: 10 steps" in out
    assert [s for s, _ in train_losses(out_dir)] == list(range(1, 11))
    ckpt = np.load(os.path.join(out_dir, "ckpt.npz"))          # readable without us
    meta = json.loads(ckpt["meta.json"].tobytes())
    assert meta["step"] == 10 and meta["config"]["n_neurons"] == 32
    assert ckpt["params/W_dec"].shape == (32, 256)

    assert gen.main(["--checkpoint", os.path.join(out_dir, "ckpt.npz"), "--prompt", "def ",
                     "--max-new-bytes", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text.encode()) >= 4 + 20


def test_generation_is_reproducible_and_greedy_is_argmax(tmp_path, corpus_file, capsys):
    out_dir = str(tmp_path / "run")
    run_main(TINY_RUN + ["--max-iters", "5", "--data", corpus_file, "--out-dir", out_dir], capsys)
    state = TrainState.load(os.path.join(out_dir, "ckpt.npz"), get_backend("numpy"))
    a = gen.generate(state, b"def ", 15, temperature=1.0, seed=3)
    b = gen.generate(state, b"def ", 15, temperature=1.0, seed=3)
    assert a == b and len(a) == 15
    greedy = gen.generate(state, b"def ", 1, temperature=0.0)
    padded = b"\n" * (state.cfg.context - 4) + b"def "    # short prompts are left-padded
    window = np.frombuffer(padded, dtype=np.uint8)[None, :].astype(np.int64)
    assert greedy[0] == int(np.argmax(state.next_logits(window)[0]))


def test_ctrl_c_saves_and_resume_continues_the_same_loss_sequence(
        tmp_path, corpus_file, capsys, monkeypatch):
    """A real SIGINT after step 5 of 12: exit 130 with a checkpoint at step 5; resuming
    gives exactly the losses of an uninterrupted run (same cosine schedule)."""
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    args = TINY_RUN + ["--data", corpus_file, "--max-iters", "12"]
    assert run_main(args + ["--out-dir", straight], capsys)[0] == 0

    real_step = TrainState.train_step

    def step_then_ctrl_c(self, x, y, lr):
        metrics = real_step(self, x, y, lr)
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(TrainState, "train_step", step_then_ctrl_c)
    code, _, err = run_main(args + ["--out-dir", split], capsys)
    assert code == train.EXIT_INTERRUPTED and "resume with --resume" in err
    meta = json.loads(np.load(os.path.join(split, "ckpt.npz"))["meta.json"].tobytes())
    assert meta["step"] == 5
    monkeypatch.setattr(TrainState, "train_step", real_step)
    assert run_main(["--resume", "--out-dir", split], capsys)[0] == 0
    assert train_losses(split) == train_losses(straight)
    assert len(train_losses(split)) == 12
    resumed = TrainState.load(os.path.join(split, "ckpt.npz"), get_backend("numpy"))
    assert resumed.step == 12 and resumed.params["b_a"].shape == ()   # 0-d stays 0-d


def test_resuming_a_finished_run_reports_it_without_training(tmp_path, corpus_file, capsys):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--max-iters", "5", "--data", corpus_file,
                                "--out-dir", out_dir], capsys)[0] == 0
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        logged = f.read()
    code, out, err = run_main(["--resume", "--out-dir", out_dir], capsys)
    assert code == 0 and "done: 5 steps" in out
    assert "raise --max-iters" in err
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        assert f.read() == logged      # no second evaluation of the same step


def one_line_error(capsys, argv, expected):
    code, _, err = run_main(argv, capsys)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    return lines[0]


@pytest.mark.parametrize("name, expected", [
    ("tensorflow", "unknown backend 'tensorflow'"),
])
def test_unknown_backend(monkeypatch, capsys, tmp_path, name, expected):
    monkeypatch.setenv("BRAINLIKE_BACKEND", name)
    one_line_error(capsys, ["--out-dir", str(tmp_path)], expected)


def test_cupy_without_gpu_or_cupy(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("BRAINLIKE_BACKEND", "cupy")
    monkeypatch.setitem(sys.modules, "cupy", None)
    one_line_error(capsys, ["--out-dir", str(tmp_path)], "backend 'cupy' needs CuPy")


def test_missing_data_file(capsys, tmp_path):
    one_line_error(capsys, TINY_RUN + ["--data", str(tmp_path / "nope.txt"),
                                       "--out-dir", str(tmp_path / "o")], "does not exist")


def test_empty_and_too_short_corpus(capsys, tmp_path):
    empty, short = tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.write_bytes(b"")
    short.write_bytes(b"abc" * 5)
    one_line_error(capsys, TINY_RUN + ["--data", str(empty), "--out-dir", str(tmp_path / "a")],
                   "is empty")
    one_line_error(capsys, TINY_RUN + ["--data", str(short), "--out-dir", str(tmp_path / "b")],
                   "too short")


@pytest.mark.parametrize("flags, expected", [
    (["--k-active", "100"], "k_active (100) must be at most n_neurons (32)"),
    (["--n-heads", "3"], "divisible by n_heads"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_invalid_config(capsys, tmp_path, corpus_file, flags, expected):
    one_line_error(capsys, TINY_RUN + flags + ["--data", corpus_file,
                                               "--out-dir", str(tmp_path / "o")], expected)


def test_existing_checkpoint_is_never_overwritten(capsys, tmp_path, corpus_file):
    out_dir = str(tmp_path / "run")
    args = TINY_RUN + ["--max-iters", "5", "--data", corpus_file, "--out-dir", out_dir]
    assert run_main(args, capsys)[0] == 0
    before = open(os.path.join(out_dir, "ckpt.npz"), "rb").read()
    one_line_error(capsys, args, "already exists; pass --resume")
    assert open(os.path.join(out_dir, "ckpt.npz"), "rb").read() == before


def test_checkpoint_from_another_config(capsys, tmp_path, corpus_file):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--max-iters", "5", "--data", corpus_file,
                                "--out-dir", out_dir], capsys)[0] == 0
    one_line_error(capsys, ["--resume", "--n-neurons", "64", "--out-dir", out_dir],
                   "trained with n_neurons=32, not 64")


def test_corrupted_checkpoint(capsys, tmp_path):
    bad = tmp_path / "ckpt.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    one_line_error(capsys, ["--resume", str(bad), "--out-dir", str(tmp_path)],
                   "is corrupted or not a brainlike-np checkpoint")
    assert bad.read_bytes().startswith(b"PK\x03\x04 definitely")   # left as it was


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the point
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path, corpus_file):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--max-iters", "5", "--data", corpus_file,
                                "--out-dir", out_dir], capsys)[0] == 0
    ckpt = os.path.join(out_dir, "ckpt.npz")
    before = open(ckpt, "rb").read()
    one_line_error(capsys, ["--resume", "--max-iters", "50", "--lr", "1e38", "--warmup", "0",
                            "--eval-every", "1000", "--out-dir", out_dir], "the loss became")
    assert open(ckpt, "rb").read() == before


def test_the_transformer_trains_and_generates_through_the_same_cli(tmp_path, corpus_file, capsys):
    out_dir = str(tmp_path / "run")
    code, out, _ = run_main(["--model", "transformer", "--preset", "tiny", "--max-iters", "6",
                             "--eval-every", "3", "--eval-batches", "2", "--data", corpus_file,
                             "--out-dir", out_dir], capsys)
    assert code == 0 and "model transformer" in out
    losses = [loss for _, loss in train_losses(out_dir)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert gen.main(["--checkpoint", os.path.join(out_dir, "ckpt.npz"),
                     "--max-new-bytes", "5"]) == 0
    one_line_error(capsys, ["--model", "transformer", "--preset", "tiny", "--k-active", "4",
                            "--data", corpus_file, "--out-dir", str(tmp_path / "x")],
                   "model 'transformer' has no config field(s) k_active")


# ---- checkpoints written before the command-line rework (issue 21) ----------------------
FIXTURE = os.path.join(os.path.dirname(__file__), "data", "checkpoint-8efa3d6")
FIXTURE_RUN = ["--preset", "tiny", "--n-neurons", "8", "--k-active", "2", "--eval-batches",
               "2", "--eval-every", "2", "--data", "corpus.txt"]    # the data path relative


def read_checkpoint(path):
    with np.load(path) as ck:
        arrays = {k: ck[k] for k in ck.files}
    return arrays, json.loads(arrays.pop("meta.json").tobytes())


def test_a_checkpoint_written_by_the_earlier_code_resumes_bit_for_bit(tmp_path, capsys,
                                                                     monkeypatch):
    """tests/data/checkpoint-8efa3d6: ckpt.npz and metrics.jsonl of FIXTURE_RUN stopped
    at step 2, written by commit 8efa3d6. It loads with every array and field as saved,
    and resuming it to step 4 gives bit for bit what resuming the same state saved by
    this code gives. (A fresh run no longer matches 8efa3d6's in the last bits: the
    device-side AdamW step of 698873e and the one-pass softmax cross-entropy of 8a933a6
    changed the arithmetic, not the format.)"""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_bytes(TEXT)
    shutil.copytree(FIXTURE, tmp_path / "old")
    old_arrays, old_meta = read_checkpoint("old/ckpt.npz")
    state = TrainState.load("old/ckpt.npz", get_backend("numpy"))
    groups = {"params": state.params, "adam_m": state.optimizer.m, "adam_v": state.optimizer.v}
    for key, saved in old_arrays.items():
        group, _, name = key.partition("/")
        loaded = np.asarray(groups[group][name])
        assert loaded.dtype == saved.dtype and np.array_equal(loaded, saved), key
    assert (state.step, state.sampler.bit_generator.state, state.metrics) == (
        old_meta["step"], old_meta["rng"], old_meta["metrics"])
    shutil.copytree(FIXTURE, tmp_path / "rewritten")
    state.save("rewritten/ckpt.npz")
    for out_dir in ("old", "rewritten"):
        assert run_main(["--resume", "--max-iters", "4", "--out-dir", out_dir], capsys)[0] == 0
    resumed, resumed_meta = read_checkpoint("old/ckpt.npz")
    again, again_meta = read_checkpoint("rewritten/ckpt.npz")
    assert resumed.keys() == again.keys() == old_arrays.keys()
    assert all(np.array_equal(resumed[k], again[k]) for k in again)
    drop_time = lambda meta: {**meta, "metrics": {k: v for k, v in meta["metrics"].items()
                                                  if k != "time_s"}}
    assert drop_time(resumed_meta) == drop_time(again_meta) and resumed_meta["step"] == 4
    assert train_losses("old") == train_losses("rewritten")


def test_train_step_refuses_windows_shorter_than_the_context():
    """A batch of windows shorter than the model's context would train on what the model
    never sees at generation; refused before anything changes."""
    from brainlike_np.models import get_preset
    state = TrainState.create("brainlike", get_preset("brainlike", "tiny"), get_backend("numpy"))
    x = np.zeros((2, state.cfg.context - 1), dtype=np.int64)
    with pytest.raises(ValueError, match="windows must be the model's context"):
        state.train_step(x, np.zeros(2, dtype=np.int64), lr=1e-3)
    assert state.step == 0


def test_a_checkpoint_saved_through_the_library_resumes_in_the_cli(tmp_path, corpus_file,
                                                                   capsys):
    """README "Library use": ``TrainState.create(...); state.save(p)`` has no batch size
    and no data record. The CLI resumes it at the preset's default batch size, with no
    claim that an older version wrote it, then resumes its own checkpoint again."""
    from brainlike_np.models import get_preset
    from brainlike_np.train_state import default_batch_size
    from npz import load_npz
    state = TrainState.create("brainlike", get_preset("brainlike", "tiny"), get_backend("numpy"))
    x, y = state.sample_batch(np.frombuffer(TEXT, dtype=np.uint8), batch_size=3)
    state.train_step(x, y, lr=1e-3)
    out = tmp_path / "run"
    out.mkdir()
    state.save(str(out / "ckpt.npz"))
    code, _, err = run_main(["--resume", "--out-dir", str(out), "--max-iters", "3",
                             "--eval-batches", "2", "--data", corpus_file], capsys)
    assert code == 0, err
    assert err.strip().splitlines() == [
        "note: the checkpoint has no data record (saved by an older version, or through the "
        "library without one), so the data could not be checked against the run's"]
    meta = load_npz(str(out / "ckpt.npz"))[1]
    assert meta["step"] == 3
    assert meta["train"]["batch_size"] == default_batch_size("brainlike", "tiny") == 4
    assert meta["data"]["files"][0]["path"] == os.path.realpath(corpus_file)
    code, _, err = run_main(["--resume", "--out-dir", str(out), "--max-iters", "5",
                             "--eval-batches", "2"], capsys)
    assert code == 0 and err == ""
    assert load_npz(str(out / "ckpt.npz"))[1]["step"] == 5


def test_the_training_loop_never_waits_for_the_device_beyond_the_steps_read(
        tmp_path, corpus_file, capsys, monkeypatch):
    """train_step returns once its loss is on the host, so the loop needs no synchronize
    of its own to time the step; the logged throughput is still a positive figure."""
    from brainlike_np.backends import Backend
    calls = []
    monkeypatch.setattr(Backend, "synchronize", lambda self: calls.append(1))
    assert train.main(TINY_RUN + ["--max-iters", "3", "--data", corpus_file,
                                  "--out-dir", str(tmp_path)]) == 0
    assert calls == []
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["tokens_per_s"] > 0 for r in steps)


def test_the_readme_library_snippet_records_the_settings_its_loop_used(tmp_path, monkeypatch):
    """README "Library use": the checkpoint holds the lr, warmup, steps and batch size
    that the loop trained with, not TrainSettings' defaults."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    snippet = readme.split("## Library use")[1].split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    meta = read_checkpoint(str(tmp_path / "tiny.npz"))[1]
    used = {"lr": scope["s"].lr, "warmup": scope["s"].warmup, "batch_size": 16,
            "max_iters": scope["step"] + 1}
    assert {k: meta["train"][k] for k in used} == used and meta["step"] == used["max_iters"]
