"""Corpora: the train/validation splits (documented sizes, no byte on both sides, the
same on every call), files mapped and read only where windows fall, folders and globs,
bounded baselines, the identity record that --resume compares, and the trainer's data
errors (one line, nothing saved lost), down to resident memory on a huge sparse file."""

import ctypes
import glob
import json
import mmap
import os
import subprocess
import sys
import sysconfig
import zlib

import numpy as np
import pytest

from brainlike_np import data, train
from brainlike_np.checkpoint import save_npz_atomic
from brainlike_np.datafiles import DataFile, Tokens
from brainlike_np.train_state import TrainState
from npz import load_npz

TINY = ["--preset", "tiny", "--eval-every", "2", "--eval-batches", "2"]


def random_bytes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


# ---- splits ------------------------------------------------------------------------
@pytest.mark.parametrize("n_bytes", [7, 10, 1000, 1003, 4097])
def test_text_file_split_is_the_last_tenth_and_reassembles_the_file(tmp_path, n_bytes):
    """Validation is the last 10% of the bytes (to within one byte), training is the rest
    before it: together they are the file, each byte on exactly one side, the same on
    every call; the record states the range."""
    content = random_bytes(n_bytes, n_bytes)
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    corpus = data.load_corpus(str(path))
    train_part, valid = corpus.train.tobytes(), corpus.valid.tobytes()
    assert train_part + valid == content
    assert abs(len(valid) - n_bytes / 10) < 1
    assert corpus.record()["split"]["valid_range"] == [len(train_part), n_bytes]
    again = data.load_corpus(str(path))
    assert (again.train.tobytes(), again.valid.tobytes()) == (train_part, valid)


def stdlib_tree(root):
    """A small fake standard library: unique ``.py`` files, some in folders the corpus
    skips, and a non-Python file. -> {relative path: content} of the files that count."""
    counted = {}
    for i in range(40):
        rel = f"pkg{i % 3}/mod{i}.py" if i % 2 else f"mod{i}.py"
        counted[rel] = f"# module {i}\n".encode() + bytes([65 + i % 26]) * i
    skipped = ["site-packages/x.py", "test/test_y.py", "tests/z.py", "idlelib/w.py",
               "lib2to3/v.py", "pkg0/notes.txt"]
    for rel, content in [*counted.items(), *((s, b"# skipped\n") for s in skipped)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return counted


def use_as_stdlib(monkeypatch, root):
    paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**paths, "stdlib": str(root)})


def hashed_to_valid(rel):
    return zlib.crc32(rel.encode()) % 10 == 0


def test_stdlib_split_keeps_each_file_on_one_side_by_its_path_hash(tmp_path, monkeypatch):
    """Each counted file goes wholly to validation when the CRC-32 of its relative path is
    0 mod 10, else wholly to training; each split is its files, sorted by path and joined
    by newlines; skipped folders and non-.py files are left out; the same on every call."""
    files = stdlib_tree(tmp_path)
    use_as_stdlib(monkeypatch, tmp_path)
    in_valid = {rel: hashed_to_valid(rel) for rel in files}
    assert 0 < sum(in_valid.values()) < len(files)      # the tree exercises both sides

    corpus = data.load_stdlib_corpus()
    train_part, valid = corpus.train.tobytes(), corpus.valid.tobytes()
    for rel, content in files.items():
        assert (content in valid, content in train_part) == (in_valid[rel], not in_valid[rel]), rel
    expected = {side: b"\n".join(files[rel] for rel in sorted(files, key=lambda r: tmp_path / r)
                                 if in_valid[rel] == side) for side in (True, False)}
    assert (valid, train_part) == (expected[True], expected[False])
    again = data.load_stdlib_corpus()
    assert (again.train.tobytes(), again.valid.tobytes()) == (train_part, valid)


def test_stdlib_with_an_empty_split_is_an_error(tmp_path, monkeypatch):
    """Sources that would leave one split empty (here one file) raise DataError rather
    than give a corpus without validation or training bytes."""
    (tmp_path / "only.py").write_bytes(b"x = 1\n")
    use_as_stdlib(monkeypatch, tmp_path)
    with pytest.raises(data.DataError, match="no Python sources"):
        data.load_stdlib_corpus()


def text_tree(root, n=30):
    """Files of distinct random bytes in nested folders, one of them empty. -> {rel: bytes}"""
    files = {}
    for i in range(n):
        rel = f"d{i % 4}/sub/f{i}.txt" if i % 3 else f"f{i}.txt"
        files[rel] = random_bytes(200 + 37 * i, seed=i) if i != 5 else b""
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[rel])
    return files


def test_a_folder_is_every_file_under_it_sorted_with_whole_files_validating(tmp_path):
    """--data DIR: every non-empty regular file, sorted by path; a file is validation
    (whole) when its relative path's CRC-32 is 0 mod 10, as for the default corpus; each
    split is its files in order, not joined in memory (one part per file)."""
    files = text_tree(tmp_path / "texts")
    corpus = data.open_corpus(str(tmp_path / "texts"))
    order = sorted((r for r in files if files[r]), key=lambda r: tmp_path / "texts" / r)
    side = {r: hashed_to_valid(r) for r in order}
    assert 0 < sum(side.values()) < len(order)
    assert corpus.valid.tobytes() == b"".join(files[r] for r in order if side[r])
    assert corpus.train.tobytes() == b"".join(files[r] for r in order if not side[r])
    assert len(corpus.train.parts) + len(corpus.valid.parts) == len(order)
    assert [f["path"] for f in corpus.record()["files"]] == \
        [os.path.realpath(tmp_path / "texts" / r) for r in order]


def test_a_glob_takes_the_matching_files_and_agrees_with_the_folder(tmp_path):
    files = text_tree(tmp_path / "texts")
    (tmp_path / "texts" / "skip.md").write_bytes(b"not matched")
    by_glob = data.open_corpus(str(tmp_path / "texts" / "**" / "*.txt"))
    by_folder = data.open_corpus(str(tmp_path / "texts"))
    assert "skip.md" not in json.dumps(by_glob.record())
    without_md = [f for f in by_folder.record()["files"] if not f["path"].endswith(".md")]
    assert by_glob.record()["files"] == without_md
    assert len(by_glob.record()["files"]) == sum(1 for c in files.values() if c)


def test_few_files_none_hashed_to_validation_validate_on_the_last(tmp_path):
    names = [n for n in (f"part{i}.txt" for i in range(40)) if not hashed_to_valid(n)][:3]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(random_bytes(300, i))
    corpus = data.open_corpus(str(tmp_path))
    assert corpus.valid.tobytes() == (tmp_path / sorted(names)[-1]).read_bytes()
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_bytes(random_bytes(1000))
    assert data.open_corpus(str(one)).record()["split"]["valid"] == "tail"


@pytest.mark.parametrize("make, expected", [
    (lambda t: t.mkdir() or t, "holds no files"),
    (lambda t: t.mkdir() or (t / "a").write_bytes(b"") or (t / "b").write_bytes(b"") or t,
     "holds only empty files"),
    (lambda t: str(t) + "/*.none", "matches no files"),
    (lambda t: "", "--data is empty"),
])
def test_nothing_to_train_on_is_one_error_line(tmp_path, capsys, make, expected):
    spec = make(tmp_path / "d")
    with pytest.raises(data.DataError, match=expected):
        data.open_corpus(str(spec))
    assert train.main(TINY + ["--data", str(spec), "--out-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


# ---- windows: only what they cover is read ----------------------------------------
def test_windows_from_parts_equal_windows_from_the_joined_bytes(tmp_path):
    """The same generator state gives the same windows from a file split into parts as
    from one array of the joined bytes, windows across part edges included."""
    content = random_bytes(5000, 3)
    cuts = [0, 1200, 1201, 3000, 5000]          # a one-byte part among them
    for i in range(4):
        (tmp_path / f"p{i}").write_bytes(content[cuts[i]:cuts[i + 1]])
    parts = Tokens([(DataFile(str(tmp_path / f"p{i}")), 0, os.path.getsize(tmp_path / f"p{i}"))
                    for i in range(4)])
    joined = np.frombuffer(content, dtype=np.uint8)
    for seed in range(5):
        a = data.sample_windows(parts, 64, 16, np.random.default_rng(seed))
        b = data.sample_windows(joined, 64, 16, np.random.default_rng(seed))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert a[0].dtype == np.int64 and a[0].shape == (64, 16) and a[1].shape == (64,)
        x, y = b
        assert all(content[s:s + 17] == bytes(list(x[i]) + [y[i]])
                   for i, s in enumerate(np.random.default_rng(seed).integers(0, 5000 - 16, 64)))


def test_only_the_parts_a_window_falls_in_are_read(tmp_path):
    """A removed file is noticed (DataError) only by a read that needs it: positions in
    the other files are still read from their maps."""
    for name in "ab":
        (tmp_path / name).write_bytes(random_bytes(1000, ord(name)))
    tokens = Tokens([(DataFile(str(tmp_path / n)), 0, 1000) for n in "ab"])
    os.remove(tmp_path / "b")
    assert tokens.take(np.arange(990, 1000)).tobytes() == (random_bytes(1000, ord("a"))[990:])
    with pytest.raises(data.DataError, match="was removed during the run"):
        tokens.take(np.arange(995, 1005))


def resident_pages(path) -> int:
    """How many of the file's pages are in the page cache (mincore on a fresh map)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size, page = os.path.getsize(path), mmap.PAGESIZE
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        vec = np.zeros((size + page - 1) // page, dtype=np.uint8)
        assert libc.mincore(view.ctypes.data, size, vec.ctypes.data) == 0, ctypes.get_errno()
        count = int((vec & 1).sum())
        del view
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore, sparse files")
def test_windows_read_their_pages_not_the_read_ahead_around_them(tmp_path):
    """64 windows from a 1 GB sparse file bring at most a few pages each into the page
    cache (the kernel's read-ahead around a page fault would bring megabytes each)."""
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(2**30)
    corpus = data.open_corpus(str(path))
    assert resident_pages(path) < 64          # nothing read yet but the file's edges
    data.sample_windows(corpus.train, 64, 16, np.random.default_rng(0))
    assert resident_pages(path) <= 64 * 2 + 64, resident_pages(path)


@pytest.mark.parametrize("change, expected", [
    (lambda p: os.truncate(p, 500), "changed size"),
    (lambda p: os.remove(p), "was removed"),
    (lambda p: os.replace(p.with_name("other"), p), "was replaced"),
])
def test_a_file_changed_under_the_map_is_a_data_error_not_sigbus(tmp_path, change, expected):
    path = tmp_path / "f"
    path.write_bytes(random_bytes(4000))
    (tmp_path / "other").write_bytes(random_bytes(4000, 9))
    corpus = data.open_corpus(str(path))
    change(path)
    with pytest.raises(data.DataError, match=expected):
        data.sample_windows(corpus.train, 4, 8, np.random.default_rng(0))


# ---- baselines --------------------------------------------------------------------
def test_baselines_of_a_large_corpus_come_from_a_bounded_sample_that_says_so(tmp_path):
    """Above ``max_bytes`` the counts come from evenly spaced blocks: on a stationary
    source (bytes drawn i.i.d. from a skewed distribution) the estimate agrees with
    the exact value; the note names the sampled splits; at or below, it is exact."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(256) * 0.3)
    content = rng.choice(256, size=3_000_000, p=probs).astype(np.uint8).tobytes()
    (tmp_path / "big").write_bytes(content)
    corpus = data.open_corpus(str(tmp_path / "big"))
    exact = data.count_model_losses(corpus.train, corpus.valid, max_bytes=len(content))
    sampled = data.count_model_losses(corpus.train, corpus.valid, max_bytes=2**18)
    assert sampled == pytest.approx(exact, rel=0.05) and sampled != exact
    assert data.baseline_note(corpus.train, corpus.valid, 2**18) == \
        "; estimated from 0.2 MiB samples of train (2.6 MiB) and valid (0.3 MiB)"
    assert data.baseline_note(corpus.train, corpus.valid, len(content)) == ""


def test_the_trainer_says_when_its_baselines_are_sampled(tmp_path, capsys, monkeypatch):
    (tmp_path / "c.txt").write_bytes(b"def f(x):\n    return x\n" * 8000)
    monkeypatch.setattr(data, "BASELINE_SAMPLE_BYTES", 2**17)
    assert train.main(TINY + ["--max-iters", "1", "--data", str(tmp_path / "c.txt"),
                              "--out-dir", str(tmp_path / "o")]) == 0
    assert "estimated from 0.1 MiB samples of train (0.2 MiB))" in capsys.readouterr().out


# ---- identity: what --resume compares ---------------------------------------------
def test_the_record_names_the_file_not_the_spelling(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_bytes(random_bytes(10_000))
    (tmp_path / "link.txt").symlink_to(path)
    monkeypatch.chdir(tmp_path)
    records = [data.open_corpus(s).record() for s in ("c.txt", str(path), "link.txt", "./c.txt")]
    assert all(r == records[0] for r in records)
    assert data.check_same_data(records[0], records[3]) is None
    assert records[0]["files"][0]["path"] == os.path.realpath(path)
    assert "could not be checked" in data.check_same_data(None, records[0])


@pytest.mark.parametrize("size", [3000, 9 * 2**20])
@pytest.mark.parametrize("where", ["start", "end"])
def test_a_changed_file_is_refused_on_resume(tmp_path, size, where):
    """Same size, one byte changed at either end (in a large file: outside the middle,
    which is only sampled): the fingerprint differs; another size: the size does."""
    path = tmp_path / "c.txt"
    with open(path, "wb") as f:
        f.truncate(size)
    before = data.open_corpus(str(path)).record()
    with open(path, "r+b") as f:
        f.seek(0 if where == "start" else size - 1)
        f.write(b"x")
    with pytest.raises(data.DataError, match="content differs"):
        data.check_same_data(before, data.open_corpus(str(path)).record())
    os.truncate(path, size - 1)
    with pytest.raises(data.DataError, match=f"{size:,} -> {size - 1:,} bytes"):
        data.check_same_data(before, data.open_corpus(str(path)).record())


def overwrite_in_place(path, offset, new_bytes, later_ns=10**9):
    """Same size, same inode; the modification time moved ``later_ns`` on (a filesystem
    whose clock ticks coarser than the edit still records a different time)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new_bytes)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + later_ns))


def test_a_same_size_edit_in_place_during_the_run_is_caught(tmp_path):
    """Guarantee (c), docs/guarantees.md: a file written during the run is refused at the next read,
    even at the same size and inode."""
    path = tmp_path / "f"
    path.write_bytes(random_bytes(4000))
    corpus = data.open_corpus(str(path))
    data.sample_windows(corpus.train, 4, 8, np.random.default_rng(0))
    overwrite_in_place(path, 100, b"edited")
    with pytest.raises(data.DataError, match="was written to"):
        data.sample_windows(corpus.train, 4, 8, np.random.default_rng(0))


def test_a_file_touched_since_the_run_started_is_refused_on_resume(tmp_path):
    """Content hashes are sampled; the modification time catches an edit they miss."""
    path = tmp_path / "c.txt"
    path.write_bytes(random_bytes(3 * 2**20))
    before = data.open_corpus(str(path)).record()
    overwrite_in_place(path, 2**20 + 7, b"x")     # between the sampled blocks
    after = data.open_corpus(str(path)).record()
    assert after["files"][0]["hash"] == before["files"][0]["hash"]
    with pytest.raises(data.DataError, match="modification time differs"):
        data.check_same_data(before, after)


def test_the_record_of_many_files_reads_a_bounded_sample(tmp_path, monkeypatch):
    """600 sparse files of 1 MiB: the content hashes read at most MAX_HASH_BLOCKS blocks
    of 64 KiB in all (not the 600 MiB), every file keeps its size and modification time,
    and a file's entry in meta.json is its path plus under 100 bytes."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(600):
        with open(folder / f"{i:04d}.bin", "wb") as f:
            f.truncate(2**20)
    read = []
    real = DataFile._read_spans
    monkeypatch.setattr(DataFile, "_read_spans",
                        lambda self, spans: read.extend(spans) or real(self, spans))
    record = data.open_corpus(str(folder)).record()
    assert sum(stop - start for start, stop in read) <= data.MAX_HASH_BLOCKS * 2**16
    hashed = [f for f in record["files"] if f["hash"] is not None]
    assert record["n_files"] == 600 and len(hashed) == len(record["files"]) == \
        data.MAX_RECORDED_FILES
    assert all(f["size"] == 2**20 and isinstance(f["mtime_ns"], int) for f in record["files"])
    for f in record["files"]:
        assert len(json.dumps(f)) - len(f["path"]) < 100
    recorded = {f["path"] for f in record["files"]}
    unrecorded = next(str(p) for p in sorted(folder.iterdir()) if str(p) not in recorded)
    overwrite_in_place(unrecorded, 0, b"edited")       # seen by the digest of the times
    with pytest.raises(data.DataError, match="600 data files changed .*modification"):
        data.check_same_data(record, data.open_corpus(str(folder)).record())


@pytest.mark.parametrize("damage", [
    lambda r: r["files"][0].update(size="big"),
    lambda r: r["files"][0].update(size=None),
    lambda r: r["files"][0].update(path=7),
    lambda r: r["files"][0].update(hash=12),
    lambda r: r["files"][0].update(mtime_ns="now"),
    lambda r: r.update(files={"a": 1}),
    lambda r: r["files"].append("x"),
], ids=["size-str", "size-none", "path-int", "hash-int", "mtime-str", "files-dict", "entry-str"])
def test_a_damaged_data_record_is_one_data_error(tmp_path, damage):
    path = tmp_path / "c.txt"
    path.write_bytes(random_bytes(3000))
    current = data.open_corpus(str(path)).record()
    saved = json.loads(json.dumps(current))
    damage(saved)
    with pytest.raises(data.DataError, match="data record is damaged"):
        data.check_same_data(saved, current)
    with pytest.raises(data.DataError, match="data record is damaged"):
        data.check_same_data(["not", "a", "dict"], current)


def test_another_file_or_corpus_is_refused(tmp_path):
    (tmp_path / "a").write_bytes(random_bytes(3000))
    (tmp_path / "b").write_bytes(random_bytes(3000))
    a = data.open_corpus(str(tmp_path / "a")).record()
    with pytest.raises(data.DataError, match="this run was trained on .*/a, not .*/b"):
        data.check_same_data(a, data.open_corpus(str(tmp_path / "b")).record())
    with pytest.raises(data.DataError, match="damaged"):
        data.check_same_data({"files": [{"size": 1}]}, a)


# ---- the trainer: --data, --resume, faults --------------------------------------------
def run_train(argv, capsys):
    code = train.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err, expected):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def meta_of(out_dir):
    return load_npz(str(out_dir / "ckpt.npz"))[1]


@pytest.fixture
def corpus_text():
    return b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n" * 80


def test_resume_finds_the_recorded_file_from_anywhere_and_refuses_a_namesake(
        tmp_path, capsys, monkeypatch, corpus_text):
    """Trained on a relative path: resumed from another folder without --data it reopens
    the recorded absolute path; given the same file by symlink it agrees; a file of the
    same relative name there is refused; the record survives a resume of a resume."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "c.txt").write_bytes(corpus_text)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.txt").write_bytes(corpus_text[::-1])
    (tmp_path / "elsewhere" / "link.txt").symlink_to(tmp_path / "run" / "c.txt")
    out = tmp_path / "o"
    monkeypatch.chdir(tmp_path / "run")
    assert run_train(TINY + ["--max-iters", "2", "--data", "c.txt", "--out-dir", out], capsys)[0] == 0
    record = meta_of(out)["data"]
    assert record["files"][0]["path"] == os.path.realpath(tmp_path / "run" / "c.txt")
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_train(["--resume", "--out-dir", out, "--max-iters", "4",
                              "--data", "c.txt"], capsys)
    assert code == 1
    real = os.path.realpath(tmp_path)
    assert_one_error_line(err, f"trained on {real}/run/c.txt, not {real}/elsewhere/c.txt")
    assert meta_of(out)["step"] == 2
    assert run_train(["--resume", "--out-dir", out, "--max-iters", "4"], capsys)[0] == 0
    code, _, err = run_train(["--resume", "--out-dir", out, "--max-iters", "6",
                              "--data", "link.txt"], capsys)
    assert code == 0 and err == ""
    assert meta_of(out)["step"] == 6 and meta_of(out)["data"] == record


@pytest.mark.parametrize("change, expected", [
    (lambda p: p.write_bytes(p.read_bytes()[:-40] + b"#" * 40), "content differs"),
    (lambda p: os.truncate(p, 3000), "-> 3,000 bytes"),
    (lambda p: os.remove(p), "does not exist; restore it, or start a new run in another"),
])
def test_a_data_file_changed_truncated_or_removed_before_resume_is_refused(
        tmp_path, capsys, corpus_text, change, expected):
    path, out = tmp_path / "c.txt", tmp_path / "o"
    path.write_bytes(corpus_text)
    assert run_train(TINY + ["--max-iters", "2", "--data", path, "--out-dir", out], capsys)[0] == 0
    saved = (out / "ckpt.npz").read_bytes()
    change(path)
    code, _, err = run_train(["--resume", "--out-dir", out, "--max-iters", "4"], capsys)
    assert code == 1
    assert_one_error_line(err, expected)
    assert "default corpus" not in err      # the path came from the checkpoint, not --data
    assert (out / "ckpt.npz").read_bytes() == saved


@pytest.mark.parametrize("change, expected", [
    (lambda p: os.truncate(p, 1000), "changed size"),
    (lambda p: os.remove(p), "was removed during the run"),
])
def test_a_data_file_truncated_or_removed_during_the_run_is_one_line(
        tmp_path, capsys, monkeypatch, corpus_text, change, expected):
    """After step 3 the file changes: the next batch is refused in one line and the
    step-2 checkpoint is left as it was, and loads."""
    path, out = tmp_path / "c.txt", tmp_path / "o"
    path.write_bytes(corpus_text)
    real_step = TrainState.train_step

    def step_then_change(self, x, y, lr):
        metrics = real_step(self, x, y, lr)
        if self.step == 3:
            change(path)
        return metrics

    monkeypatch.setattr(TrainState, "train_step", step_then_change)
    code, _, err = run_train(TINY + ["--max-iters", "8", "--data", path, "--out-dir", out], capsys)
    assert code == 1
    assert_one_error_line(err, expected)
    assert "the last checkpoint is intact" in err
    assert meta_of(out)["step"] == 2


def test_an_old_checkpoint_without_a_data_record_resumes_with_a_note(tmp_path, capsys, corpus_text):
    path, out = tmp_path / "c.txt", tmp_path / "o"
    path.write_bytes(corpus_text)
    assert run_train(TINY + ["--max-iters", "2", "--data", path, "--out-dir", out], capsys)[0] == 0
    arrays, meta = load_npz(str(out / "ckpt.npz"))
    del meta["data"]
    save_npz_atomic(str(out / "ckpt.npz"), arrays, meta)
    code, _, err = run_train(["--resume", "--out-dir", out, "--max-iters", "4"], capsys)
    assert code == 0
    assert err.strip().splitlines() == [
        "note: the checkpoint has no data record (saved by an older version, or through the "
        "library without one), so the data could not be checked against the run's"]
    assert meta_of(out)["data"] == data.open_corpus(str(path)).record()   # recorded from now on


def test_a_folder_trains_and_its_files_are_recorded(tmp_path, capsys):
    text_tree(tmp_path / "texts", n=12)
    out = tmp_path / "o"
    code, stdout, _ = run_train(TINY + ["--max-iters", "2", "--data", tmp_path / "texts",
                                        "--out-dir", out], capsys)
    assert code == 0 and "corpus folder" in stdout
    assert meta_of(out)["data"] == data.open_corpus(str(tmp_path / "texts")).record()
    assert len(meta_of(out)["data"]["files"]) == 11          # the empty file is left out
    (tmp_path / "texts" / "new.txt").write_bytes(b"added after the start" * 10)
    code, _, err = run_train(["--resume", "--out-dir", out, "--max-iters", "4"], capsys)
    assert code == 1
    assert_one_error_line(err, "and 10 more, not")


@pytest.mark.parametrize("spec, expected", [
    (".", "is inside the --data folder"),
    ("**", "the --data glob '{root}/**' matches 'ckpt.npz'"),
    ("*/*", "the --data glob '{root}/*/*' matches 'ckpt.npz'"),
    ("o/[dm]*", "the --data glob '{root}/o/[dm]*' matches 'metrics.jsonl'"),
    ("o/.*", "the --data glob '{root}/o/.*' matches '.lock'"),
    ("o/.t*", "the --data glob '{root}/o/.t*' matches '.tmp-"),
    ("l*/*", "the --data glob '{root}/l*/*' matches 'ckpt.npz'"),      # through link -> o
    ("l*/**", "the --data glob '{root}/l*/**' matches 'ckpt.npz'"),
])
def test_a_data_folder_or_glob_holding_the_out_dir_is_refused(
        tmp_path, capsys, monkeypatch, corpus_text, spec, expected):
    """--data . --out-dir out: the checkpoint and metrics would become data that changes;
    a glob is refused when it matches a name the trainer writes in the out-dir.
    A single data file inside the out-dir is fine (the trainer never writes it)."""
    (tmp_path / "c.txt").write_bytes(corpus_text)
    (tmp_path / "o").mkdir()
    os.symlink("o", tmp_path / "link")
    for name in ("d.txt", ".d.txt", ".t.txt"):
        (tmp_path / "o" / name).write_bytes(corpus_text)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_train(TINY + ["--max-iters", "2", "--data", spec, "--out-dir", "o"],
                             capsys)
    assert code == 1
    assert_one_error_line(err, expected.format(root=os.path.realpath(tmp_path)))
    assert not (tmp_path / "o" / "ckpt.npz").exists()
    (tmp_path / "o" / "c.txt").write_bytes(corpus_text)
    assert run_train(TINY + ["--max-iters", "2", "--data", "o/c.txt", "--out-dir", "o"],
                     capsys)[0] == 0


@pytest.mark.parametrize("names", [["c.txt"], ["a.txt", "b.txt", "c.txt"]])
def test_a_glob_of_texts_trains_into_the_default_out_dir_beside_them(
        tmp_path, capsys, monkeypatch, corpus_text, names):
    """``--data '*.txt'`` in a folder of texts, --out-dir left at its default 'out'
    (inside the glob's folder, but nothing the trainer writes there is a .txt): it trains
    and resumes, with one matched file as with several."""
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(corpus_text[i:])
    monkeypatch.chdir(tmp_path)
    assert run_train(TINY + ["--max-iters", "2", "--data", "*.txt"], capsys)[0] == 0
    assert run_train(["--resume", "--max-iters", "4"], capsys)[0] == 0
    assert meta_of(tmp_path / "out")["step"] == 4


@pytest.mark.parametrize("pattern", ["*", "**", "**/*", "*/*.npz", "o/.*", "**/.*", "o/*.*",
                                     "o/[.c]*", "?/ckpt.np?", "**/.lock", "o/**", ".*/*"])
def test_glob_matches_lists_what_glob_lists(tmp_path, pattern):
    """``data.glob_matches`` against ``glob.glob`` itself, on files that exist."""
    for name in ("o/ckpt.npz", "o/.lock", "o/sub/x.npz", ".h/ckpt.npz", "top.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    root = os.path.realpath(tmp_path)
    listed = {os.path.relpath(p, root) for p in
              glob.glob(os.path.join(root, pattern), recursive=True)}
    for name in ("o/ckpt.npz", "o/.lock", "o/sub/x.npz", ".h/ckpt.npz", "top.txt"):
        assert data.glob_matches(os.path.join(root, pattern), os.path.join(root, name)) == \
            (name in listed), name


def test_sample_every_prints_at_every_nth_evaluation(tmp_path, capsys, corpus_text):
    path = tmp_path / "c.txt"
    path.write_bytes(corpus_text)
    code, out, _ = run_train(TINY + ["--max-iters", "8", "--sample-every", "2", "--data", path,
                                     "--out-dir", tmp_path / "o"], capsys)
    samples = [line for line in out.splitlines() if line.startswith("sample at step")]
    assert code == 0 and [s.split(":")[0] for s in samples] == ["sample at step 4",
                                                                  "sample at step 8"]
    prompt = corpus_text[int(len(corpus_text) * 0.9):][:train.SAMPLE_PROMPT_BYTES]
    assert all(s.split(": ", 1)[1][1:].startswith(repr(prompt.decode())[1:-1]) for s in samples)
    code, out, _ = run_train(TINY + ["--max-iters", "4", "--data", path,
                                     "--out-dir", tmp_path / "p"], capsys)
    assert code == 0 and "sample at step" not in out
    code, _, err = run_train(TINY + ["--sample-every", "-1", "--data", path,
                                     "--out-dir", tmp_path / "q"], capsys)
    assert code == 1
    assert_one_error_line(err, "--sample-every must be 0 or more")


def test_metrics_carry_training_seconds_that_continue_on_resume(tmp_path, capsys, corpus_text):
    path, out = tmp_path / "c.txt", tmp_path / "o"
    path.write_bytes(corpus_text)
    assert run_train(TINY + ["--max-iters", "4", "--data", path, "--out-dir", out], capsys)[0] == 0
    assert run_train(["--resume", "--out-dir", out, "--max-iters", "8"], capsys)[0] == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time_s"] for r in records]
    assert len(records) == 8 + 4 and times == sorted(times) and times[0] > 0


# ---- resident memory on a file far larger than the run needs -----------------------
RSS_PROBE = """
import resource, sys
from brainlike_np import train
code = train.main(sys.argv[1:])
print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "code", code)
"""


def peak_rss_mib(tmp_path, name, data_flags):
    args = TINY + ["--max-iters", "5", "--out-dir", str(tmp_path / name), *data_flags]
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "BRAINLIKE_BACKEND": "numpy"})
    words = proc.stdout.split()
    assert proc.returncode == 0 and words[-1] == "0", proc.stderr
    return int(words[words.index("maxrss_kib") + 1]) / 1024, proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB, sparse files")
def test_a_sparse_50_gb_file_trains_within_200_mb_of_the_default_corpus(tmp_path):
    """A 50 GB sparse file (no disk space): the peak resident set of a short run stays
    within 200 MB of the same run on the default corpus (itself read into memory)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(50 * 10**9)
    small_rss, _ = peak_rss_mib(tmp_path, "small", [])
    big_rss, out = peak_rss_mib(tmp_path, "big", ["--data", str(big)])
    assert "50,000,000,000" not in out and "45,000,000,000 train" in out
    assert "estimated from 100.0 MiB samples of train (41.9 GiB) and valid (4.7 GiB)" in out
    assert big_rss < small_rss + 200, (big_rss, small_rss)


@pytest.mark.parametrize("path, words", [
    ("/sys/kernel/mm/transparent_hugepage/enabled", "reports 4,096 bytes but holds fewer"),
    ("/proc/self/status", "reports 0 bytes but holds some"),
])
def test_a_file_whose_size_is_not_its_content_is_refused_up_front(path, words):
    """procfs and sysfs files: said so before any run, not 'was truncated during the run'."""
    if not os.path.exists(path):
        pytest.skip(f"{path} is not on this system")
    with pytest.raises(data.DataError) as err:
        data.open_corpus(path)
    assert words in str(err.value) and "copy it to a regular file" in str(err.value)
    assert "during the run" not in str(err.value)


def test_a_data_spec_longer_than_any_path_is_refused(tmp_path):
    with pytest.raises(data.DataError, match="longer than any path"):
        data.open_corpus(str(tmp_path) + "/[ab]" * data.MAX_PATH_BYTES)
