"""A full disk, simulated: files whose writes fail with ENOSPC after some bytes."""

import builtins
import errno
import os


class FileThatFillsUp:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes have gone in."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self._room:
            self._f.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def disk_fills_up(monkeypatch, room=4096):
    """Every binary file opened for writing (by ``open`` or ``os.fdopen``) runs out of space
    after ``room`` bytes."""
    def wrap(opener):
        def opened(file, mode="r", *args, **kwargs):
            f = opener(file, mode, *args, **kwargs)
            return FileThatFillsUp(f, room) if set(mode) & set("wax+") and "b" in mode else f
        return opened
    monkeypatch.setattr(builtins, "open", wrap(builtins.open))
    monkeypatch.setattr(os, "fdopen", wrap(os.fdopen))
