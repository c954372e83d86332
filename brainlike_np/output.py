"""Every file the project writes (checkpoints, metrics, the plot's PNG) is written one
way: a new temporary file ``.tmp-*`` beside the target, made with ``O_EXCL`` (never an
existing file, never through a symlink), written, fsynced and renamed over the target.

A rename replaces whatever is at the target, so the target is checked first
(:func:`check_output_path`): it must be absent, or a regular file that holds what this
writer writes (an empty one, or one that starts with the writer's magic bytes: a
checkpoint is a zip, a plot a PNG). A symlink, a folder, a FIFO, a socket or a device
is refused in one line, never replaced or written through (a stream such as
``/dev/stdout`` gets no atomic write, and a symlink may lead anywhere), and so is a
name of a training run's files (``ckpt.npz``, ``best.npz``, ``ckpt-STEP.npz``,
``metrics.jsonl``, ``.lock``, ``.tmp-*``) for a writer that does not own it. A replaced
file keeps its permission bits (a read-only checkpoint stays read-only; setuid, setgid
and sticky are dropped); a new one gets those the umask gives (``0o666 & ~umask``).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from contextlib import contextmanager

from .data import file_kind

RUN_FILE_NAMES = ("ckpt.npz", "best.npz", "metrics.jsonl", ".lock")   # what the trainer
NUMBERED_CHECKPOINT = re.compile(r"ckpt-\d+\.npz\Z")   # writes, and --keep-last's ckpt-STEP.npz
TEMP_PREFIX = ".tmp-"                                      # ... and its temporary files
ZIP_MAGIC = b"PK\x03\x04"          # a checkpoint (.npz)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"   # a plot


class OutputPathError(ValueError):
    """A path that must not be written or replaced; the message says why and what to do."""


def check_output_path(path: str, magic: bytes | None, own_name: str | None = None,
                      fix: str = "name another file") -> int:
    """-> the permissions for the file that will replace ``path``. OutputPathError
    unless ``path`` is absent or a regular file that is empty or starts with ``magic``
    (None: any content), and is not a training run's file other than ``own_name``;
    its message ends with ``fix``; TypeError/ValueError for a path that is not one."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise (ValueError if path == "" else TypeError)(
            f"the output path must be a file's path, got {path!r}")
    name = os.path.basename(path)
    role = run_file_role(name)
    if (role and role != run_file_role(own_name)) or name.startswith(TEMP_PREFIX):
        raise OutputPathError(f"'{path}' is named as a training run's own file; {fix} "
                              "(nothing was written)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return new_file_permissions()
    if stat.S_ISLNK(st.st_mode):
        problem = (f"is a symbolic link (to '{os.readlink(path)}'), which is never written "
                   "through or replaced")
    elif not stat.S_ISREG(st.st_mode):
        problem = f"is {file_kind(st.st_mode)}, not a regular file"
    elif magic is not None and st.st_size and not _starts_with(path, magic):
        problem = "holds something other than what is written here, so it is not replaced"
    else:
        return stat.S_IMODE(st.st_mode) & 0o777        # never setuid, setgid or sticky
    raise OutputPathError(f"'{path}' {problem}; {fix} (nothing was written)")


def run_file_role(name: str | None) -> str | None:
    """What a training run's file of that name is: 'checkpoint' for every checkpoint
    (one writer writes them all), the name itself for the others; None: not a run's."""
    if name in ("ckpt.npz", "best.npz") or NUMBERED_CHECKPOINT.match(name or ""):
        return "checkpoint"
    return name if name in RUN_FILE_NAMES else None


def new_file_permissions() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _starts_with(path: str, magic: bytes) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, len(magic), 0) == magic
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str, magic: bytes | None, own_name: str | None = None,
              keep_open: bool = False, fix: str = "name another file"):
    """``with replacing(path, magic) as f:`` write the new content to binary file ``f``;
    when the block ends without an error it is fsynced and renamed over ``path``
    (checked first by :func:`check_output_path`), else removed and ``path`` is left as
    it was. ``keep_open``: ``f`` stays open after the rename (it is then ``path``)."""
    mode = check_output_path(path, magic, own_name, fix)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1],
                               dir=folder)
    f = os.fdopen(fd, "wb")
    try:
        os.fchmod(fd, mode)
        yield f
        f.flush()
        os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        f.close()
        os.remove(tmp)
        raise
    if not keep_open:
        f.close()
