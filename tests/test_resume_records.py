"""Every saved run loads again: the data record is bounded whatever the number of files
and the length of their paths, and the reader's meta.json limit is what the writer may
write (a checkpoint at the limit loads through TrainState.load, generate and --resume;
one byte more is refused when saving, the previous checkpoint kept). And --preset
repeated on --resume is compared with the preset plus the run's recorded overrides."""

import json
import os
import zipfile

import pytest

import brainlike_np.generate as gen
from brainlike_np import data, get_backend, train
from brainlike_np.checkpoint import MAX_META_BYTES, CheckpointError
from brainlike_np.train_state import TrainState

TINY = ["--preset", "tiny", "--eval-batches", "1"]
TEXT = b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n" * 70


def meta_bytes(path) -> int:
    """The length of the checkpoint's meta.json text (the .npy entry without its header)."""
    with zipfile.ZipFile(path) as z, z.open("meta.json.npy") as f:
        return len(f.read()) - 128           # NumPy's header of a 1-D uint8 array


def one_error(capsys, code, words):
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    assert words in err, err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "c.txt").write_bytes(TEXT)
    assert train.main(TINY + ["--max-iters", "2", "--eval-every", "2", "--data",
                              str(root / "c.txt"), "--out-dir", str(root / "o")]) == 0
    return root


def test_a_checkpoint_at_the_meta_limit_loads_and_one_byte_more_is_not_saved(run, tmp_path,
                                                                            capsys):
    state = TrainState.load(str(run / "o" / "ckpt.npz"), get_backend("numpy"))
    path = str(tmp_path / "ckpt.npz")
    state.data_record = {**state.data_record, "pad": ""}
    state.save(path)
    state.data_record["pad"] = "x" * (MAX_META_BYTES - meta_bytes(path))
    state.save(path)
    assert meta_bytes(path) == MAX_META_BYTES
    before = open(path, "rb").read()
    loaded = TrainState.load(path, get_backend("numpy"))
    assert loaded.data_record == state.data_record and loaded.step == state.step
    assert gen.main(["--checkpoint", path, "--max-new-bytes", "3", "--prompt", "de"]) == 0
    assert capsys.readouterr().out.startswith("de")
    state.data_record["pad"] += "x"
    with pytest.raises(CheckpointError, match="more than the .* a checkpoint may hold"):
        state.save(path)
    assert open(path, "rb").read() == before


def _deep_folder(root, n_files: int):
    """``n_files`` files whose absolute paths are close to PATH_MAX (4095 bytes), every
    name byte 0xff (not UTF-8: 6 bytes of JSON each, the longest a byte takes)."""
    folder = os.fsencode(str(root))
    target = data.MAX_PATH_BYTES - 1 - 1 - 250         # then a name of 250 bytes or so
    while len(folder) < target:
        folder = os.path.join(folder, b"\xff" * max(1, min(250, target - len(folder) - 1)))
    os.makedirs(folder)
    name_bytes = data.MAX_PATH_BYTES - 1 - len(folder) - 1 - 4
    for i in range(n_files):
        with open(os.path.join(folder, b"\xff" * name_bytes + b"%04d" % i), "wb") as f:
            f.write(TEXT[i % 50:][:400])
    return os.fsdecode(folder)


def test_a_run_on_files_with_the_longest_paths_resumes_and_generates(tmp_path, capsys):
    """300 files (more than are recorded one by one) with paths of 4095 bytes: the
    checkpoint's meta.json holds the largest data record a corpus makes, and loads again
    through --resume, generate and TrainState.load."""
    folder = _deep_folder(tmp_path, 300)
    out = str(tmp_path / "o")
    assert train.main(TINY + ["--max-iters", "1", "--eval-every", "1", "--data", folder,
                              "--out-dir", out]) == 0
    checkpoint = os.path.join(out, "ckpt.npz")
    size = meta_bytes(checkpoint)
    assert data.MAX_DATA_RECORD_BYTES * 0.9 < size <= MAX_META_BYTES, size
    record = TrainState.load(checkpoint, get_backend("numpy")).data_record
    assert record["n_files"] == 300 and len(record["files"]) == data.MAX_RECORDED_FILES
    assert all(len(os.fsencode(f["path"])) == data.MAX_PATH_BYTES - 1 for f in record["files"])
    capsys.readouterr()
    assert train.main(["--resume", "--max-iters", "2", "--out-dir", out]) == 0
    assert gen.main(["--checkpoint", checkpoint, "--max-new-bytes", "2"]) == 0
    os.remove(os.path.join(folder, os.listdir(folder)[1]))     # one file gone: one line
    capsys.readouterr()
    one_error(capsys, train.main(["--resume", "--max-iters", "3", "--out-dir", out]),
              "and 298 more; pass the run's data")


@pytest.mark.parametrize("n_files", [7000, 100_000])
def test_the_data_record_is_bounded_whatever_the_number_of_files(n_files):
    """A record of many files with 150-character names (7,000 of them made a meta.json of
    1.76 MB that the reader refused) fits the bound; the digest still tells a renamed
    file apart."""
    full = {"source": "/d", "split": {"valid": "files by path hash",
                                      "valid_files": list(range(0, n_files, 10))},
            "train_bytes": 1, "valid_bytes": 1,
            "files": [{"path": f"/d/{i:07d}{'n' * 143}", "size": i, "mtime_ns": 10**18 + i,
                       "hash": None} for i in range(n_files)]}
    bounded = data.bounded_record(full)
    assert len(json.dumps(bounded)) < data.MAX_DATA_RECORD_BYTES
    assert bounded["n_files"] == n_files and len(bounded["files"]) == data.MAX_RECORDED_FILES
    renamed = json.loads(json.dumps(full))
    unrecorded = next(i for i in range(n_files)
                      if full["files"][i]["path"] not in {f["path"] for f in bounded["files"]})
    renamed["files"][unrecorded]["path"] += "x"
    with pytest.raises(data.DataError, match="renamed, replaced or resized"):
        data.check_same_data(bounded, data.bounded_record(renamed))
    assert data.check_same_data(bounded, data.bounded_record(json.loads(json.dumps(full)))) \
        is None


def test_an_older_record_of_every_file_compares_with_a_bounded_one():
    """A record saved one entry a file (older versions) is compared with today's bounded
    record of the same files as equal, and of changed files as changed."""
    files = [{"path": f"/d/{i}", "size": 10 + i, "mtime_ns": 5 + i, "hash": None}
             for i in range(400)]
    old = {"source": "/d", "split": {"valid": "files by path hash", "valid_files": [0]},
           "train_bytes": 9, "valid_bytes": 1, "files": files}
    for f, n in zip(files, data.hash_budget(400)):
        f["hash"] = None if n is None else f"{f['size']:016x}"
    assert data.check_same_data(old, data.bounded_record(json.loads(json.dumps(old)))) is None
    changed = json.loads(json.dumps(old))
    changed["files"][1]["mtime_ns"] += 1
    with pytest.raises(data.DataError, match="modification time"):
        data.check_same_data(old, data.bounded_record(changed))


# ---- --preset on --resume ----------------------------------------------------------------
@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tr")
    (root / "c.txt").write_bytes(TEXT)
    assert train.main(["--model", "transformer", "--targets", "last", "--max-iters", "1",
                       "--eval-every", "1", "--data", str(root / "c.txt"),
                       "--out-dir", str(root / "o")] + TINY) == 0
    return root / "o"


def test_repeating_the_runs_preset_on_resume_is_accepted(transformer_run, capsys):
    capsys.readouterr()
    assert train.main(["--resume", "--model", "transformer", "--preset", "tiny",
                       "--max-iters", "2", "--out-dir", str(transformer_run)]) == 0
    assert train.main(["--resume", "--preset", "tiny", "--targets", "last",
                       "--max-iters", "2", "--out-dir", str(transformer_run)]) == 0


@pytest.mark.parametrize("flags, words", [
    (["--preset", "tiny", "--targets", "all"], "was trained with targets=last, not all "
                                              "(--targets)"),
    (["--preset", "default"], "(--preset default); drop --preset default"),
])
def test_a_preset_or_override_the_run_did_not_have_is_refused(transformer_run, capsys, flags,
                                                              words):
    capsys.readouterr()
    before = (transformer_run / "ckpt.npz").read_bytes()
    one_error(capsys, train.main(["--resume", *flags, "--max-iters", "2", "--out-dir",
                                  str(transformer_run)]), words)
    assert (transformer_run / "ckpt.npz").read_bytes() == before
