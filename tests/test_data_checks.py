"""The data layer's guards that the mutation run of ``data.py`` found untested: a batch
whose targets outnumber its windows, a FIFO swapped in after the regular-file check
(opened without blocking, then refused), and the byte check of a small vocabulary at
its edge."""

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
