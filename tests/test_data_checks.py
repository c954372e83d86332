"""What the mutation run of ``data.py`` found untested by test_data.py: a batch whose
targets outnumber its windows or whose windows are 3-d, a FIFO swapped in after the
regular-file check (opened without blocking, then refused), the byte check of a small
vocabulary at its edge, a split one byte too short, the count-model baselines against a
plain-Python count, nats_to_bits, random_batch's default seed, and the reason an unreadable
file gives. The second run (issue 33) added each check at its edges (an odd context, ids
0 and above the vocabulary, a path of PATH_MAX bytes, a file grown after its size was
read) and the default corpus read-only;
the data record: its digests as saved, the hash budget of data.md, damaged records named,
a count, size or listing that differs either way, the largest record against its bound;
the baselines: the 100 MiB sample and its note, the pair counts on either side of the
dense table, in bounded memory and merges."""

import errno
import glob
import json
import math
import os
import signal
import stat
import sysconfig
import tracemalloc

import numpy as np
import pytest

from brainlike_np import data
from brainlike_np.backends import get_backend
from brainlike_np.datafiles import Tokens
from brainlike_np.models import get_preset
from brainlike_np.train_state import TrainState


@pytest.mark.parametrize("y_shape", [(4,), (2,), (3, 1), ()])
def test_a_batch_needs_one_target_per_window(y_shape):
    x = np.zeros((3, 5), dtype=np.int64)                                   # [B, T]
    with pytest.raises(ValueError, match=r"x \[B, T\] and y \[B\] with B > 0"):
        data.check_batch(x, np.zeros(y_shape, dtype=np.int64), 256)
    with pytest.raises(ValueError, match=r"x \[B, T\] and y \[B\] with B > 0"):
        data.check_batch(x[:, :, None], np.zeros(3, dtype=np.int64), 256)
    data.check_batch(x, np.zeros(3, dtype=np.int64), 256)


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """``os.stat`` says regular file (the file that was there), a FIFO with no writer is
    there at the open: opened non-blocking, then refused by its ``fstat``; a blocking
    open would wait for a writer forever (the alarm fails the test instead)."""
    regular, fifo = tmp_path / "file.txt", tmp_path / "pipe"
    regular.write_bytes(b"text")
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(data.os, "stat", lambda p, *a, **k: real_stat(regular)
                        if str(p) == str(fifo) else real_stat(p, *a, **k))

    def blocked(*_):
        raise AssertionError("the open blocked on the FIFO")
    old = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(5)
    try:
        with pytest.raises(data.NotRegularFileError, match="a FIFO"):
            data.open_regular_file(str(fifo))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert stat.S_ISFIFO(real_stat(fifo).st_mode)


@pytest.mark.parametrize("vocab_size, refused", [(10, True), (121, True), (122, False),
                                                 (256, False)])
def test_a_small_vocabulary_refuses_a_byte_it_lacks(vocab_size, refused):
    """The highest byte here is 'y' (121): a vocabulary of 121 lacks it, one of 122 has it."""
    tokens = np.frombuffer(b"every day, x and y" * 8, dtype=np.uint8)
    corpus = data.Corpus("c", Tokens.of(tokens[:100]), Tokens.of(tokens[100:]))
    if refused:
        with pytest.raises(data.DataError, match=f"holds byte 121, but the model's vocab_size "
                                                 f"is {vocab_size}"):
            corpus.check_fits(8, vocab_size)
    else:
        corpus.check_fits(8, vocab_size)


def plain_count_losses(train: bytes, valid: bytes) -> dict:
    """Add-one smoothed unigram and bigram models of ``train``, scored on ``valid``
    (nats per byte), by loops over the bytes."""
    uni = {b: train.count(bytes([b])) for b in range(256)}
    pairs = {}
    for a, b in zip(train, train[1:]):
        pairs[a, b] = pairs.get((a, b), 0) + 1
    after = {a: sum(n for (first, _), n in pairs.items() if first == a) for a in range(256)}
    unigram = -sum(math.log((uni[b] + 1) / (len(train) + 256)) for b in valid) / len(valid)
    bigram = -sum(math.log((pairs.get((a, b), 0) + 1) / (after[a] + 256))
                  for a, b in zip(valid, valid[1:])) / (len(valid) - 1)
    return {"unigram": unigram, "bigram": bigram}


def test_count_model_baselines_match_a_plain_count():
    train, valid = b"abracadabra, a cadabra bar", b"a bar, cab abracad"
    losses = data.count_model_losses(np.frombuffer(train, np.uint8),
                                     np.frombuffer(valid, np.uint8))
    expected = plain_count_losses(train, valid)
    assert losses == pytest.approx(expected, rel=1e-12)
    assert 0 < losses["unigram"] < math.log(256)          # better than uniform, not perfect


@pytest.mark.parametrize("train", [b"a", b""])
def test_baselines_with_no_training_pair_are_uniform_bigrams(train):
    """A train split of one byte (or none) has no pairs: the add-one bigram model is
    uniform, log(256) nats, as the plain count says."""
    valid = b"a bar, cab"
    losses = data.count_model_losses(np.frombuffer(train, np.uint8), np.frombuffer(valid, np.uint8))
    assert losses["bigram"] == pytest.approx(math.log(256), rel=1e-12)
    if train:
        assert losses == pytest.approx(plain_count_losses(train, valid), rel=1e-12)


def test_random_batch_defaults_to_seed_0():
    x, y = data.random_batch(4, 7)
    x0, y0 = data.random_batch(4, 7, vocab_size=256, seed=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert x.shape == (4, 7) and y.shape == (4,) and 0 <= x.min() and x.max() < 256


@pytest.mark.parametrize("n_valid, refused", [(3, True), (9, True), (10, False)])
def test_a_split_needs_more_than_a_window_and_its_target(n_valid, refused):
    """Windows of 8 bytes plus a target: a split of 9 bytes holds one window only, the
    check asks for more (``n > context + 1``); 10 bytes hold two."""
    tokens = np.frombuffer(b"0123456789abcdef" * 4, dtype=np.uint8)
    corpus = data.Corpus("c", Tokens.of(tokens[:40]), Tokens.of(tokens[40:40 + n_valid]))
    if refused:
        with pytest.raises(data.DataError, match=f"the valid split has {n_valid} bytes, too "
                                                 "short for windows of 8 bytes"):
            corpus.check_fits(8)
    else:
        corpus.check_fits(8)


def test_nats_to_bits():
    assert data.nats_to_bits(math.log(2.0)) == pytest.approx(1.0, rel=1e-15)
    assert data.nats_to_bits(3.0) == pytest.approx(3.0 / 0.6931471805599453, rel=1e-15)


def test_an_unreadable_data_file_is_named_with_the_systems_reason(tmp_path, monkeypatch):
    """As root no file is unreadable, so the open fails by hand: the message carries the
    error's own words, not its repr."""
    path = tmp_path / "text.txt"
    path.write_bytes(b"some text")

    def denied(*_):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(data, "DataFile", denied)
    with pytest.raises(data.DataError, match=rf"^data file '{path}' cannot be read "
                                             r"\(Permission denied\); check"):
        data.open_corpus(str(path))


# ---- the second mutation run (issue 33): checks at their edges ----------------------------
def test_a_byte_corpus_needs_a_token_for_each_of_the_256_byte_values():
    every_byte = np.arange(1 << 8, dtype=np.uint8)
    corpus = data.Corpus("c", Tokens.of(np.tile(every_byte, 3)), Tokens.of(every_byte))
    assert corpus.vocab_size == len(set(bytes(range(256)))) and corpus.unit == "byte"
    corpus.check_fits(8, corpus.vocab_size)
    corpus.check_fits(8)                    # the default vocabulary: the bytes'
    with pytest.raises(data.DataError, match="holds byte 255"):
        corpus.check_fits(8, corpus.vocab_size - 1)


@pytest.mark.parametrize("context, n_valid, refused", [(9, 10, True), (9, 11, False),
                                                       (13, 14, True), (13, 15, False)])
def test_an_odd_context_needs_more_than_a_window_and_its_target(context, n_valid, refused):
    """As the even context above: ``context + 1`` tokens hold one window and its target,
    the check asks for more."""
    tokens = np.frombuffer(b"0123456789abcdef" * 4, dtype=np.uint8)
    corpus = data.Corpus("c", Tokens.of(tokens[:40]), Tokens.of(tokens[40:40 + n_valid]))
    if refused:
        with pytest.raises(data.DataError, match=f"the valid split has {n_valid} bytes"):
            corpus.check_fits(context)
    else:
        corpus.check_fits(context)


def test_random_batch_draws_every_token_of_the_vocabulary():
    x, y = data.random_batch(600, 5, vocab_size=3, seed=4)
    for drawn in (x.ravel(), y):
        assert sorted(set(drawn.tolist())) == [0, 1, 2]


@pytest.mark.parametrize("tokens, vocab, refused", [
    ([0, 1, 2, 0], 3, False), ([2, 0, 2, 1], 3, False), ([1, 2, -1, 2], 3, True),
    ([0, 1, 3, 2], 3, True), ([0, 9, 1, 2], 3, True)])
def test_as_tokens_takes_exactly_the_ids_from_0_below_the_vocabulary(tokens, vocab, refused):
    if refused:
        with pytest.raises(ValueError, match=r"tokens must be in \[0, 3\)"):
            data.as_tokens(np.array(tokens), 2, vocab)
    else:
        assert data.as_tokens(np.array(tokens), 2, vocab).first(4) == tokens


def test_data_longer_than_any_path_is_refused_by_its_length(tmp_path, monkeypatch):
    """PATH_MAX (with its NUL): a path of that many bytes cannot be opened, one byte
    shorter can."""
    monkeypatch.chdir(tmp_path)
    path_max = os.pathconf(str(tmp_path), "PC_PATH_MAX")
    spec = lambda n: ("d" * 200 + "/") * (n // 201) + "x" * (n % 201)
    with pytest.raises(OSError) as too_long:
        os.stat(spec(path_max))
    assert too_long.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FileNotFoundError):
        os.stat(spec(path_max - 1))
    with pytest.raises(data.DataError, match=f"--data is {path_max:,} bytes long, longer "
                                             f"than any path \\({path_max - 1}\\)"):
        data.open_corpus(spec(path_max))
    with pytest.raises(data.DataError, match="does not exist"):
        data.open_corpus(spec(path_max - 1))


def test_an_empty_file_is_refused_when_opened(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(data.DataError, match=f"data file '{tmp_path / 'empty.txt'}' is empty"):
        data.open_corpus(str(tmp_path / "empty.txt"))


@pytest.mark.parametrize("reported, refused", [(-5, False), (-1, False), (0, False), (1, True)])
def test_the_size_check_asks_for_the_last_byte_by_the_size(tmp_path, monkeypatch, reported,
                                                           refused):
    """A file must hold the bytes its size says (its fstat is faked here, ``reported``
    bytes off): one that grew since (reports fewer) passes, one a byte short of its size
    (a truncation since, or a procfs file) is refused."""
    path = tmp_path / "growing.txt"
    path.write_bytes(bytes(range(97, 123)) * 40)
    real_fstat = os.fstat

    def faked(fd):
        st = real_fstat(fd)
        return os.stat_result(tuple(st[:6]) + (st.st_size + reported,) + tuple(st[7:10]))
    monkeypatch.setattr(data.os, "fstat", faked)
    if refused:
        with pytest.raises(data.DataError, match=f"reports {1040 + reported:,} bytes but "
                                                 "holds fewer"):
            data.open_corpus(str(path))
    else:
        corpus = data.open_corpus(str(path))
        assert len(corpus.train) + len(corpus.valid) == 26 * 40


def test_a_one_byte_file_is_a_file_of_the_corpus(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"!")
    (tmp_path / "b.txt").write_bytes(b"some more text" * 9)
    corpus = data.open_corpus(str(tmp_path))
    assert corpus.record()["n_files"] == 2
    assert b"!" in corpus.train.tobytes() + corpus.valid.tobytes()


@pytest.mark.parametrize("pattern", ["*", "*/*", "o/*", "o/*/*", "**/*", "o/**", "*/sub", "?"])
def test_glob_matches_lists_the_folders_glob_lists(tmp_path, pattern):
    """As test_data.py's check against ``glob.glob``, for folders: a pattern's parts left
    over when the path's names end (``o/*`` for ``o``) match nothing but ``**``."""
    for name in ("o/ckpt.npz", "o/sub/x.npz", ".h/ckpt.npz", "top.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    root = os.path.realpath(tmp_path)
    listed = {os.path.relpath(p, root) for p in
              glob.glob(os.path.join(root, pattern), recursive=True)}
    for name in ("o", "o/sub", ".h", "o/ckpt.npz", "o/sub/x.npz", "top.txt"):
        assert data.glob_matches(os.path.join(root, pattern), os.path.join(root, name)) == \
            (name in listed), name


@pytest.mark.parametrize("name, bad", [("x", [[0, 1, 256]]), ("y", [300])])
def test_a_batch_with_an_id_above_the_vocabulary_alone_is_refused(name, bad):
    """No id below 0, one at or above vocab_size: refused as well."""
    x, y = np.zeros((1, 3), dtype=np.int64), np.zeros(1, dtype=np.int64)
    batch = {"x": x, "y": y, name: np.array(bad)}
    with pytest.raises(ValueError, match=rf"{name} holds tokens outside \[0, 256\)"):
        data.check_batch(batch["x"], batch["y"], 256)


def test_the_default_corpus_cannot_be_written_through_its_arrays(tmp_path, monkeypatch):
    """The default corpus lives in memory (a fake standard library of 30 files here):
    its splits' arrays are read-only, as a mapped file's are."""
    for i in range(30):
        (tmp_path / f"mod{i}.py").write_bytes(f"x = {i}\n".encode() * 7)
    paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**paths, "stdlib": str(tmp_path)})
    corpus = data.load_stdlib_corpus()
    for split in (corpus.train, corpus.valid):
        array = split.parts[0][0]
        before = split.tobytes()
        with pytest.raises(ValueError, match="read-only"):
            array[0] = ord("#")
        assert split.tobytes() == before


# ---- the data record: what it keeps, its checks, its bound ---------------------------------
def full_record(paths, sizes=None, n_valid=1):
    """A data record with one entry per file, as older versions saved it (the input of
    ``bounded_record``); no content hashes (``hash`` null, as for files left unhashed)."""
    sizes = sizes or [1000 + i for i in range(len(paths))]
    return {"source": "/d", "split": {"valid": "files by path hash",
                                      "valid_files": list(range(n_valid))},
            "train_bytes": 10, "valid_bytes": 10,
            "files": [{"path": p, "size": s, "mtime_ns": 1_700_000_000_000_000_000 + i,
                       "hash": None} for i, (p, s) in enumerate(zip(paths, sizes))]}


def in_memory_corpus():
    return data.Corpus("c", Tokens.of(np.frombuffer(b"the train split, 29 bytes....", np.uint8)),
                       Tokens.of(np.frombuffer(b"its valid split", np.uint8)))


# Records as this version saves them in a checkpoint (meta.json's "data"): kept here so
# that a change of their digests (which would refuse every checkpoint saved before it) fails.
SAVED_IN_MEMORY = {"source": None, "split": {}, "train_bytes": 29, "valid_bytes": 15,
                   "fingerprint": "22cafdf3d9708c2480808cbf7a701ea0", "n_files": 0, "files": [],
                   "listing": "cae66941d9efbd404e4d88758ea67670",
                   "times": "cae66941d9efbd404e4d88758ea67670"}
SAVED_FILES_FULL = {
    "source": "/d", "split": {"valid": "files by path hash", "valid_files": [2]},
    "train_bytes": 2100, "valid_bytes": 900,
    "files": [{"path": "/d/a.txt", "size": 1000, "mtime_ns": 1700000000000000001,
               "hash": "0123456789abcdef"},
              {"path": "/d/b.txt", "size": 1100, "mtime_ns": 1700000000000000002,
               "hash": "fedcba9876543210"},
              {"path": "/d/c.txt", "size": 900, "mtime_ns": 1700000000000000003,
               "hash": "00112233aabbccdd"}]}
SAVED_FILES = {**SAVED_FILES_FULL, "n_files": 3, "listing": "12ffef852d61b6467a4be336f977792a",
               "times": "829a95a8af1b1be8fc54bcacea2c0193"}


def test_records_saved_by_this_version_still_match_their_data():
    assert data.check_same_data(SAVED_IN_MEMORY, in_memory_corpus().record()) is None
    assert data.check_same_data(SAVED_FILES, data.bounded_record(SAVED_FILES_FULL)) is None
    changed = in_memory_corpus()
    changed.valid = Tokens.of(np.frombuffer(b"its valid split"[::-1], np.uint8))
    with pytest.raises(data.DataError, match="fingerprint"):
        data.check_same_data(in_memory_corpus().record(), changed.record())


def test_the_digest_ranks_compare_is_of_content_not_of_paths_or_times(tmp_path):
    """Two copies of the same files (other paths, other times) have one digest; a byte
    changed in one file (same size) changes it."""
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        for i in range(3):
            (tmp_path / copy / f"f{i}.txt").write_bytes(bytes(range(i, i + 200)) * 3)
    os.utime(tmp_path / "b" / "f1.txt", ns=(10**18, 10**18))
    digest = lambda folder: data.open_corpus(str(tmp_path / folder)).digest()
    assert digest("a") == digest("b")
    content = bytearray((tmp_path / "b" / "f1.txt").read_bytes())
    content[333] ^= 1
    (tmp_path / "b" / "f1.txt").write_bytes(bytes(content))
    assert digest("a") != digest("b")


def test_the_hash_budget_is_the_one_data_md_describes():
    """docs/data.md: 18 blocks a file for up to 28 files, 512 / files beyond, down to 2 a
    file from 171 files on, and from 257 files on only 256 files, evenly spaced (the first
    and the last among them), are hashed; 512 blocks in all at most."""
    for n in range(1, 700):
        budget = data.hash_budget(n)
        blocks = [b for b in budget if b is not None]
        assert len(budget) == n and sum(blocks) <= 512 and len(set(blocks)) == 1, n
        if n <= 28:
            assert blocks == [18] * n, n
        elif n < 171:
            assert blocks == [512 // n] * n and 2 < blocks[0] < 18, n
        else:
            assert blocks == [2] * min(n, 256), n
        if n > 256:
            assert budget[0] == budget[-1] == 2
            gaps = np.diff([i for i, b in enumerate(budget) if b is not None])
            assert gaps.max() - gaps.min() <= 1, n


def test_a_record_without_files_passes_the_type_checks():
    """An in-memory corpus records n_files 0: its record is whole, not damaged."""
    record = in_memory_corpus().record()
    assert record["n_files"] == 0 and data.check_same_data(record, record) is None


@pytest.mark.parametrize("change, named", [
    (lambda r: {**r, "n_files": -1}, "n_files -1, listing or times"),
    (lambda r: {**r, "files": r["files"][:2]}, "2 file entries for 3 files"),
    (lambda r: {**r, "tokens": {"dtype": "uint16", "vocab_size": None}}, "tokens"),
    (lambda r: {**r, "tokens": {"dtype": "uint16", "vocab_size": 0, "tokenizer": None}},
     "tokens"),
    (lambda r: {**r, "tokens": {"dtype": "uint16", "vocab_size": None, "tokenizer": None,
                                "merges": 5}}, "tokens"),
])
def test_a_damaged_record_is_named_damaged(change, named):
    saved = change(data.bounded_record(SAVED_FILES_FULL))
    with pytest.raises(data.DataError, match=rf"data record is damaged \({named}"):
        data.check_same_data(saved, data.bounded_record(SAVED_FILES_FULL))


@pytest.mark.parametrize("saved_count", [299, 301])
def test_a_record_of_more_or_fewer_files_is_refused(saved_count):
    """300 files (their first 256 recorded): a checkpoint that counts one file more or one
    fewer, its recorded files the same, is another corpus."""
    current = data.bounded_record(full_record([f"/d/{i:04d}.txt" for i in range(300)]))
    saved = {**current, "n_files": saved_count}
    with pytest.raises(data.DataError, match=f"and {saved_count - 1:,} more, not "
                                             f"/d/0000.txt and 299 more"):
        data.check_same_data(saved, current)


@pytest.mark.parametrize("before, after", [(1000, 1006), (1006, 1000)])
def test_a_file_grown_or_shrunk_is_named_with_its_sizes(before, after):
    paths = ["/d/a.txt", "/d/b.txt"]
    saved = data.bounded_record(full_record(paths, [before, 77]))
    current = data.bounded_record(full_record(paths, [after, 77]))
    with pytest.raises(data.DataError, match=f"'/d/a.txt' changed since the run started "
                                             rf"\({before:,} -> {after:,} bytes\)"):
        data.check_same_data(saved, current)


def test_a_recorded_file_touched_is_named_and_an_old_record_without_times_is_not():
    """A recorded file's modification time moved: refused naming that file. A record from
    before the times (entries without ``mtime_ns``): the times are not compared."""
    paths = ["/d/a.txt", "/d/b.txt"]
    saved, current = full_record(paths), full_record(paths)
    current["files"][1]["mtime_ns"] += 10**9
    with pytest.raises(data.DataError, match="data file '/d/b.txt' changed since the run "
                                             r"started \(its modification time differs\)"):
        data.check_same_data(data.bounded_record(saved), data.bounded_record(current))
    for entry in saved["files"]:
        del entry["mtime_ns"]
    old = data.bounded_record(saved)
    assert old["times"] is None
    assert data.check_same_data(old, data.bounded_record(current)) is None


@pytest.mark.parametrize("n_valid, listed", [(255, True), (256, True), (257, False),
                                             (700, False)])
def test_a_split_of_more_validation_files_than_are_recorded_is_a_count_and_digest(n_valid,
                                                                                  listed):
    paths = [f"/d/{i:04d}.txt" for i in range(1009)]
    split = data.bounded_record(full_record(paths, n_valid=n_valid))["split"]
    if listed:
        assert split["valid_files"] == list(range(n_valid))
    else:
        assert "valid_files" not in split and split["valid_files_count"] == n_valid
        other = data.bounded_record(full_record(paths, n_valid=n_valid + 1))["split"]
        assert other["valid_files_digest"] != split["valid_files_digest"]


def test_a_renamed_file_beyond_the_recorded_ones_is_seen_both_ways():
    """300 files: a file not recorded one by one renamed, from the one name to the other
    and back: the listing digest differs either way."""
    paths = [f"/d/{i:04d}.txt" for i in range(300)]
    one = data.bounded_record(full_record(paths))
    recorded = {f["path"] for f in one["files"]}
    unrecorded = next(i for i, p in enumerate(paths) if p not in recorded)
    paths[unrecorded] = paths[unrecorded].replace(".txt", ".text")
    other = data.bounded_record(full_record(paths))
    assert other["files"] == one["files"]
    for saved, current in ((one, other), (other, one)):
        with pytest.raises(data.DataError, match="renamed, replaced or resized"):
            data.check_same_data(saved, current)


def largest_record() -> dict:
    """The largest record a corpus makes: more files than are recorded one by one, each
    path (and the source) 4,095 bytes that are not UTF-8 (6 bytes of JSON each), the
    largest sizes, times, counts and split."""
    path = os.fsdecode(b"\xff" * 4095)
    big = 2**63 - 1
    full = {"source": path, "split": {"valid": "files by path hash",
                                      "valid_files": [big - i for i in range(256)]},
            "train_bytes": big, "valid_bytes": big,
            "tokens": {"dtype": "uint32", "vocab_size": None, "tokenizer": None},
            "files": [{"path": path, "size": big, "mtime_ns": -2**63, "hash": "f" * 16}
                      for _ in range(300)]}
    return {**data.bounded_record(full), "n_files": big}


def test_the_largest_data_record_fits_its_bound_with_little_to_spare():
    """It fits MAX_DATA_RECORD_BYTES (which the checkpoint reader's limit is made of), and
    the bound is not much larger."""
    record = largest_record()
    assert data.check_same_data(record, record) is None
    assert isinstance(data.MAX_DATA_RECORD_BYTES, int)     # bytes, as messages print them
    size = len(json.dumps(record))
    assert 0.9 * data.MAX_DATA_RECORD_BYTES < size <= data.MAX_DATA_RECORD_BYTES


def test_a_checkpoint_holds_the_largest_data_record(tmp_path):
    """Saved with a tiny model and loaded back (test_resume_records.py trains, resumes and
    generates at it, slowly)."""
    numpy = get_backend("numpy")
    state = TrainState.create("brainlike", get_preset("brainlike", "tiny"), numpy)
    state.data_record = largest_record()
    state.save(str(tmp_path / "ckpt.npz"))
    assert TrainState.load(str(tmp_path / "ckpt.npz"), numpy).data_record == state.data_record


# ---- the count-model baselines: the sample, the note, the pair counts -----------------------
def constant_tokens(n: int) -> Tokens:
    """``n`` bytes without memory: a zero-stride view of one byte."""
    return Tokens.of(np.broadcast_to(np.uint8(7), (n,)))


def test_the_baselines_count_every_byte_up_to_max_bytes_and_say_so_above():
    """At ``max_bytes`` every byte is counted (the same losses as with room to spare), so
    the note is empty; one byte more and the train split is a sample, as the note says."""
    rng = np.random.default_rng(5)
    train, valid = rng.integers(0, 40, 1001).astype(np.uint8), rng.integers(0, 40, 301)
    assert data.count_model_losses(train, valid, max_bytes=1001) == \
        data.count_model_losses(train, valid, max_bytes=10**6)
    assert data.baseline_note(train, valid, max_bytes=1001) == ""
    assert data.baseline_note(train, valid, max_bytes=1000).startswith(
        "; estimated from 0.0 MiB samples of train (0.0 MiB)")


def test_the_default_baseline_sample_is_100_mib_as_data_md_says():
    mib = 2**20
    assert data.baseline_note(constant_tokens(100 * mib), constant_tokens(3)) == ""
    assert data.baseline_note(constant_tokens(100 * mib + 1), constant_tokens(3)) == \
        "; estimated from 100.0 MiB samples of train (100.0 MiB)"


@pytest.mark.parametrize("n_bytes, shown", [
    (3 * 2**28, "768.0 MiB"), (2**30 - 1, "1,024.0 MiB"), (2**30, "1.0 GiB"),
    (3 * 2**29, "1.5 GiB"), (5 * 2**30 + 2**29, "5.5 GiB"), (int(41.9 * 2**30), "41.9 GiB")])
def test_sampled_splits_are_sized_in_mib_below_a_gib_and_in_gib_from_one(n_bytes, shown):
    assert data.baseline_note(constant_tokens(n_bytes), constant_tokens(3), 10 * 2**20) == \
        f"; estimated from 10.0 MiB samples of train ({shown})"


def direct_losses(train, valid, vocab):
    table = np.zeros((vocab, vocab))
    np.add.at(table, (train[:-1], train[1:]), 1)
    p = (table + 1) / (table + 1).sum(axis=1, keepdims=True)
    uni = np.bincount(train, minlength=vocab) + 1.0
    return {"unigram": -np.mean(np.log(uni[valid] / uni.sum())),
            "bigram": -np.mean(np.log(p[valid[:-1], valid[1:]]))}


@pytest.mark.parametrize("vocab", [256, 1021, 1031, 1447])
def test_the_pair_counts_are_exact_and_bounded_on_either_side_of_the_dense_table(vocab):
    """1021**2 codes fit the dense table (at most 2**20 int64 codes: 8 MiB, twice while a
    piece's counts are added), 1031**2 do not: both count exactly; neither, nor a larger
    vocabulary, takes more than that table plus the pieces (a vocabulary's V**2 table
    would not stay bounded: GPT-2's would be 20 GB)."""
    rng = np.random.default_rng(vocab)
    train, valid = rng.integers(0, vocab, 3001), rng.integers(0, vocab, 701)
    tracemalloc.start()
    try:
        got = data.count_model_losses(train, valid, vocab_size=vocab)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == pytest.approx(direct_losses(train, valid, vocab), rel=1e-12)
    assert peak < 20 * 2**20, peak


def test_bytes_are_counted_in_the_dense_table_without_sorting(monkeypatch):
    """Bytes make 65,536 pair codes: counted in place (the baselines count up to 100 MiB
    at every start), never sorted and merged."""
    def merged(parts):
        raise AssertionError("bytes were sorted and merged")
    monkeypatch.setattr(data, "_merge_counts", merged)
    rng = np.random.default_rng(6)
    train, valid = rng.integers(0, 256, 5003), rng.integers(0, 256, 611)
    assert data.count_model_losses(train.astype(np.uint8), valid.astype(np.uint8)) == \
        pytest.approx(direct_losses(train, valid, 256), rel=1e-12)


def test_the_sorted_pair_counts_merge_each_code_a_bounded_number_of_times(monkeypatch):
    """Above the dense table, each piece's pairs are sorted and merged once the pieces'
    outnumber those merged: the pieces waiting never hold much more than the merged
    counts or a chunk (memory O(pairs seen + COUNT_CHUNK); waiting for the end: 50 times
    a chunk), and the merges' input, over a split of 53 pieces, stays within 3 times the
    pairs counted (merging after every piece: 28 times)."""
    monkeypatch.setattr(data, "COUNT_CHUNK", 97)
    merges = []                                  # (codes in, codes merged before)
    real = data._merge_counts

    def spy(parts):
        merges.append((sum(len(codes) for codes, _ in parts), len(parts[0][0])))
        return real(parts)
    monkeypatch.setattr(data, "_merge_counts", spy)
    tokens = np.random.default_rng(3).integers(0, 1503, 5003)
    _, codes, counts = data._counts(Tokens.of(tokens), 10**9, 1503)
    assert counts.sum() == len(tokens) - 1 and len(merges) > 1
    assert all(into <= 3 * max(before, 97) for into, before in merges), merges
    assert sum(into for into, _ in merges) <= 3 * (len(tokens) - 1), merges
