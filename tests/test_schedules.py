"""Learning-rate schedules, their change on resume, and --config FILE.toml (issue 32
item 6)."""

import json
import math
import os

import numpy as np
import pytest

from brainlike_np import train
from brainlike_np.backends import get_backend
from brainlike_np.optim import continued_lr, scheduled_lr
from brainlike_np.train_state import TrainState

TINY_RUN = ["--preset", "tiny", "--eval-every", "5", "--eval-batches", "2"]


def run_main(argv, capsys):
    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def rates(out_dir) -> dict:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["lr"] for r in map(json.loads, f) if "lr" in r}


def test_each_schedule_has_its_shape():
    lr, warmup, total = 2.0, 7, 53
    for name in ("cosine", "linear", "constant", "wsd"):
        got = [scheduled_lr(name, s, lr, warmup, total, 0.25, 0.3) for s in range(total + 1)]
        assert got[:warmup] == [lr * (s + 1) / warmup for s in range(warmup)]
        assert got[warmup] == pytest.approx(lr)
        assert got[total] == pytest.approx(lr if name == "constant" else 0.5)
        assert all(a >= b - 1e-15 for a, b in zip(got[warmup:], got[warmup + 1:]))
    decay_start = total - round(0.3 * total)           # wsd: 37; stable until then
    wsd = [scheduled_lr("wsd", s, lr, warmup, total, 0.25, 0.3) for s in range(total + 1)]
    assert wsd[warmup:decay_start + 1] == [lr] * (decay_start + 1 - warmup)
    assert np.allclose(np.diff(wsd[decay_start:]), -1.5 / (total - decay_start))
    linear = [scheduled_lr("linear", s, lr, warmup, total, 0.25) for s in range(warmup, total)]
    assert np.allclose(np.diff(linear), -1.5 / (total - warmup))
    cosine = scheduled_lr("cosine", 30, lr, warmup, total, 0.25)
    assert cosine == pytest.approx(lr * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * 23 / 46))))



def test_a_schedule_named_by_an_equal_string_is_the_same_schedule():
    """Names read from a command line or a checkpoint are equal to the literals, not the
    same objects: the schedule is chosen by equality."""
    for name in ("cosine", "linear", "constant", "wsd"):
        copy = "".join(list(name))
        assert copy == name and copy is not name
        assert [scheduled_lr(copy, s, 1.0, 3, 29, 0.25, 0.4) for s in range(31)] == \
            [scheduled_lr(name, s, 1.0, 3, 29, 0.25, 0.4) for s in range(31)]




@pytest.mark.parametrize("max_steps, fraction, decay_start", [(50, 0.2, 40), (29, 0.5, 15),
                                                             (61, 0.1, 55)])
def test_wsd_holds_the_peak_until_the_last_fraction_of_the_steps(max_steps, fraction,
                                                                 decay_start):
    """The rate stays at its peak after the warmup until the last ``fraction`` of
    ``max_steps`` (rounded: 10 of 50, 14 of 29, 6 of 61), then decays."""
    rates = [scheduled_lr("wsd", s, 1.0, 3, max_steps, 0.2, fraction) for s in range(max_steps)]
    assert rates[3:decay_start + 1] == [1.0] * (decay_start - 2)
    assert all(r < 1.0 for r in rates[decay_start + 1:])


def test_the_ends_of_the_ratios_are_accepted():
    """min_ratio 1 (no decay) and decay_fraction 1 (wsd decays from the warmup on) are
    in range, as are 0 and 0."""
    assert scheduled_lr("wsd", 5, 1.0, 2, 17, 1.0, 1.0) == 1.0
    assert scheduled_lr("linear", 17, 1.0, 2, 17, 0.0, 0.0) == 0.0

@pytest.mark.parametrize("since, steps", [(3, 8), (11, 4), (5, 1)])
def test_a_continuation_moves_in_equal_steps_from_the_last_rate(since, steps):
    """From step ``since`` the rate moves from the last one used to the new schedule's
    in ``steps`` equal steps, however the two compare (a continuation longer than the
    step it starts at included), and is the new schedule's outside them."""
    last, new = 0.9, 0.2
    got = [continued_lr(new, s, since, last, steps) for s in range(since + steps + 3)]
    assert got[:since] == [new] * since
    ramp = [last + (new - last) * (i + 1) / steps for i in range(steps)]
    assert got[since:since + steps] == pytest.approx(ramp, rel=1e-15)
    assert got[since + steps:] == [new] * 3

@pytest.mark.parametrize("arguments, error, expected", [
    ({"schedule": "cosin"}, ValueError, "schedule must be one of cosine, linear"),
    ({"schedule": None}, ValueError, "schedule must be one of"),
    ({"step": -1}, ValueError, "step must be at least 0, got -1"),
    ({"step": 2.0}, TypeError, "step must be an integer, got 2.0"),
    ({"warmup": -1}, ValueError, "warmup must be at least 0, got -1"),
    ({"warmup": True}, TypeError, "warmup must be an integer, got True"),
    ({"max_steps": 0}, ValueError, "max_steps must be at least 1, got 0"),
    ({"base_lr": -0.5}, ValueError, "base_lr must be finite and in [0, inf], got -0.5"),
    ({"base_lr": math.nan}, ValueError, "base_lr must be finite"),
    ({"base_lr": "3e-3"}, TypeError, "base_lr must be a number, got '3e-3'"),
    ({"min_ratio": 1.5}, ValueError, "min_ratio must be finite and in [0, 1.0], got 1.5"),
    ({"decay_fraction": -0.1}, ValueError, "decay_fraction must be finite and in [0, 1.0]"),
])
def test_bad_schedule_arguments_are_refused_by_name(arguments, error, expected):
    good = {"schedule": "wsd", "step": 4, "base_lr": 1e-3, "warmup": 2, "max_steps": 17,
            "min_ratio": 0.1, "decay_fraction": 0.2}
    with pytest.raises(error) as caught:
        scheduled_lr(**{**good, **arguments})
    assert str(caught.value).startswith(expected)
    assert scheduled_lr(**good) == 1e-3        # the same call with good arguments runs

def test_the_trainer_follows_the_schedule_flag(tmp_path, corpus_file, capsys):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", corpus_file, "--max-iters", "10", "--warmup", "2",
                                "--schedule", "wsd", "--decay-fraction", "0.4", "--lr", "0.01",
                                "--out-dir", out_dir], capsys)[0] == 0
    got = rates(out_dir)
    assert [got[s + 1] for s in range(10)] == [
        scheduled_lr("wsd", s, 0.01, 2, 10, 0.1, 0.4) for s in range(10)]


def test_a_changed_schedule_on_resume_warms_from_the_last_rate(tmp_path, corpus_file, capsys):
    """--lr and --max-iters changed at step 6: the rate goes from the last one used to
    the new schedule's over --warmup steps, not by a jump; the checkpoint records it."""
    first = TINY_RUN + ["--data", corpus_file, "--max-iters", "6", "--warmup", "2"]
    again = ["--resume", "--max-iters", "16", "--lr", "0.01", "--warmup", "4"]
    one = str(tmp_path / "one")
    assert run_main(first + ["--out-dir", one], capsys)[0] == 0
    last = rates(one)[6]
    assert last == scheduled_lr("cosine", 5, 3e-3, 2, 6)
    assert run_main(again + ["--out-dir", one], capsys)[0] == 0
    new = [scheduled_lr("cosine", s, 0.01, 4, 16) for s in range(16)]
    got = rates(one)
    assert [got[s + 1] for s in range(6, 10)] == pytest.approx(
        [last + (new[s] - last) * (s - 5) / 4 for s in range(6, 10)], rel=1e-15)
    assert [got[s + 1] for s in range(10, 16)] == new[10:16]
    state = TrainState.load(os.path.join(one, "ckpt.npz"), get_backend("numpy"))
    assert state.lr_continuation == {"step": 6, "lr": last}


def test_a_second_change_continues_from_the_rate_reached(tmp_path, corpus_file, capsys):
    first = TINY_RUN + ["--data", corpus_file, "--max-iters", "6", "--warmup", "2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    for out_dir in (one, two):
        assert run_main(first + ["--out-dir", out_dir], capsys)[0] == 0
    change = ["--resume", "--lr", "0.01", "--warmup", "4", "--schedule", "linear"]
    assert run_main(change + ["--max-iters", "14", "--out-dir", one], capsys)[0] == 0
    assert run_main(change + ["--max-iters", "8", "--out-dir", two], capsys)[0] == 0
    # max-iters changes again: a second continuation, from the rate of step 8
    state = TrainState.load(os.path.join(two, "ckpt.npz"), get_backend("numpy"))
    assert state.lr_continuation["step"] == 6
    assert run_main(["--resume", "--max-iters", "14", "--out-dir", two], capsys)[0] == 0
    a, b = rates(one), rates(two)
    assert [b[s] for s in range(1, 7)] == [a[s] for s in range(1, 7)]
    assert [b[7], b[8]] != [a[7], a[8]]    # max-iters 8, not 14: another schedule
    assert b[9] != a[9]          # two changes, two continuations: defined, not equal
    state = TrainState.load(os.path.join(two, "ckpt.npz"), get_backend("numpy"))
    assert state.lr_continuation == {"step": 8, "lr": b[8]}
    s = state.settings
    assert b[9] == b[8] + (scheduled_lr("linear", 8, 0.01, 4, 14) - b[8]) / 4
    assert (s.lr, s.warmup, s.schedule, s.max_iters) == (0.01, 4, "linear", 14)


def test_a_change_that_keeps_the_last_rate_takes_over_directly(tmp_path, corpus_file, capsys):
    """Inside the warmup a longer --max-iters gives the steps so far the same rates: the
    new schedule simply continues (no continuation recorded)."""
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", corpus_file, "--max-iters", "4", "--warmup", "10",
                                "--out-dir", out_dir], capsys)[0] == 0
    assert run_main(["--resume", "--max-iters", "8", "--out-dir", out_dir], capsys)[0] == 0
    got = rates(out_dir)
    assert [got[s + 1] for s in range(8)] == [scheduled_lr("cosine", s, 3e-3, 10, 8)
                                              for s in range(8)]
    state = TrainState.load(os.path.join(out_dir, "ckpt.npz"), get_backend("numpy"))
    assert state.lr_continuation is None


def test_resume_without_a_change_keeps_the_schedule(tmp_path, corpus_file, capsys):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", corpus_file, "--max-iters", "4", "--lr", "0.005",
                                "--out-dir", out_dir], capsys)[0] == 0
    assert run_main(["--resume", "--lr", "0.005", "--out-dir", out_dir], capsys)[0] == 0
    state = TrainState.load(os.path.join(out_dir, "ckpt.npz"), get_backend("numpy"))
    assert state.lr_continuation is None


def test_a_config_file_sets_flags_and_the_command_line_overrides_it(tmp_path, corpus_file,
                                                                     capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(f'preset = "tiny"\nmax-iters = 3\nlr = 0.004\nschedule = "constant"\n'
                      f'eval_every = 5\neval-batches = 2\ndata = "{corpus_file}"\n'
                      'recompute = true\nwarmup = 0\n')
    out_dir = str(tmp_path / "run")
    assert run_main(["--config", str(config), "--lr", "0.002", "--out-dir", out_dir],
                    capsys)[0] == 0
    state = TrainState.load(os.path.join(out_dir, "ckpt.npz"), get_backend("numpy"))
    assert (state.settings.max_iters, state.settings.lr, state.settings.schedule) == \
        (3, 0.002, "constant")
    assert state.cfg.recompute is True and state.settings.data == corpus_file
    assert set(rates(out_dir).values()) == {0.002}


@pytest.mark.parametrize("text, expected", [
    ("max-itres = 3\n", "unknown key 'max-itres'"),
    ('max-iters = "many"\n', "key 'max-iters' = 'many' is not valid"),
    ("recompute = 1\n", "key 'recompute' must be true or false"),
    ("lr = [0.1]\n", "key 'lr' must be a number or a string"),
    ("lr = \n", "is not valid TOML"),
    ("config = 'x.toml'\n", "unknown key 'config'"),
])
def test_a_bad_config_file_is_one_error_line_naming_the_key(tmp_path, capsys, text, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(config), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and expected in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("continuation", [{"step": 0, "lr": 0.1}, {"step": 9, "lr": 0.1},
                                          {"step": 2, "lr": float("nan")}, [2, 0.1],
                                          {"step": 2, "lr": 0.1, "x": 1}])
def test_a_crafted_lr_continuation_is_refused(tmp_path, corpus_file, capsys, continuation):
    from brainlike_np.checkpoint import CheckpointError, save_npz_atomic
    from npz import load_npz
    out_dir = tmp_path / "run"
    assert run_main(TINY_RUN + ["--data", corpus_file, "--max-iters", "3",
                                "--out-dir", str(out_dir)], capsys)[0] == 0
    arrays, meta = load_npz(str(out_dir / "ckpt.npz"))
    meta["lr_continuation"] = continuation
    save_npz_atomic(str(out_dir / "ckpt.npz"), arrays, meta)
    with pytest.raises(CheckpointError, match="lr_continuation"):
        TrainState.load(str(out_dir / "ckpt.npz"), get_backend("numpy"))


def test_an_interrupted_continuation_resumes_it_exactly(tmp_path, corpus_file, capsys,
                                                        monkeypatch):
    """The rate change of a resume, interrupted (SIGINT) inside its --warmup steps and
    resumed without flags: the same rates and losses as the uninterrupted one."""
    import signal
    first = TINY_RUN + ["--data", corpus_file, "--max-iters", "6", "--warmup", "2"]
    change = ["--resume", "--max-iters", "14", "--lr", "0.01", "--warmup", "5"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    for out_dir in (straight, split):
        assert run_main(first + ["--out-dir", out_dir], capsys)[0] == 0
    assert run_main(change + ["--out-dir", straight], capsys)[0] == 0
    real_step = TrainState.train_step

    def step_then_ctrl_c(self, x, y, lr):
        metrics = real_step(self, x, y, lr)
        if self.step == 8:                      # 2 of the 5 continuation steps taken
            os.kill(os.getpid(), signal.SIGINT)
        return metrics
    monkeypatch.setattr(TrainState, "train_step", step_then_ctrl_c)
    assert run_main(change + ["--out-dir", split], capsys)[0] == train.EXIT_INTERRUPTED
    monkeypatch.setattr(TrainState, "train_step", real_step)
    assert run_main(["--resume", "--out-dir", split], capsys)[0] == 0
    assert rates(split) == rates(straight) and len(rates(split)) == 14
    with open(os.path.join(split, "metrics.jsonl")) as a, \
            open(os.path.join(straight, "metrics.jsonl")) as b:
        losses = [[(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]
                  for f in (a, b)]
    assert losses[0] == losses[1]


def test_a_run_resumes_with_its_config_file_given_again(tmp_path, corpus_file, capsys):
    """The file's run-defining keys (data, preset, seed) repeat the run's values, so
    --resume takes it again; a longer --max-iters on the command line continues the run."""
    config = tmp_path / "run.toml"
    config.write_text(f'preset = "tiny"\nseed = 4\ndata = "{corpus_file}"\nmax-iters = 3\n'
                      'eval-every = 3\neval-batches = 2\n')
    out_dir = str(tmp_path / "run")
    assert run_main(["--config", str(config), "--out-dir", out_dir], capsys)[0] == 0
    code, _, err = run_main(["--config", str(config), "--resume", "--max-iters", "5",
                             "--out-dir", out_dir], capsys)
    assert code == 0, err
    state = TrainState.load(os.path.join(out_dir, "ckpt.npz"), get_backend("numpy"))
    assert (state.step, state.settings.seed, state.settings.max_iters) == (5, 4, 5)
