"""Evaluation only (brainlike_np.evaluate): the library function against an independent
per-window loss, exact resume untouched, and the command's output and errors."""


import numpy as np
import pytest

from brainlike_np import evaluate as ev
from brainlike_np import train
from brainlike_np.train_state import TrainState
from brainlike_np.backends import get_backend

TEXT = (b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 60)
TINY_RUN = ["--preset", "tiny", "--eval-every", "5", "--eval-batches", "2"]


@pytest.fixture
def trained(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT)
    out_dir = tmp_path / "run"
    assert train.main(TINY_RUN + ["--max-iters", "6", "--data", str(corpus),
                                  "--out-dir", str(out_dir)]) == 0
    capsys.readouterr()
    return str(out_dir / "ckpt.npz"), str(corpus)


def test_the_loss_is_the_mean_over_every_window_of_the_per_window_losses(trained):
    state = TrainState.load(trained[0], get_backend("numpy"))
    tokens = np.frombuffer(TEXT[:301], dtype=np.uint8)
    T = state.cfg.context
    per_window = [state.evaluate([(tokens[None, s:s + T].astype(np.int64),
                                   tokens[s + T:s + T + 1].astype(np.int64))])
                  for s in range(len(tokens) - T)]
    result = ev.evaluate_tokens(state, tokens, batch_size=7, max_windows=None)
    assert (result.windows, result.total) == (len(tokens) - T, len(tokens) - T)
    assert not result.sampled
    assert result.loss == pytest.approx(np.mean(per_window), rel=1e-5)
    sampled = ev.evaluate_tokens(state, tokens, batch_size=5, max_windows=11)
    starts = ev.window_starts(len(tokens) - T, 11)
    assert sampled.sampled and sampled.windows == 11 and starts[0] == 0
    assert starts[-1] == len(tokens) - T - 1 and len(set(starts.tolist())) == 11
    assert sampled.loss == pytest.approx(np.mean([per_window[s] for s in starts]), rel=1e-5)


def test_evaluating_leaves_the_sampler_and_parameters_as_they_were(trained):
    """Evaluating in the middle of a run must not change the data order: exact resume."""
    backend = get_backend("numpy")
    a, b = TrainState.load(trained[0], backend), TrainState.load(trained[0], backend)
    ev.evaluate_tokens(a, TEXT[:500], batch_size=9, max_windows=None)
    for state in (a, b):
        x, y = state.sample_batch(TEXT, 6)
        state.train_step(x, y, lr=1e-3)
    assert a.sampler.bit_generator.state == b.sampler.bit_generator.state
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


@pytest.mark.parametrize("kwargs, expected", [
    (dict(batch_size=0), "batch_size"), (dict(max_windows=0), "max_windows"),
    (dict(batch_size=2.5), "batch_size"), (dict(tokens="text"), "str")])
def test_the_library_function_names_a_bad_argument(trained, kwargs, expected):
    state = TrainState.load(trained[0], get_backend("numpy"))
    tokens = kwargs.pop("tokens", TEXT)
    with pytest.raises((TypeError, ValueError), match=expected):
        ev.evaluate_tokens(state, tokens, **kwargs)
    with pytest.raises(TypeError, match="TrainState"):
        ev.evaluate_tokens(None, TEXT)


def test_the_command_reports_each_split_with_baselines(trained, tmp_path, capsys):
    ckpt, corpus = trained
    held_out = tmp_path / "test.txt"
    held_out.write_bytes(TEXT[7:900])
    assert ev.main(["--checkpoint", ckpt, "--data", str(held_out), "--split", "all",
                    "--max-windows", "50", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("train: ") and lines[2].startswith("valid: ")
    assert "50 of" in lines[1] and "evenly spaced" in lines[1] and "bigram" in lines[1]
    assert lines[3].startswith("all: ")
    assert ev.main(["--checkpoint", ckpt, "--max-windows", "0"]) == 0   # its own data
    assert "all " in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--checkpoint", "missing.npz"], "missing.npz"),
    (["--data", "nowhere.txt"], "nowhere.txt"),
    (["--max-windows", "-1"], "--max-windows"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_the_command_fails_with_one_line(trained, capsys, argv, expected):
    argv = argv if argv[0] == "--checkpoint" else ["--checkpoint", trained[0]] + argv
    assert ev.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err
