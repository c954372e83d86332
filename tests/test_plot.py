"""``python -m brainlike_np.plot``: the PNG of real runs (one, and two overlaid), what it
draws, metrics read as the trainer reads them, and its one-line errors."""

import json
import sys

import pytest

from brainlike_np import plot, train

pytest.importorskip("matplotlib")
TINY = ["--preset", "tiny", "--eval-every", "3", "--eval-batches", "2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real short runs on one corpus, at two learning rates."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "c.txt"
    corpus.write_bytes(b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n" * 80)
    for name, lr in (("slow", "1e-3"), ("fast", "1e-2")):
        assert train.main(TINY + ["--max-iters", "6", "--lr", lr, "--data", str(corpus),
                                  "--out-dir", str(root / name)]) == 0
    return root / "slow", root / "fast"


def read_png(path):
    from matplotlib.image import imread
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(str(path))


def test_one_run_is_written_to_its_out_dir_by_default(runs, capsys):
    assert plot.main([str(runs[0])]) == 0
    written = runs[0] / plot.DEFAULT_NAME
    assert capsys.readouterr().out.strip() == str(written)
    height, width, _ = read_png(written).shape
    assert width > 2 * height > 600
    assert not list(runs[0].glob(".tmp-*"))


def test_two_runs_overlaid_draw_each_curve_and_the_shared_baselines(runs, tmp_path):
    assert plot.main([str(runs[0]), str(runs[1]), "-o", str(tmp_path / "both.png")]) == 0
    read_png(tmp_path / "both.png")
    curves = [plot.read_run(str(r)) for r in runs]
    by_step, by_time = plot.figure(curves).axes
    for ax, x in ((by_step, 0), (by_time, 1)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for run in curves:
            for split in ("train", "valid"):
                points = getattr(run, split)
                assert list(lines[f"{run.label} {split}"].get_xdata()) == [p[x] for p in points]
                assert list(lines[f"{run.label} {split}"].get_ydata()) == [p[2] for p in points]
        baselines = [line for line in ax.get_lines() if "count model" in line.get_label()]
        assert sorted(line.get_ydata()[0] for line in baselines) == \
            sorted(curves[0].baselines.values())     # same corpus: drawn once, in black


def test_metrics_are_read_as_the_trainer_reads_them(runs, tmp_path):
    """The run's own records (6 steps, evaluations at 3 and 6, each with seconds); a torn
    last line, a line that is not UTF-8, a null loss and a record from an older trainer
    without seconds do not break it: the last is drawn against steps only."""
    run = plot.read_run(str(runs[0]))
    assert [p[0] for p in run.train] == [1, 2, 3, 4, 5, 6]
    assert [p[0] for p in run.valid] == [3, 6]
    assert all(isinstance(p[1], float) for p in run.train + run.valid)
    assert set(run.baselines) == {"unigram", "bigram"}
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_bytes((
        json.dumps({"step": 1, "loss": 5.0}) + "\n" + json.dumps({"step": 2, "loss": None})
        + "\n" + json.dumps({"step": 2, "val_loss": 4.5}) + "\n").encode()
        + b'{"step": 2, "loss": 1.0, "x": "\xff\xfe"}\n{"step": 3, "lo')
    curves = plot.read_run(str(old))
    assert curves.train == [(1, None, 5.0)] and curves.valid == [(2, None, 4.5)]
    by_step, by_time = plot.figure([curves]).axes
    assert len(by_step.get_lines()) == 2 and by_time.get_lines() == []
    assert plot.main([str(old)]) == 0


def one_error_line(capsys, argv, expected):
    assert plot.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and expected in err


def test_without_matplotlib_it_says_so_in_one_line(runs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib fails
    one_error_line(capsys, [str(runs[0])], 'pip install -e ".[plot]"')


def test_bad_folders_and_outputs_are_one_line(runs, tmp_path, capsys):
    one_error_line(capsys, [str(tmp_path / "missing")], "is not a folder")
    (tmp_path / "empty").mkdir()
    one_error_line(capsys, [str(tmp_path / "empty")], "holds no training records")
    one_error_line(capsys, [str(runs[0]), "-o", str(tmp_path / "no" / "x.png")], "cannot write")


HUGE = int("9" * 400)      # a JSON integer no float holds


@pytest.mark.parametrize("records, kept", [
    ([{"step": 1, "loss": 1e308}, {"step": 2, "loss": -1e308}, {"step": 3, "loss": 2.0}], 1),
    ([{"step": HUGE, "loss": 2.0}, {"step": 2, "loss": HUGE}, {"step": 3, "loss": 1.0}], 1),
    ([{"step": 1, "loss": 1e300}, {"step": 2, "loss": -1e300}], 2),
    ([{"step": 1, "loss": 2.0, "time_s": 1e308}, {"step": 2, "loss": 1.0, "time_s": -1e308}], 2),
    ([{"step": 1, "loss": 2.0}, {"step": 2, "val_loss": 1.5, "unigram_baseline": 1e308,
                                 "bigram_baseline": -1e308}], 2),
    ([{"step": 1, "loss": 2.0}, {"step": 2, "val_loss": 1.5, "unigram_baseline": 1e300,
                                 "bigram_baseline": -1e300}], 2),
], ids=["loss-1e308", "400-digits", "loss-1e300", "time-1e308", "baselines-1e308",
        "baselines-1e300"])
def test_extreme_values_are_drawn_or_left_out_never_a_traceback(tmp_path, capsys, records,
                                                               kept):
    """A value within ±1e300 is drawn; one beyond (or an integer no float holds) is
    left out with a note; the PNG is written either way."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = plot.read_run(str(run))
    assert len(curves.train) + len(curves.valid) == kept
    assert all(abs(v) <= plot.PLOT_LIMIT for p in curves.train + curves.valid
               for v in (p[0], p[2]))
    assert all(abs(v) <= plot.PLOT_LIMIT for v in curves.baselines.values())
    assert plot.main([str(run), "-o", str(tmp_path / "c.png")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "c.png")
    assert read_png(tmp_path / "c.png").shape[0] > 300
    left_out = sum(1 for r in records for k in ("loss", "val_loss") if k in r) - kept
    assert (f"note: {left_out} points" in err) if left_out else err == ""


def test_only_values_no_axis_can_take_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1e308}\n{"step": 2, "loss": -1e308}\n')
    one_error_line(capsys, [str(run)], "no training records with values a plot can show")


def test_a_bad_mplbackend_is_one_line(runs, tmp_path):
    import os
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "brainlike_np.plot", str(runs[0]), "-o",
                           str(tmp_path / "c.png")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MPLBACKEND": "bogus"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "MPLBACKEND" in proc.stderr, proc.stderr
    assert not (tmp_path / "c.png").exists()
