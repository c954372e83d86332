"""What the two command lines (``train.py``, ``generate.py``) share: one-line argument
errors, exit codes, and standard streams that cannot crash a run. Light on purpose (the
standard library only): it is imported before the heavy libraries load."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from contextlib import contextmanager

EXIT_INTERRUPTED = 130      # Ctrl-C (SIGINT)


class OneLineParser(argparse.ArgumentParser):
    """A command-line mistake is one ``error: ...`` line (and exit code 2), not the
    usage text followed by the error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def exit_quietly_on_ctrl_c() -> None:
    """Until ``main`` starts: a Ctrl-C while the libraries load ends the process with
    one line and exit code 130, not a traceback of the import that was running. A
    SIGINT ignored by whoever started the process (``cmd &`` in a script) stays ignored,
    as Python itself leaves it."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupted_while_starting)


def _interrupted_while_starting(signum, frame):
    """Ends the process at once. An exception raised here would surface inside whatever
    import was running, and a library may turn it into its own ImportError (NumPy's
    C-extension loader does), printed as a traceback. Nothing has been written yet."""
    print("error: interrupted while starting; nothing was changed", file=sys.stderr)
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def startup_over() -> None:
    """From ``main`` on, a Ctrl-C raises KeyboardInterrupt again, which ``main`` reports."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def forgiving_streams():
    """``sys.stdout`` and ``sys.stderr`` as :class:`ForgivingStream` s for the block
    (after :func:`open_missing_standard_fds`): output that fails never stops the work."""
    open_missing_standard_fds()
    saved = sys.stdout, sys.stderr
    sys.stdout = ForgivingStream(sys.stdout, "stdout")
    sys.stderr = ForgivingStream(sys.stderr, "stderr")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def open_missing_standard_fds() -> None:
    """Point standard descriptors 0-2 that the shell closed (``2>&-``) at /dev/null, so
    that no file this process opens takes their number (a library's write to fd 2 would
    land in it), and give Python a stream for each (``None`` otherwise)."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)    # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


class ForgivingStream:
    """A text stream for progress output that a failing reader cannot stop: the first
    write or flush that fails (a closed pipe as in ``| head``, ``/dev/full``, a gone
    terminal) says so once on stderr, then the output goes nowhere and the caller
    carries on. ``isatty``, ``fileno`` and the rest come from the wrapped stream."""

    def __init__(self, stream, name: str):
        self._stream, self._name, self.failed = stream, name, False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                return self._stream.write(printable(text, self._stream))
            except OSError as exc:
                self._give_up(exc)
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._stream.flush()
            except OSError as exc:
                self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        self.failed = True
        try:       # the interpreter's last flush at exit must not fail again
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
        if self._name != "stderr":
            print(f"note: writing to {self._name} failed ({exc.strerror or exc}); carrying "
                  "on without it", file=sys.stderr, flush=True)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def printable(text: str, stream) -> str:
    """``text`` with what ``stream``'s encoding cannot write (a path's bytes that are
    not UTF-8, held as surrogates; any letter on an ASCII stream) as backslash escapes."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
        return text
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text


def describe_os_error(exc: OSError) -> str:
    """The OS's words plus what the reader can do about it, chosen by the error number."""
    hints = {errno.ENOSPC: "the disk is full: free some space",
             errno.EDQUOT: "the disk quota is used up: free some space",
             errno.EROFS: "the file system is read-only",
             errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
             errno.ENOENT: "check that it exists", errno.ENOTDIR: "a part of it is a file",
             errno.EPIPE: "the reader of the output went away",
             errno.EIO: "the device or terminal failed"}
    where = f" '{exc.filename}'" if exc.filename else ""
    hint = hints.get(exc.errno)
    return f"{exc.strerror or exc}{where}" + (f": {hint}" if hint else "")
