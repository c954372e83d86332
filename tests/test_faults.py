"""Faults and bad input, end to end: chains of resumes, SIGKILL at random points, SIGTERM,
a full disk, unusable paths, two trainers on one folder, divergence, damaged checkpoints,
bad generation arguments, the corpus's memory, and the library's own checks.

Every refusal is one ``error: ...`` line on stderr, a non-zero exit, no traceback, and
the last good checkpoint unchanged. The command lines run in a subprocess
(``sys.executable -m brainlike_np.train``) where the process itself is the point (signals,
the lock, startup order); the many damaged-checkpoint and argument cases call ``main``
in this process, which is the same code without the interpreter's start-up time."""

import copy
import dataclasses
import io
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import brainlike_np.generate as gen
from brainlike_np import data, outdir, train, train_cli
from brainlike_np.backends import get_backend
from brainlike_np.checkpoint import CheckpointError, save_npz_atomic
from brainlike_np.config import ConfigError
from brainlike_np.train_state import TrainState
from diskfull import disk_fills_up
from npz import load_npz
from conftest import CORPUS_TEXT as TEXT

TINY = ["--preset", "tiny", "--eval-batches", "2"]
TRAIN = [sys.executable, "-m", "brainlike_np.train"]
AS_ROOT = os.geteuid() == 0
ROOT_REASON = "runs as root: file permissions do not deny root"


# ---- helpers -----------------------------------------------------------------------
def cli_env():
    return {**os.environ, "BRAINLIKE_BACKEND": "numpy", "PYTHONUNBUFFERED": "1"}


def cli(args, timeout=60, command=TRAIN):
    """The trainer's command line in a fresh interpreter."""
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), stdin=subprocess.DEVNULL)


def assert_one_error(code, err, expected="", exit_code=None) -> str:
    """Non-zero exit, stderr exactly one ``error:`` line holding ``expected``, no
    traceback; -> the line."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code != 0, err
    if exit_code is not None:
        assert code == exit_code, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    return lines[0]


def assert_cli_error(args, expected="", exit_code=None, timeout=60, command=TRAIN) -> str:
    proc = cli(args, timeout, command)
    return assert_one_error(proc.returncode, proc.stderr, expected, exit_code)


def main_error(main, argv, capsys, expected="", exit_code=None, before_training=True) -> str:
    """The same checks on a ``main`` called in this process; ``before_training``: it
    must print nothing on stdout either."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:        # argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert out == "" or not before_training, out
    return assert_one_error(code, err, expected, exit_code)


class Trainer:
    """A trainer running in the background, its output in files (never a full pipe)."""

    def __init__(self, args, log_dir, preexec_fn=None):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(TRAIN + [str(a) for a in args], stdout=out,
                                         stderr=err, env=cli_env(), stdin=subprocess.DEVNULL,
                                         preexec_fn=preexec_fn)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for_training(self, timeout=60) -> float:
        """Wait for the banner's last line (printed just before the first step); -> the
        time it appeared. Fails if the process ends first or takes over ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "\nbaselines" in self.out_path.read_text():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"the trainer ended before training: {self.stderr}")
            time.sleep(0.01)
        raise AssertionError("the trainer did not start training in time")

    def signal(self, signum) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout=120) -> int:
        return self.proc.wait(timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):          # never leave a trainer behind
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def strict_records(out_dir) -> list[dict]:
    """metrics.jsonl as strict JSON (NaN or infinity fails)."""
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def losses(out_dir) -> list[tuple]:
    return [(r["step"], r["loss"]) for r in strict_records(out_dir) if "loss" in r]


def deterministic(records) -> list[dict]:
    """The records without the timing and memory fields and the run id, which vary from
    run to run."""
    varying = ("tokens_per_s", "ms_per_step", "peak_bytes", "time_s", "run")
    return [{k: v for k, v in r.items() if k not in varying} for r in records]


def ckpt_bytes(out_dir) -> bytes:
    with open(os.path.join(out_dir, "ckpt.npz"), "rb") as f:
        return f.read()


def leftovers(out_dir) -> list[str]:
    return [n for n in os.listdir(out_dir) if n.startswith(".tmp-")]


def train_here(argv, capsys) -> int:
    code = train.main([str(a) for a in argv])
    capsys.readouterr()
    return code


# ---- a chain of CLI resumes (docs/guarantees.md, (a)) ---------------------------------
def test_a_chain_of_resumes_loads_generates_and_logs_each_step_once(tmp_path, corpus_file,
                                                                    capsys):
    out = tmp_path / "run"
    assert train_here(TINY + ["--eval-every", "2", "--max-iters", 3, "--data", corpus_file,
                              "--out-dir", out], capsys) == 0
    assert train_here(["--resume", "--max-iters", 6, "--out-dir", out], capsys) == 0
    assert train_here(["--resume", "--max-iters", 9, "--out-dir", out], capsys) == 0
    state = TrainState.load(str(out / "ckpt.npz"), get_backend("numpy"))
    assert state.step == 9 and state.optimizer.step == 9
    assert len(gen.generate(state, b"def ", 8, temperature=1.0, seed=2)) == 8
    assert gen.main(["--checkpoint", str(out / "ckpt.npz"), "--max-new-bytes", "8"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert [s for s, _ in losses(out)] == list(range(1, 10))
    evals = [r["step"] for r in strict_records(out) if "val_loss" in r]
    assert evals == [2, 3, 4, 6, 8, 9]


# ---- SIGKILL at random points (guarantees (a), (e)) ----------------------------------
def evaluations(out_dir) -> dict:
    """step -> the evaluation record without its seconds."""
    return {r["step"]: deterministic([r])[0] for r in strict_records(out_dir) if "val_loss" in r}


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path,
                                                                          corpus_file):
    """Three SIGKILLs at random moments of training (mid-step, mid-save, mid-log), each
    followed by a resume: the same losses, evaluations, parameters and moments as one
    uninterrupted run, and no temporary file left."""
    run = TINY + ["--eval-every", "2", "--max-iters", "30", "--data", corpus_file]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    with Trainer(run + ["--out-dir", straight], tmp_path / "log0") as trainer:
        began = trainer.wait_for_training()
        assert trainer.wait() == 0, trainer.stderr
        training_s = time.monotonic() - began

    def again():          # killed before the first checkpoint: start anew
        return (["--resume", "--out-dir", killed] if (killed / "ckpt.npz").exists()
                else run + ["--out-dir", killed])

    delays = random.Random(9)
    for attempt in range(3):
        with Trainer(again(), tmp_path / f"log{attempt + 1}") as trainer:
            trainer.wait_for_training()
            time.sleep(delays.uniform(0.0, training_s))
            trainer.signal(signal.SIGKILL)
            trainer.wait()
    final = cli(again(), timeout=120)
    assert final.returncode == 0, final.stderr

    assert losses(killed) == losses(straight) and len(losses(killed)) == 30
    steps = [deterministic([r for r in strict_records(d) if "loss" in r])
             for d in (killed, straight)]
    assert steps[0] == steps[1]                # loss, lr and gradient norm of every step
    assert evaluations(killed) == evaluations(straight)
    a, meta_a = load_npz(str(killed / "ckpt.npz"))
    b, meta_b = load_npz(str(straight / "ckpt.npz"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert meta_a["rng"] == meta_b["rng"] and meta_a["step"] == 30
    assert leftovers(killed) == []


def test_an_evaluation_lost_between_save_and_log_is_logged_on_resume(tmp_path, corpus_file,
                                                                     capsys):
    """Killed after writing the step-4 checkpoint, before logging its evaluation (the
    file then ends with a torn line): the resume logs it, each step once."""
    out = tmp_path / "run"
    assert train_here(TINY + ["--eval-every", "2", "--max-iters", 4, "--data", corpus_file,
                              "--out-dir", out], capsys) == 0
    records = strict_records(out)
    assert "val_loss" in records[-1] and records[-1]["step"] == 4
    with open(out / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[:-1])
        f.write('{"step": 5, "lo')
    assert train_here(["--resume", "--max-iters", 6, "--out-dir", out], capsys) == 0
    assert [(r["step"], "val_loss" in r) for r in strict_records(out)] == [
        (1, False), (2, False), (2, True), (3, False), (4, False), (4, True),
        (5, False), (6, False), (6, True)]
    assert strict_records(out)[5] == records[-1]


# ---- SIGTERM (docs/guarantees.md, Signals) ---------------------------------------------
def test_sigterm_saves_exits_143_and_resume_continues(tmp_path, corpus_file):
    out = tmp_path / "run"
    with Trainer(TINY + ["--eval-every", "1000", "--max-iters", "1000", "--data",
                         corpus_file, "--out-dir", out], tmp_path / "log") as trainer:
        trainer.wait_for_training()
        time.sleep(0.3)
        trainer.signal(signal.SIGTERM)
        assert trainer.wait(timeout=60) == train.EXIT_TERMINATED, trainer.stderr
    err = trainer.stderr
    assert "resume with --resume" in err and "Traceback" not in err
    reached = losses(out)[-1][0]
    assert 0 < reached < 1000
    assert TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).step == reached
    resumed = cli(["--resume", "--max-iters", reached + 3, "--out-dir", out])
    assert resumed.returncode == 0, resumed.stderr
    assert [s for s, _ in losses(out)] == list(range(1, reached + 4))


def test_an_inherited_ignored_sigint_stays_ignored(tmp_path, corpus_file):
    """Started with SIGINT ignored (``trainer &`` in a script): Ctrl-C in the terminal,
    while starting or training, does not stop it; SIGTERM still does."""
    out = tmp_path / "run"
    with Trainer(TINY + ["--eval-every", "1000", "--max-iters", "1000", "--data",
                         corpus_file, "--out-dir", out], tmp_path / "log",
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) as trainer:
        for _ in range(20):          # while the libraries load
            time.sleep(0.05)
            trainer.signal(signal.SIGINT)
        trainer.wait_for_training()
        time.sleep(0.3)
        trainer.signal(signal.SIGINT)
        time.sleep(0.5)
        assert trainer.proc.poll() is None, trainer.stderr
        trainer.signal(signal.SIGTERM)
        assert trainer.wait(timeout=60) == train.EXIT_TERMINATED, trainer.stderr
    assert losses(out)[-1][0] > 0


# ---- a full disk during a save over an existing checkpoint (guarantee (c)) -----------
def test_a_full_disk_mid_save_keeps_the_old_checkpoint(tmp_path, corpus_file, capsys,
                                                       monkeypatch):
    out = tmp_path / "run"
    assert train_here(TINY + ["--eval-every", "2", "--max-iters", 2, "--data", corpus_file,
                              "--out-dir", out], capsys) == 0
    before = ckpt_bytes(out)
    disk_fills_up(monkeypatch, room=3000)
    main_error(train.main, ["--resume", "--max-iters", 4, "--out-dir", out], capsys,
               "No space left on device", before_training=False)
    monkeypatch.undo()
    assert ckpt_bytes(out) == before and leftovers(out) == []
    assert TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).step == 2


# ---- unusable output folders and data files, refused before training (guarantee (c))
def _unwritable(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def _unreadable(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(TEXT)
    path.chmod(0)
    return path


def _empty_folder(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


def _dangling_link(tmp_path):
    path = tmp_path / "link"
    os.symlink(tmp_path / "gone", path)
    return path


def _fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("out_dir, data_file, expected", [
    (lambda t: t / "corpus.txt", None, "is a file, not a folder"),
    (lambda t: t / "corpus.txt" / "sub", None, "is not writable (Not a directory)"),
    (lambda t: "", None, "--out-dir is empty"),
    pytest.param(_unwritable, None, "is not writable (Permission denied)",
                 marks=pytest.mark.skipif(AS_ROOT, reason=ROOT_REASON)),
    (lambda t: t / "o", lambda t: t / "corpus.txt" / "x", "cannot be read (Not a directory)"),
    pytest.param(lambda t: t / "o", _unreadable, "cannot be read (Permission denied)",
                 marks=pytest.mark.skipif(AS_ROOT, reason=ROOT_REASON)),
    (lambda t: t / "o", lambda t: _empty_folder(t), "holds no files"),
    (lambda t: t / "o", _fifo, "is a FIFO (named pipe), not a regular file"),
    (lambda t: t / "o", lambda t: "/dev/zero", "is a character device, not a regular file"),
    (lambda t: t / "o", lambda t: t / "missing.txt", "does not exist"),
    (_dangling_link, None, "is a symbolic link to"),
], ids=["out-is-file", "out-under-file", "out-empty", "out-unwritable", "data-under-file",
        "data-unreadable", "data-empty-folder", "data-fifo", "data-dev-zero", "data-missing",
        "out-dangling-link"])
def test_unusable_paths_are_one_line_before_training(tmp_path, corpus_file, out_dir,
                                                     data_file, expected):
    data_path = data_file(tmp_path) if data_file else corpus_file
    out = out_dir(tmp_path)
    assert_cli_error(TINY + ["--data", data_path, "--out-dir", out], expected, timeout=30)
    assert not os.path.lexists(tmp_path / "o")    # the folder the run made is gone again


def test_a_refused_run_keeps_an_out_dir_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "given"
    out.mkdir()
    main_error(train.main, TINY + ["--data", tmp_path / "missing.txt", "--out-dir", out],
               capsys, "does not exist")
    assert os.listdir(out) == [".lock"]


def test_metrics_file_that_is_a_folder_is_one_line_before_training(tmp_path, corpus_file):
    (tmp_path / "o" / "metrics.jsonl").mkdir(parents=True)
    assert_cli_error(TINY + ["--data", corpus_file, "--out-dir", tmp_path / "o"],
                     "metrics.jsonl")
    assert not (tmp_path / "o" / "ckpt.npz").exists()


@pytest.mark.parametrize("target", [_fifo, lambda t: "/dev/zero"], ids=["fifo", "dev-zero"])
def test_resume_and_generate_refuse_a_checkpoint_that_is_not_a_regular_file(
        tmp_path, target, capsys):
    path = target(tmp_path)     # a FIFO would block forever, /dev/zero never ends
    assert_cli_error(["--resume", path, "--out-dir", tmp_path / "o"], "not a regular file",
                     timeout=30)
    main_error(gen.main, ["--checkpoint", path], capsys, "not a regular file", exit_code=1)


# ---- two trainers on one folder (guarantee (d)) --------------------------------------
def test_a_second_trainer_on_the_same_out_dir_is_refused(tmp_path, corpus_file):
    out = tmp_path / "run"
    run = TINY + ["--eval-every", "5", "--max-iters", "30", "--data", corpus_file,
                  "--out-dir", out]
    with Trainer(run, tmp_path / "log") as first:
        first.wait_for_training()
        first.signal(signal.SIGSTOP)      # it holds the lock while the others start
        assert_cli_error(["--resume", "--out-dir", out], "another trainer is using --out-dir")
        assert_cli_error(run, "another trainer is using --out-dir")
        first.signal(signal.SIGCONT)
        assert first.wait() == 0, first.stderr
    assert [s for s, _ in losses(out)] == list(range(1, 31))


# ---- divergence (guarantee (b)) ------------------------------------------------------
def test_a_diverging_resume_keeps_the_last_good_checkpoint(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    assert train_here(TINY + ["--eval-every", "2", "--max-iters", 4, "--data", corpus_file,
                              "--out-dir", out], capsys) == 0
    before = ckpt_bytes(out)
    assert_cli_error(["--resume", "--max-iters", 20, "--lr", "1e30", "--warmup", 0,
                      "--eval-every", 1, "--out-dir", out], "became")
    assert ckpt_bytes(out) == before and leftovers(out) == []
    for flags in (["--min-lr-ratio", "nan"], ["--lr", "inf"], ["--min-lr-ratio", "2"]):
        main_error(train.main, ["--resume", *flags, "--out-dir", out], capsys, flags[0])
    assert ckpt_bytes(out) == before


# ---- the library's own checks --------------------------------------------------------
def host(backend, params):
    return {k: backend.to_numpy(v).copy() for k, v in params.items()}


@pytest.mark.parametrize("bad", [
    dict(lr=float("nan")), dict(lr=float("inf")), dict(lr=-1.0),
    dict(y=256), dict(y=-1), dict(x=-1), dict(x=256),
], ids=["lr-nan", "lr-inf", "lr-negative", "y-256", "y-negative", "x-negative", "x-256"])
def test_train_step_refuses_bad_input_before_any_update(backend, corpus_file, bad):
    corpus = data.load_corpus(corpus_file)
    state = TrainState.create("brainlike", train.get_preset("brainlike", "tiny"), backend)
    state.train_step(*state.sample_batch(corpus.train, 4), lr=1e-3)      # moments exist
    before, moments = host(backend, state.params), host(backend, state.optimizer.m)
    x, y = state.sample_batch(corpus.train, 4)
    if "x" in bad:
        x[1, 2] = bad["x"]
    if "y" in bad:
        y[0] = bad["y"]
    with pytest.raises(ValueError):
        state.train_step(x, y, lr=bad.get("lr", 1e-3))
    after = host(backend, state.params)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.array_equal(moments[k], v) for k, v in host(backend, state.optimizer.m).items())
    assert state.step == 1 and state.optimizer.step == 1


def test_an_empty_batch_is_a_value_error(corpus_file):
    state = TrainState.create("brainlike", train.get_preset("brainlike", "tiny"),
                              get_backend("numpy"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        state.sample_batch(data.load_corpus(corpus_file).train, 0)
    x = np.zeros((0, state.cfg.context), dtype=np.int64)
    with pytest.raises(ValueError, match="B > 0"):
        state.train_step(x, np.zeros(0, dtype=np.int64), lr=1e-3)


# ---- sizes that cannot fit (guarantee (c)) --------------------------------------------
@pytest.mark.parametrize("flags, says", [
    (["--eval-batches", "1000000000"], "lower --eval-batches"),
    (["--batch-size", "1000000000"], "lower --batch-size"),
    (["--n-neurons", "1000000000000"], "lower --batch-size or the model's size"),
], ids=["eval-batches", "batch-size", "n-neurons"])
def test_sizes_that_cannot_fit_are_one_line_quickly(tmp_path, corpus_file, flags, says):
    """Refused from the estimate before anything is allocated, within seconds."""
    err = assert_cli_error(TINY + flags + ["--max-iters", 2, "--data", corpus_file,
                                           "--out-dir", tmp_path / "o"], timeout=6)
    assert says in err


@pytest.mark.parametrize("flags, says", [
    (["--model", ""], "argument --model: is empty"),
    (["--preset", ""], "argument --preset: is empty"),
    (["--lr", ""], "argument --lr: invalid number value: ''"),
    (["--max-iters", "1.5"], "argument --max-iters: invalid integer value: '1.5'"),
])
def test_malformed_flags_are_named_in_one_line(tmp_path, corpus_file, capsys, flags, says):
    main_error(train.main, TINY + ["--max-iters", 1, *flags, "--data", corpus_file, "--out-dir",
                            tmp_path / "o"],
               capsys, says, exit_code=2)
    assert not os.path.exists(tmp_path / "o")


def test_an_empty_model_or_preset_in_a_request_is_not_the_default(corpus_file):
    """The library's TrainRequest: "" is a name (unknown), never "not given"."""
    request = train_cli.parse_request(TINY + ["--data", corpus_file])
    corpus = data.open_corpus(corpus_file)
    for empty in ({"model": ""}, {"preset": ""}):
        with pytest.raises(ConfigError, match="unknown"):
            train.new_state(dataclasses.replace(request, **empty), get_backend("numpy"), corpus)


# ---- corpus against config ------------------------------------------------------------
def test_a_byte_corpus_needs_the_byte_vocabulary(tmp_path, corpus_file, capsys):
    main_error(train.main, TINY + ["--vocab-size", 10, "--data", corpus_file,
                                   "--out-dir", tmp_path / "o"], capsys,
               "a byte corpus needs --vocab-size 256")


def test_a_context_longer_than_the_corpus_is_refused_before_the_model_exists(
        tmp_path, corpus_file, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was allocated before the corpus was checked")
    monkeypatch.setattr(TrainState, "create", no_model)
    main_error(train.main, TINY + ["--context", 1000000000, "--data", corpus_file,
                                   "--out-dir", tmp_path / "o"], capsys, "too short")


# ---- damaged checkpoint metadata ------------------------------------------------------
def _set(path, value):
    def damage(arrays, meta):
        *parents, last = path
        for key in parents:
            meta = meta[key]
        meta[last] = value
    return damage


def _entry(prefix, change):
    def damage(arrays, meta):
        name = sorted(k for k in arrays if k.startswith(prefix))[0]
        change(arrays, name)
    return damage


DAMAGE = {
    "optimizer-empty": (_set(["optimizer"], {}), "invalid metadata"),
    "optimizer-step-text": (_set(["optimizer", "step"], "five"), "optimizer step"),
    "dtype-bogus": (_set(["train", "dtype"], "bogus"), "unknown dtype 'bogus'"),
    "dtype-int8": (_set(["train", "dtype"], "int8"), "unknown dtype 'int8'"),
    "meta-list": (lambda arrays, meta: [1, 2], "is a JSON array, not an object"),
    "train-lr-text": (_set(["train", "lr"], "abc"), "lr must be of type float"),
    "train-batch-negative": (_set(["train", "batch_size"], -1), "--batch-size must be positive"),
    "train-unknown-field": (_set(["train", "colour"], 1), "unknown config fields: colour"),
    "train-null": (_set(["train"], None), "must be a mapping"),
    "config-path-bogus": (_set(["config", "path"], "bogus"), "unknown path 'bogus'"),
    "step-negative": (_set(["step"], -100), "step -100"),
    "metrics-time-text": (_set(["metrics", "time_s"], "x"), "metrics time_s 'x'"),
    "metrics-step-float": (_set(["metrics", "step"], 2.5), "metrics step 2.5"),
    "metrics-list": (_set(["metrics"], [1, 2]), "invalid metadata"),
    "metrics-text": (_set(["metrics", "note"], "another"), "metrics note 'another'"),
    "data-source-int": (_set(["data", "source"], 5), "data source 5"),
    "run-id-int": (_set(["run_id"], 5), "run_id 5"),
    "rng-garbage": (_set(["rng"], {"bit_generator": "PCG64", "state": {}}), "invalid metadata"),
    "adam_m-shape": (_entry("adam_m/", lambda a, n: a.__setitem__(n, a[n].reshape(-1)[:3])),
                     "AdamW first moment"),
    "adam_v-missing": (_entry("adam_v/", lambda a, n: a.pop(n)), "AdamW second moment"),
    "adam_v-negative": (_entry("adam_v/", lambda a, n: a.__setitem__(n, -a[n] - 1)),
                        "negative values"),
    "adam_v-barely-negative": (_entry("adam_v/", lambda a, n: a.__setitem__(
        n, np.where(np.arange(a[n].size).reshape(a[n].shape) == 0, -1e-3, a[n]))),
        "negative values"),
    "params-nan": (_entry("params/", lambda a, n: a.__setitem__(n, a[n] * np.nan)),
                   "NaN or infinite"),
    "params-int": (_entry("params/", lambda a, n: a.__setitem__(n, a[n].astype(np.int32))),
                   "is int32, the run trains in float32"),
    "params-extra": (lambda arrays, meta: arrays.__setitem__("params/extra", np.ones(2, "f4")),
                     "unexpected ['extra']"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a tiny run (2 steps), for the tests that damage or sample it."""
    folder = tmp_path_factory.mktemp("trained")
    corpus = folder / "corpus.txt"
    corpus.write_bytes(TEXT)
    assert train.main(TINY + ["--max-iters", "2", "--eval-every", "2", "--data", str(corpus),
                              "--out-dir", str(folder)]) == 0
    return str(folder / "ckpt.npz")


@pytest.fixture(scope="module")
def good_checkpoint(trained):
    return load_npz(trained)


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_checkpoint_metadata_is_one_line_in_train_and_generate(
        name, good_checkpoint, tmp_path, capsys):
    damage, expected = DAMAGE[name]
    arrays, meta = copy.deepcopy(good_checkpoint)
    meta = damage(arrays, meta) or meta
    path = tmp_path / "ckpt.npz"
    save_npz_atomic(str(path), arrays, meta)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="checkpoint"):
        TrainState.load(str(path), get_backend("numpy"))
    assert expected in main_error(train.main, ["--resume", "--out-dir", tmp_path], capsys)
    assert expected in main_error(gen.main, ["--checkpoint", path], capsys, exit_code=1)
    assert path.read_bytes() == before


def test_a_lone_npy_array_and_garbage_are_not_checkpoints(tmp_path, capsys):
    lone = tmp_path / "lone.npz"
    with open(lone, "wb") as f:
        np.save(f, np.zeros(3))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x93NUMPY garbage")
    for path in (lone, garbage, tmp_path / "missing.npz"):
        main_error(train.main, ["--resume", path, "--out-dir", tmp_path / "o"], capsys,
                   str(path))
        main_error(gen.main, ["--checkpoint", path], capsys, str(path), exit_code=1)


# ---- generate: arguments --------------------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--max-new-bytes", "-5"], "--max-new-bytes must be an integer >= 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0"),
    (["--top-k", "many"], "invalid int value"),
])
def test_generate_refuses_bad_arguments_in_one_line(trained, capsys, flags, expected):
    main_error(gen.main, ["--checkpoint", trained, *flags], capsys, expected)


def test_generate_backend_error_is_one_line(trained, capsys, monkeypatch):
    monkeypatch.setenv("BRAINLIKE_BACKEND", "tensorflow")
    main_error(gen.main, ["--checkpoint", trained], capsys, "unknown backend", exit_code=1)


def test_generate_with_stdout_closed_is_one_line(trained, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)       # what `>&-` gives Python
    assert gen.main(["--checkpoint", trained]) == 1
    assert capsys.readouterr().err == "error: stdout is closed: nowhere to write the sample\n"


@pytest.mark.filterwarnings("error")      # no overflow on the way
def test_tiny_temperatures_sample_the_likeliest_byte(trained):
    state = TrainState.load(trained, get_backend("numpy"))
    greedy = gen.generate(state, b"def ", 6, temperature=0.0)
    for t in (1e-320, 5e-324, 1e-30):
        assert gen.generate(state, b"def ", 6, temperature=t, seed=4) == greedy
    rng = np.random.default_rng(0)
    huge = np.array([3e300, -3e300, 1.0])     # differences overflow float64 when scaled
    assert gen.sample_from_logits(huge, rng, temperature=1e-300) == 0
    assert gen.sample_from_logits(huge, rng, temperature=0.5, top_k=500) == 0


@pytest.mark.parametrize("kwargs", [
    dict(temperature=float("nan")), dict(temperature=-0.5), dict(temperature=float("inf")),
    dict(n_bytes=-5), dict(seed=-1), dict(top_k=-1), dict(prompt="text"),
])
def test_library_generate_raises_value_error(trained, kwargs):
    state = TrainState.load(trained, get_backend("numpy"))
    args = dict(prompt=b"def ", n_bytes=3) | kwargs
    with pytest.raises(ValueError):
        gen.generate(state, args.pop("prompt"), args.pop("n_bytes"), **args)


def test_nan_logits_are_a_value_error():
    with pytest.raises(ValueError, match="NaN or infinite"):
        gen.sample_from_logits(np.array([0.0, np.nan]), np.random.default_rng(0))


def test_a_non_utf8_prompt_is_taken_byte_for_byte(trained):
    command = [sys.executable, "-m", "brainlike_np.generate", "--checkpoint", trained,
               "--max-new-bytes", "4", "--prompt"]
    proc = subprocess.run([os.fsencode(a) for a in command] + [b"\xff\xfeab"],
                          capture_output=True, timeout=60, env=cli_env())
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert proc.stdout.startswith("\ufffd\ufffdab".encode())


@pytest.mark.parametrize("prompt", ["\u00e9t\u00e9", "\udcffab"], ids=["letters", "not-utf8"])
def test_generate_writes_utf8_bytes_whatever_stdouts_encoding(trained, prompt):
    """PYTHONIOENCODING=ascii: the prompt's letters and U+FFFD are written as UTF-8
    bytes (they ended in UnicodeEncodeError)."""
    command = [sys.executable, "-m", "brainlike_np.generate", "--checkpoint", trained,
               "--max-new-bytes", "4", "--temperature", "0", "--prompt"]
    proc = subprocess.run([os.fsencode(a) for a in command + [prompt]], capture_output=True,
                          timeout=60, env={**cli_env(), "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    expected = os.fsencode(prompt).decode("utf-8", errors="replace").encode()
    assert proc.stdout.startswith(expected) and proc.stdout.endswith(b"\n")
    assert len(proc.stdout.decode()) >= len(expected.decode()) + 1


def test_generate_streams_its_output_as_it_samples(trained):
    """--max-new-bytes far beyond what could ever finish: the bytes show as they come."""
    command = [sys.executable, "-m", "brainlike_np.generate", "--checkpoint", trained,
               "--prompt", "def ", "--max-new-bytes", "9" * 20]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(), stdin=subprocess.DEVNULL)
    try:
        shown, deadline = b"", time.monotonic() + 60
        while len(shown) < 4 + 50 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                shown += os.read(proc.stdout.fileno(), 4096)
            assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert shown.startswith(b"def ") and len(shown) >= 4 + 50, shown
    # the same bytes as the library's (shown: at most len(shown) of them; the last
    # read may have split a character)
    library = gen.generate(TrainState.load(trained, get_backend("numpy")), b"def ", len(shown))
    assert (b"def " + library).decode("utf-8", "replace").startswith(
        shown.decode("utf-8", "replace")[:-2])


# ---- the corpus in O(file size) memory --------------------------------------------------
def test_loading_a_corpus_and_its_baselines_takes_about_its_size_in_memory(tmp_path):
    size = 20_000_000
    path = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(size // 1_000_000):
            f.write(rng.integers(0, 256, 1_000_000, dtype=np.uint8).tobytes())
    tracemalloc.start()
    try:
        corpus = data.load_corpus(str(path))
        data.count_model_losses(corpus.train, corpus.valid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert corpus.train.shape[0] + corpus.valid.shape[0] == size
    assert peak < 2.5 * size, f"peak {peak / size:.2f}x the file size"


def test_chunked_baselines_equal_the_direct_count(monkeypatch):
    tokens = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)
    train_part, valid = tokens[:4000], tokens[4000:]
    unigram = np.bincount(train_part, minlength=256) + 1.0
    pairs = train_part[:-1].astype(np.int64) * 256 + train_part[1:]
    bigram = np.bincount(pairs, minlength=65536).reshape(256, 256) + 1.0
    expected = {
        "unigram": -np.log(unigram / unigram.sum())[valid].mean(),
        "bigram": -np.log(bigram / bigram.sum(axis=1, keepdims=True))[valid[:-1], valid[1:]].mean()}
    for chunk in (7, 256, 1 << 18):      # chunk edges must not lose or double a pair
        monkeypatch.setattr(data, "COUNT_CHUNK", chunk)
        got = data.count_model_losses(train_part, valid)
        assert got == pytest.approx(expected, rel=1e-12)


# ---- one run per out-dir: a wrong --resume or a new run never cuts another run -------
def _finished_run(tmp_path, corpus_file, capsys, name, steps=4, *flags) -> str:
    out = tmp_path / name
    assert train_here(TINY + ["--eval-every", "2", "--max-iters", steps, "--data",
                              corpus_file, "--out-dir", out, *flags], capsys) == 0
    return out


def _files(out_dir) -> dict:
    return {n: (out_dir / n).read_bytes() for n in sorted(os.listdir(out_dir))}


def test_resuming_another_runs_checkpoint_into_a_used_out_dir_is_refused(
        tmp_path, corpus_file, capsys):
    ours = _finished_run(tmp_path, corpus_file, capsys, "ours", 6)
    other = _finished_run(tmp_path, corpus_file, capsys, "other", 2, "--seed", 1)
    before = _files(ours)
    main_error(train.main, ["--resume", other / "ckpt.npz", "--max-iters", 8, "--out-dir", ours],
               capsys, "holds another run's checkpoint")
    assert _files(ours) == before
    # its checkpoints moved away: the other run's checkpoint is still refused (metrics)
    os.rename(ours / "ckpt.npz", tmp_path / "moved.npz")
    os.rename(ours / "best.npz", tmp_path / "moved-best.npz")
    before = _files(ours)
    main_error(train.main, ["--resume", other / "ckpt.npz", "--out-dir", ours], capsys,
               "holds the metrics of another run")
    # and so is a new run, which would cut the old metrics
    main_error(train.main, TINY + ["--data", corpus_file, "--out-dir", ours], capsys,
               "holds the evaluations of an earlier run")
    assert _files(ours) == before


def test_files_replaced_on_resume_keep_their_permissions(tmp_path, corpus_file, capsys):
    out = _finished_run(tmp_path, corpus_file, capsys, "run", 2)
    os.chmod(out / "ckpt.npz", 0o444)
    os.chmod(out / "metrics.jsonl", 0o600)
    assert train_here(["--resume", "--max-iters", 4, "--out-dir", out], capsys) == 0
    assert TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).step == 4
    assert os.stat(out / "ckpt.npz").st_mode & 0o777 == 0o444
    assert os.stat(out / "metrics.jsonl").st_mode & 0o777 == 0o600


def test_a_resume_refuses_the_metrics_of_another_run_that_stopped_earlier(
        tmp_path, corpus_file, capsys):
    """The other run's records all lie at or before the checkpoint's step and it logged
    no evaluation at that step, but its records carry another run id: refused."""
    ref = _finished_run(tmp_path, corpus_file, capsys, "ref", 3)
    other = _finished_run(tmp_path, corpus_file, capsys, "other", 2, "--seed", 7)
    os.remove(other / "ckpt.npz")
    os.remove(other / "best.npz")
    before = _files(other)
    main_error(train.main, ["--resume", ref / "ckpt.npz", "--max-iters", 4, "--out-dir", other],
               capsys, "holds the metrics of another run")
    assert _files(other) == before


def test_every_record_carries_the_run_id_through_a_resume_of_a_resume(
        tmp_path, corpus_file, capsys):
    out = _finished_run(tmp_path, corpus_file, capsys, "run", 2)
    run_id = TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).run_id
    assert isinstance(run_id, str) and run_id
    assert train_here(["--resume", "--max-iters", 4, "--out-dir", out], capsys) == 0
    backup = tmp_path / "backup.npz"           # resumed from outside, its own metrics here
    os.rename(out / "ckpt.npz", backup)
    assert train_here(["--resume", backup, "--max-iters", 6, "--out-dir", out], capsys) == 0
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6]
    assert {r["run"] for r in strict_records(out)} == {run_id}
    assert TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).run_id == run_id
    other = _finished_run(tmp_path, corpus_file, capsys, "other", 2)
    assert TrainState.load(str(other / "ckpt.npz"), get_backend("numpy")).run_id != run_id


def test_an_earlier_checkpoint_of_the_same_run_resumes_into_its_out_dir(
        tmp_path, corpus_file, capsys):
    """A backup of step 2 put back after the step-4 checkpoint was lost: its evaluation
    is in the metrics file, so it is the same run; the records after step 2 are cut."""
    out = _finished_run(tmp_path, corpus_file, capsys, "run", 2)
    backup = tmp_path / "backup.npz"
    backup.write_bytes((out / "ckpt.npz").read_bytes())
    assert train_here(["--resume", "--max-iters", 4, "--out-dir", out], capsys) == 0
    os.remove(out / "ckpt.npz")
    assert train_here(["--resume", backup, "--max-iters", 4, "--out-dir", out], capsys) == 0
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]
    fresh = _finished_run(tmp_path, corpus_file, capsys, "copy-target-parent", 2)
    empty = tmp_path / "empty"
    assert train_here(["--resume", fresh / "ckpt.npz", "--max-iters", 3, "--out-dir", empty],
                      capsys) == 0
    assert [s for s, _ in losses(empty)] == [3]


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file names must be UTF-8")
def test_a_data_file_named_in_bytes_that_are_not_utf8_trains_and_resumes(tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    names = [b"a.txt", b"b\xff\xfe.txt", b"c.txt"]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(TEXT)
    out = tmp_path / "out"
    assert train_here(TINY + ["--max-iters", 2, "--eval-every", 2, "--data", folder,
                              "--out-dir", out], capsys) == 0
    record = TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).data_record
    assert [os.path.basename(os.fsencode(f["path"])) for f in record["files"]] == names
    assert train_here(["--resume", "--max-iters", 4, "--out-dir", out], capsys) == 0
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]


# ---- nothing outside the out-dir is created, truncated or written ------------------------
PLANTED = ["metrics.jsonl", "metrics.jsonl.tmp", ".lock", f".write-test-{os.getpid()}",
           "ckpt.npz", ".tmp-planted.npz", ".tmp-planted.jsonl", "best.npz",
           "ckpt-000002.npz"]


@pytest.mark.parametrize("target", ["precious", "missing"])
@pytest.mark.parametrize("resume", [False, True], ids=["new-run", "resume"])
@pytest.mark.parametrize("name", PLANTED)
def test_a_planted_symlink_never_leads_a_write_outside_the_out_dir(
        tmp_path, corpus_file, capsys, name, resume, target):
    """A symlink from a name the trainer uses (or used) in its out-dir to a file outside,
    or to a missing path outside: the run succeeds or is refused in one line, and
    outside nothing is created, truncated or written."""
    out = (_finished_run(tmp_path, corpus_file, capsys, "run", 2) if resume
           else tmp_path / "run")
    out.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"precious bytes\n")
    if os.path.lexists(out / name):
        os.remove(out / name)
    os.symlink(outside / target, out / name)
    argv = (["--resume", "--max-iters", 3, "--out-dir", out] if resume
            else TINY + ["--max-iters", 2, "--eval-every", 2, "--data", corpus_file,
                         "--out-dir", out])
    code = train.main([str(a) for a in argv])
    _, err = capsys.readouterr()
    if code:
        assert_one_error(code, err)
    assert sorted(os.listdir(outside)) == ["precious"]
    assert (outside / "precious").read_bytes() == b"precious bytes\n"


# ---- a crafted checkpoint is refused before its data is read ---------------------------
GIB3 = 3 << 30


def _deflate_zeros(header: bytes, n_bytes: int) -> bytes:
    """A raw deflate stream of ``header`` then ``n_bytes`` zeros, built from one
    compressed MiB repeated (full flushes make the pieces independent): about 1 KiB
    per MiB, so 3 GiB of zeros take 3 MB."""
    mib = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = [compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)]
    piece = compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH) == piece
    stream += [piece] * (n_bytes // mib)
    return b"".join(stream) + compressor.flush()


def _with_crafted_entry(good_path, path, name, npy_header, n_bytes):
    """A copy of the checkpoint at ``good_path`` with entry ``name`` replaced by a
    deflated .npy entry: ``npy_header`` then ``n_bytes`` zeros (declared, and really
    there when decompressed). The CRC is not computed (3 GiB): nothing may get that far."""
    stream = _deflate_zeros(npy_header, n_bytes)
    with zipfile.ZipFile(good_path) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info, src.read(info))
        dst.writestr(zipfile.ZipInfo(name), stream)       # stored: patched below
    data = bytearray(open(path, "rb").read())
    encoded = name.encode()
    for signature, method_at, size_at in ((b"PK\x03\x04", 8, 22), (b"PK\x01\x02", 10, 24)):
        at = data.find(signature)
        while at >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(encoded)] == encoded:
                struct.pack_into("<H", data, at + method_at, zipfile.ZIP_DEFLATED)
                struct.pack_into("<I", data, at + size_at, len(npy_header) + n_bytes)
            at = data.find(signature, at + 4)
    open(path, "wb").write(bytes(data))


def _npy_header(shape, dtype="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("entry, shape, says", [
    ("params/E.npy", (256, 32), "declares"),                  # its own shape, 3 GiB more
    ("params/E.npy", (GIB3 // 4,), "has shape"),               # a 3 GiB shape
    ("params/huge.npy", (GIB3 // 4,), "unexpected ['huge']"),  # a name the model lacks
    ("meta.json.npy", (GIB3,), "declares"),                    # the metadata itself
], ids=["size", "shape", "name", "meta"])
def test_a_crafted_3_gib_entry_is_refused_with_little_memory(trained, tmp_path, entry,
                                                            shape, says):
    """A 3 MB checkpoint whose deflated entry holds 3 GiB (of zeros): refused from the
    names, the .npy header and the declared size, before any of it is inflated."""
    path = tmp_path / "crafted.npz"
    header = _npy_header(shape, "|u1" if entry.startswith("meta") else "<f4")
    _with_crafted_entry(trained, path, entry, header, GIB3)
    assert os.path.getsize(path) < 8 << 20
    assert zipfile.ZipFile(path).getinfo(entry).file_size > GIB3
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=re.escape(says)):
            TrainState.load(str(path), get_backend("numpy"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"


# ---- a damaged zip central directory ---------------------------------------------------
def test_flipped_bytes_near_the_end_of_a_checkpoint_load_the_same_or_are_one_error(trained,
                                                                                  tmp_path):
    """60 single-byte flips in the last 2 KiB (the central directory: compression
    methods, flags, sizes, offsets): each loads the very same state or is refused as a
    CheckpointError, never another exception."""
    good = open(trained, "rb").read()
    reference = TrainState.load(trained, get_backend("numpy"))
    rng = random.Random(23)
    path = tmp_path / "flipped.npz"
    refused = 0
    for at in rng.sample(range(len(good) - 2048, len(good)), 60):
        damaged = bytearray(good)
        damaged[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        try:
            state = TrainState.load(str(path), get_backend("numpy"))
        except CheckpointError:
            refused += 1
            continue
        assert state.step == reference.step and all(
            np.array_equal(state.params[k], reference.params[k]) for k in state.params)
    assert refused > 0


@pytest.mark.parametrize("field_at, value", [(10, 99), (8, 1)], ids=["method", "flags"])
def test_a_damaged_central_directory_field_is_one_line_in_train_and_generate(
        trained, tmp_path, capsys, field_at, value):
    """The first central directory record's compression method (unknown: 99) or flags
    (encrypted: bit 0), which zipfile answers with NotImplementedError/RuntimeError."""
    data = bytearray(open(trained, "rb").read())
    struct.pack_into("<H", data, data.find(b"PK\x01\x02") + field_at, value)
    path = tmp_path / "ckpt.npz"
    path.write_bytes(bytes(data))
    main_error(train.main, ["--resume", "--out-dir", tmp_path], capsys, "is corrupted")
    main_error(gen.main, ["--checkpoint", path], capsys, "is corrupted", exit_code=1)


# ---- damaged metrics records, a FIFO, /dev/zero ---------------------------------------
def test_damaged_metrics_records_are_skipped_on_resume(tmp_path, corpus_file, capsys):
    out = _finished_run(tmp_path, corpus_file, capsys, "run", 2)
    good = (out / "metrics.jsonl").read_bytes()
    bad = [b'{"step": "x"}', b"null", b"[1, 2]", b"\xff\xfe not utf-8", b'{"step": null}',
           b'{"step": true}', b'{"loss": 1.0}', b"[" * 100000, b'{"step": -3}',
           b'{"step": ' + b"1" * 5000 + b"}"]
    (out / "metrics.jsonl").write_bytes(b"\n".join(bad) + b"\n" + good)
    assert train_here(["--resume", "--max-iters", 3, "--out-dir", out], capsys) == 0
    assert [s for s, _ in losses(out)] == [1, 2, 3]


def test_metrics_are_read_a_line_at_a_time(tmp_path):
    """20 MB of damaged lines: reading them back never holds the file whole."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes((b"x" * 1023 + b"\n") * 20_000 + b'{"step": 1}\n')
    tracemalloc.start()
    try:
        records = outdir.read_metrics(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records == [{"step": 1}]
    assert peak < 2 * 2**20, peak


@pytest.mark.parametrize("plant", [
    lambda path: os.mkfifo(path), lambda path: os.symlink("/dev/zero", path)],
    ids=["fifo", "dev-zero"])
@pytest.mark.parametrize("resume", [False, True], ids=["new-run", "resume"])
def test_a_metrics_file_that_is_not_a_regular_file_is_one_line(tmp_path, corpus_file, capsys,
                                                               plant, resume):
    """A FIFO blocked forever, /dev/zero read until the memory ran out."""
    out = (_finished_run(tmp_path, corpus_file, capsys, "run", 2) if resume
           else tmp_path / "run")
    out.mkdir(exist_ok=True)
    if resume:
        os.remove(out / "metrics.jsonl")
    plant(out / "metrics.jsonl")
    argv = (["--resume", "--max-iters", 3, "--out-dir", out] if resume
            else TINY + ["--data", corpus_file, "--out-dir", out])
    assert_cli_error(argv, "metrics.jsonl' is a", timeout=30)


@pytest.mark.parametrize("plant", [os.mkfifo, os.mkdir], ids=["fifo", "folder"])
def test_a_lock_file_that_is_not_a_regular_file_is_one_line(tmp_path, corpus_file, capsys,
                                                            plant):
    (tmp_path / "run").mkdir()
    plant(tmp_path / "run" / ".lock")
    main_error(train.main, TINY + ["--data", corpus_file, "--out-dir", tmp_path / "run"],
               capsys, ".lock")


# ---- standard streams: closed, full, a reader gone ------------------------------------
def _run_with_streams(args, **popen):
    proc = subprocess.Popen(TRAIN + [str(a) for a in args], env=cli_env(),
                            stdin=subprocess.DEVNULL, **popen)
    return proc


def _close_fd(fd):
    return lambda: os.close(fd)


@pytest.mark.parametrize("fd", [1, 2], ids=["stdout", "stderr"])
def test_a_closed_standard_stream_does_not_stop_training(tmp_path, corpus_file, fd):
    """``>&-`` / ``2>&-``: the run finishes, and no file it opens takes the closed
    number (a library's write to fd 2 would land in it)."""
    out = tmp_path / "run"
    keep = {"stdout": subprocess.DEVNULL} if fd == 2 else {"stderr": subprocess.DEVNULL}
    proc = _run_with_streams(TINY + ["--max-iters", 3, "--eval-every", 2, "--data", corpus_file,
                                     "--out-dir", out], preexec_fn=_close_fd(fd), **keep)
    assert proc.wait(timeout=60) == 0
    assert TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).step == 3
    assert [s for s, _ in losses(out)] == [1, 2, 3]


def test_stdout_on_dev_full_does_not_stop_training(tmp_path, corpus_file):
    out = tmp_path / "run"
    with open("/dev/full", "w") as full:
        proc = subprocess.run(TRAIN + [str(a) for a in TINY + [
            "--max-iters", 3, "--eval-every", 2, "--data", corpus_file, "--out-dir", out]],
            stdout=full, stderr=subprocess.PIPE, text=True, env=cli_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "note: writing to stdout failed (No space left on device); carrying on without it"]
    assert [s for s, _ in losses(out)] == [1, 2, 3]


def test_a_reader_that_goes_away_does_not_stop_training(tmp_path, corpus_file):
    """``| head -c 20``: the trainer outlives its reader and saves every checkpoint."""
    out = tmp_path / "run"
    proc = _run_with_streams(TINY + ["--max-iters", 40, "--eval-every", 20, "--data",
                                     corpus_file, "--out-dir", out],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(20)) == 20
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert TrainState.load(str(out / "ckpt.npz"), get_backend("numpy")).step == 40


def test_generate_on_dev_full_says_stdout(trained):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "brainlike_np.generate", "--checkpoint",
                               trained], stdout=full, stderr=subprocess.PIPE, text=True,
                              env=cli_env(), timeout=60)
    assert_one_error(proc.returncode, proc.stderr,
                     "cannot write the sample to stdout (No space left on device)")


# ---- a Ctrl-C while the libraries load ----------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
@pytest.mark.parametrize("module", ["brainlike_np.train", "brainlike_np.generate"])
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path, module):
    """The SIGINT lands while NumPy is loading (its extension module mapped, so the
    import is under way): one line and exit 130, not the import's traceback."""
    proc = subprocess.Popen([sys.executable, "-m", module, "--out-dir", tmp_path / "o"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    maps = f"/proc/{proc.pid}/maps"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if "_multiarray_umath" in open(maps).read():
                break
        except OSError:
            pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert_one_error(proc.returncode, err, "interrupted", exit_code=130)
    assert not (tmp_path / "o").exists()


def test_numba_refusing_its_thread_count_falls_back_to_the_reference_kernels(
        tmp_path, corpus_file):
    env = {**cli_env(), "NUMBA_NUM_THREADS": "0"}
    proc = subprocess.run(TRAIN + [str(a) for a in TINY + [
        "--max-iters", 2, "--data", corpus_file, "--out-dir", tmp_path / "o"]],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the Numba kernels")
    assert "NUMBA_NUM_THREADS=0" in warning[0] and "using the reference ops" in warning[0]
    strict = subprocess.run(TRAIN + ["--out-dir", tmp_path / "p"], capture_output=True,
                            text=True, env={**env, "BRAINLIKE_KERNELS": "numba"}, timeout=60)
    assert_one_error(strict.returncode, strict.stderr, "NUMBA_NUM_THREADS=0")


# ---- smaller points ------------------------------------------------------------------------
def test_resume_accepts_the_same_preset_and_refuses_another(tmp_path, corpus_file, capsys):
    """The command that started the run, with --resume appended, resumes it; so does
    its preset alone (compared with the overrides the run started with, n_steps=3)."""
    first = TINY + ["--n-steps", 3, "--eval-every", 2, "--data", corpus_file,
                    "--out-dir", tmp_path / "run"]
    assert train_here(first + ["--max-iters", 2], capsys) == 0
    assert train_here(first + ["--max-iters", 4, "--resume"], capsys) == 0
    assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3, 4]
    assert train_here(["--preset", "tiny", "--resume", "--max-iters", 4, "--out-dir",
                       tmp_path / "run"], capsys) == 0
    main_error(train.main, ["--preset", "tiny", "--n-steps", 2, "--resume", "--out-dir",
                            tmp_path / "run"], capsys, "trained with n_steps=3, not 2 (--n-steps)")
    main_error(train.main, ["--preset", "default", "--resume", "--out-dir", tmp_path / "run"],
               capsys, "(--preset default)")


def test_sigterm_during_an_evaluation_saves_it_and_exits_without_another(
        tmp_path, corpus_file, capsys, monkeypatch):
    real_evaluate = TrainState.evaluate
    evaluated = []

    def evaluate_then_sigterm(self, windows):
        evaluated.append(self.step)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(self, windows)

    monkeypatch.setattr(TrainState, "evaluate", evaluate_then_sigterm)
    code = train_here(TINY + ["--eval-every", 2, "--max-iters", 100, "--data", corpus_file,
                              "--out-dir", tmp_path], capsys)
    assert code == train.EXIT_TERMINATED
    assert evaluated == [2, 4]
    assert TrainState.load(str(tmp_path / "ckpt.npz"), get_backend("numpy")).step == 4
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("room", [0, 200], ids=["first-byte", "mid-file"])
def test_a_full_disk_at_start_leaks_no_file_and_changes_nothing(tmp_path, corpus_file, capsys,
                                                                 monkeypatch, room):
    out = _finished_run(tmp_path, corpus_file, capsys, "run", 2)
    before = _files(out)
    disk_fills_up(monkeypatch, room=room)
    main_error(train.main, ["--resume", "--max-iters", 4, "--out-dir", out], capsys,
               "No space left on device: the disk is full")
    monkeypatch.undo()
    assert _files(out) == before


@pytest.mark.parametrize("field, value, says", [
    ("beta1", 1.5, "beta1 must be in [0, 1)"), ("beta2", -0.1, "beta2 must be in [0, 1)"),
    ("eps", 0.0, "eps must be above 0"), ("weight_decay", -1.0, "weight_decay must be 0"),
])
def test_optimizer_settings_from_a_checkpoint_are_validated(good_checkpoint, tmp_path, capsys,
                                                            field, value, says):
    arrays, meta = copy.deepcopy(good_checkpoint)
    meta["optimizer"][field] = value
    save_npz_atomic(str(tmp_path / "ckpt.npz"), arrays, meta)
    main_error(train.main, ["--resume", "--out-dir", tmp_path], capsys, says)


def test_library_calls_are_checked(trained, corpus_file):
    with pytest.raises(TypeError, match="needs a backend"):
        TrainState.load(trained, None)
    state = TrainState.load(trained, get_backend("numpy"))
    with pytest.raises(ValueError, match="at least one batch"):
        state.evaluate([])
    x, y = state.sample_batch(data.load_corpus(corpus_file).train, 2)
    with pytest.raises(ValueError, match="context"):
        state.evaluate([(x[:, 1:], y)])
    with pytest.raises(ValueError, match="context"):
        state.check_windows(x[:, 1:], y)
