"""The train/validation splits: the documented sizes, no byte on both sides, the same
on every call; the standard-library corpus keeps each file wholly on one side."""

import sysconfig
import zlib

import numpy as np
import pytest

from brainlike_np import data


@pytest.mark.parametrize("n_bytes", [7, 10, 1000, 1003, 4097])
def test_text_file_split_is_the_last_tenth_and_reassembles_the_file(tmp_path, n_bytes):
    """Validation is the last 10% of the bytes (to within one byte), training is the rest
    before it: together they are the file, each byte on exactly one side, the same on
    every call."""
    content = np.random.default_rng(n_bytes).integers(0, 256, size=n_bytes, dtype=np.uint8)
    path = tmp_path / "corpus.txt"
    path.write_bytes(content.tobytes())
    corpus = data.load_text_file(str(path))
    train, valid = corpus.train.tobytes(), corpus.valid.tobytes()
    assert len(train) + len(valid) == n_bytes
    assert abs(len(valid) - n_bytes / 10) < 1
    assert train + valid == content.tobytes()
    again = data.load_text_file(str(path))
    assert (again.train.tobytes(), again.valid.tobytes()) == (train, valid)


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


def test_stdlib_split_keeps_each_file_on_one_side_by_its_path_hash(tmp_path, monkeypatch):
    """Each counted file goes wholly to validation when the CRC-32 of its relative path is
    0 mod 10, else wholly to training; each split is its files, sorted by path and joined
    by newlines; skipped folders and non-.py files are left out; the same on every call."""
    files = stdlib_tree(tmp_path)
    use_as_stdlib(monkeypatch, tmp_path)
    in_valid = {rel: zlib.crc32(rel.encode()) % 10 == 0 for rel in files}
    assert 0 < sum(in_valid.values()) < len(files)      # the tree exercises both sides

    corpus = data.load_stdlib_corpus()
    train, valid = corpus.train.tobytes(), corpus.valid.tobytes()
    for rel, content in files.items():
        assert (content in valid, content in train) == (in_valid[rel], not in_valid[rel]), rel
    expected = {side: b"\n".join(files[rel] for rel in sorted(files, key=lambda r: tmp_path / r)
                                 if in_valid[rel] == side) for side in (True, False)}
    assert (valid, train) == (expected[True], expected[False])
    again = data.load_stdlib_corpus()
    assert (again.train.tobytes(), again.valid.tobytes()) == (train, valid)


def test_stdlib_with_an_empty_split_is_an_error(tmp_path, monkeypatch):
    """Sources that would leave one split empty (here one file) raise DataError rather
    than give a corpus without validation or training bytes."""
    (tmp_path / "only.py").write_bytes(b"x = 1\n")
    use_as_stdlib(monkeypatch, tmp_path)
    with pytest.raises(data.DataError, match="no Python sources"):
        data.load_stdlib_corpus()
