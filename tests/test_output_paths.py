"""Every file the project writes goes through ``output.replacing``: a target that is not
absent or a regular file holding what the writer writes (a device, a FIFO, a socket, a
folder, a symlink, another writer's run file) is refused in one line and left as it
was; new files get ``0o666 & ~umask``, replaced ones keep their permissions. Checked
on the library writers (TrainState.save, the metrics file) and on ``plot -o``."""

import json
import os
import socket
import stat

import pytest

from brainlike_np import get_backend, get_preset, outdir, plot, train
from brainlike_np.output import OutputPathError, check_output_path, replacing
from brainlike_np.train_state import TrainSettings, TrainState

TINY = ["--preset", "tiny", "--eval-batches", "2"]
TEXT = b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n" * 70
ZIP_MAGIC = b"PK\x03\x04"


def _char_device(path):
    """A copy of /dev/null's device node at ``path`` (root only; skip elsewhere)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    except (PermissionError, AttributeError):
        pytest.skip("cannot make a device node here (not root)")


def _socket(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


PLANTS = {
    "char-device": _char_device,
    "fifo": lambda path: os.mkfifo(path),
    "socket": _socket,
    "folder": lambda path: os.mkdir(path),
    "symlink-to-file": lambda path: os.symlink(path.parent / "precious", path),
    "symlink-to-nothing": lambda path: os.symlink(path.parent / "missing", path),
    "symlink-to-dev-stdout": lambda path: os.symlink("/dev/stdout", path),
}


def _kind(path):
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), (os.readlink(path) if stat.S_ISLNK(st.st_mode) else None)


@pytest.fixture(scope="module")
def state():
    return TrainState.create("brainlike", get_preset("brainlike", "tiny"),
                             get_backend("numpy"), TrainSettings(seed=0))


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "precious").write_bytes(b"precious bytes\n")
    return tmp_path


@pytest.mark.parametrize("plant", PLANTS)
def test_a_checkpoint_is_never_saved_over_what_is_not_a_regular_file(state, folder, plant):
    target = folder / "ckpt.npz"
    PLANTS[plant](target)
    before = _kind(target)
    with pytest.raises(OutputPathError, match="nothing was written") as err:
        state.save(str(target))
    assert "\n" not in str(err.value) and str(target) in str(err.value)
    assert _kind(target) == before
    assert (folder / "precious").read_bytes() == b"precious bytes\n"
    assert not list(folder.glob(".tmp-*")), "the temporary file was left behind"


@pytest.mark.parametrize("plant", PLANTS)
def test_plot_never_writes_over_what_is_not_a_regular_file(folder, plant, capsys):
    run = folder / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    target = folder / "curves.png"
    PLANTS[plant](target)
    before = _kind(target)
    assert plot.main([str(run), "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--output" in err, err
    assert _kind(target) == before
    assert (folder / "precious").read_bytes() == b"precious bytes\n"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "c.txt").write_bytes(TEXT)
    assert train.main(TINY + ["--max-iters", "2", "--eval-every", "2", "--data",
                              str(root / "c.txt"), "--out-dir", str(root / "o")]) == 0
    return root / "o"


@pytest.mark.parametrize("name", ["ckpt.npz", "metrics.jsonl", ".lock", ".tmp-x.png"])
def test_plot_refuses_to_write_over_a_file_of_a_run(finished_run, name, capsys):
    files = {n: (finished_run / n).read_bytes() for n in os.listdir(finished_run)}
    assert plot.main([str(finished_run), "-o", str(finished_run / name)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a training run's own file" in err, err
    assert {n: (finished_run / n).read_bytes() for n in os.listdir(finished_run)} == files


def test_a_checkpoint_is_never_saved_over_a_runs_metrics_or_another_file(state, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(OutputPathError, match="a training run's own file"):
        state.save(str(tmp_path / "metrics.jsonl"))
    with pytest.raises(OutputPathError, match="holds something other"):
        state.save(str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    state.save(str(tmp_path / "again.npz"))
    state.save(str(tmp_path / "again.npz"))        # a checkpoint replaces a checkpoint
    assert (tmp_path / "again.npz").read_bytes()[:4] == ZIP_MAGIC


def test_the_trainer_refuses_a_symlinked_checkpoint_before_training(finished_run, tmp_path,
                                                                     capsys):
    """A resume whose out-dir's checkpoint is a symlink (to the run's own checkpoint,
    moved away) is refused up front, in one line, and nothing changes."""
    out = tmp_path / "o"
    os.mkdir(out)
    real = tmp_path / "elsewhere.npz"
    real.write_bytes((finished_run / "ckpt.npz").read_bytes())
    os.symlink(real, out / "ckpt.npz")
    code = train.main(["--resume", "--max-iters", "3", "--out-dir", str(out)])
    out_text, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and "symbolic link" in err, err
    assert "step" not in out_text
    assert os.path.islink(out / "ckpt.npz")
    assert real.read_bytes() == (finished_run / "ckpt.npz").read_bytes()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_the_umasks_permissions_and_replaced_ones_keep_theirs(tmp_path, umask):
    old = os.umask(umask)
    try:
        for name, magic in (("a.npz", ZIP_MAGIC), ("metrics.jsonl", None)):
            path = tmp_path / name
            with replacing(str(path), magic, own_name="metrics.jsonl") as f:
                f.write(ZIP_MAGIC + b"one")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
            os.chmod(path, 0o440)
            with replacing(str(path), magic, own_name="metrics.jsonl") as f:
                f.write(ZIP_MAGIC + b"two")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o440
            assert path.read_bytes() == ZIP_MAGIC + b"two"
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(ZIP_MAGIC + b"old")
    with pytest.raises(RuntimeError):
        with replacing(str(path), ZIP_MAGIC) as f:
            f.write(b"half")
            raise RuntimeError("the writer failed")
    assert path.read_bytes() == ZIP_MAGIC + b"old"
    assert os.listdir(tmp_path) == ["a.npz"]


def test_an_empty_file_or_a_missing_one_may_be_written(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert check_output_path(str(tmp_path / "empty.png"), b"\x89PNG") >= 0
    assert check_output_path(str(tmp_path / "new.png"), b"\x89PNG") >= 0


def test_the_metrics_file_is_written_through_the_same_mechanism(tmp_path):
    """A metrics.jsonl that is a symlink is refused by the out-dir in one line."""
    os.symlink(tmp_path / "elsewhere.jsonl", tmp_path / "metrics.jsonl")
    with pytest.raises(outdir.OutDirError, match="symbolic link.*the trainer writes "
                                                 "metrics.jsonl itself"):
        with outdir.OutDir(str(tmp_path)):
            pass
    assert not os.path.exists(tmp_path / "elsewhere.jsonl")


def test_a_path_that_is_not_utf8_is_printed_escaped_never_a_traceback(tmp_path, capsys):
    """The trainer's banner and plot's output line name paths whose bytes are not UTF-8
    (held as surrogates): escaped, where printing them raised UnicodeEncodeError."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    target = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.png")
    assert plot.main([str(run), "-o", target]) == 0
    assert capsys.readouterr().out.strip().endswith("\\udcff.png")
    assert os.path.exists(target)
    corpus = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xfe.txt")
    with open(corpus, "wb") as f:
        f.write(TEXT)
    assert train.main(TINY + ["--max-iters", "1", "--eval-every", "1", "--data", corpus,
                              "--out-dir", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert "\\udcfe.txt" in out and "Traceback" not in err


@pytest.mark.parametrize("path, error", [("", ValueError), (None, TypeError), (3, TypeError),
                                         (b"x.npz", TypeError)])
def test_save_names_a_path_that_is_not_one(state, path, error):
    with pytest.raises(error, match="the output path must be a file's path"):
        state.save(path)
