"""What the mutation run of ``data.py`` found untested by test_data.py: a batch whose
targets outnumber its windows or whose windows are 3-d, a FIFO swapped in after the
regular-file check (opened without blocking, then refused), the byte check of a small
vocabulary at its edge, a split one byte too short, the count-model baselines against a
plain-Python count, nats_to_bits, random_batch's default seed, and the reason an unreadable
file gives."""

import errno
import math
import os
import signal
import stat

import numpy as np
import pytest

from brainlike_np import data
from brainlike_np.datafiles import Tokens


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
