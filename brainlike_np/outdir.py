"""The trainer's output folder: ``ckpt.npz`` (the last state), ``best.npz`` (the state
of the lowest validation loss), ``ckpt-STEP.npz`` (the last ``--keep-last`` states),
``metrics.jsonl`` and a lock.

- It is checked before any training time is spent: a usable path, a folder, writable.
  A run refused before writing anything removes the folder if it made it.
- One trainer at a time: an OS lock (``flock`` on ``.lock``) that the kernel releases when
  the process ends, however it ends, so a killed trainer never leaves it stuck.
- Leftover temporary files of a killed write (``.tmp-*``) are removed.
- Nothing outside the folder is ever created, truncated or written, whatever the folder
  holds: every file is written by ``output.replacing`` (created with ``O_EXCL``, renamed
  into place), and a checkpoint or metrics path that is a symlink, a FIFO, a device or
  a folder is refused before the run starts, never followed or replaced; every file
  read is checked to be a regular file first (a FIFO would block, ``/dev/zero`` never
  ends).
- One run per folder: a new run refuses a folder that holds a checkpoint, or the
  evaluations of a run whose checkpoint is gone; a resume refuses a folder that holds
  another run's checkpoint or metrics (records without the checkpoint's run id).
- The metrics file agrees with the checkpoint: opening it keeps only the records up to
  the checkpoint's step (a run killed after its last checkpoint logged steps that the
  resumed run repeats; a run that died before its first checkpoint left records that a
  new run replaces). Records are strict JSON: NaN and infinities are written as null;
  a damaged record is skipped, as a torn last line is.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import math
import os
import stat
import tempfile

from .checkpoint import CheckpointError, CheckpointFile
from .data import NotRegularFileError, open_regular_file
from .output import (NUMBERED_CHECKPOINT, ZIP_MAGIC, OutputPathError, check_output_path,
                     replacing)

CHECKPOINT_NAME = "ckpt.npz"
BEST_NAME = "best.npz"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".lock"


class OutDirError(OSError):
    """The output folder cannot be used; the message says why and what to do."""

    def __str__(self):
        return self.args[0]


class OutDir:
    """``with OutDir(path) as out:`` checks, locks and cleans the folder (``writer``:
    False on the ranks that never write, which only get the paths)."""

    def __init__(self, path: str, writer: bool = True):
        if not path:
            raise OutDirError("--out-dir is empty; name a folder for the checkpoint and metrics")
        self.path, self.writer = path, writer
        self.checkpoint = os.path.join(path, CHECKPOINT_NAME)
        self.best = os.path.join(path, BEST_NAME)
        self.metrics_path = os.path.join(path, METRICS_NAME)
        self._lock = None
        self.created = False     # this run made the folder (removed if it writes nothing)

    def __enter__(self):
        if self.writer:
            self.created = not os.path.lexists(self.path)
            self._make_writable_folder()
            self._take_lock()
            for leftover in glob.glob(os.path.join(glob.escape(self.path), ".tmp-*")):
                os.remove(leftover)      # a symlink is removed, never followed
            self._check_replaceable()
        return self

    def _check_replaceable(self) -> None:
        """OutDirError, before any training time is spent, unless the checkpoint and the
        metrics file can be written (absent, or regular files: see ``output.py``)."""
        for path, magic, name in ((self.checkpoint, ZIP_MAGIC, CHECKPOINT_NAME),
                                  (self.best, ZIP_MAGIC, BEST_NAME),
                                  (self.metrics_path, None, METRICS_NAME)):
            try:
                check_output_path(path, magic, own_name=name,
                                  fix=f"move it away (the trainer writes {name} itself)")
            except OutputPathError as exc:
                raise OutDirError(str(exc)) from None

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and self.created:
            self._remove_if_unused()
        if self._lock is not None:
            os.close(self._lock)     # releases the flock
            self._lock = None

    def _remove_if_unused(self) -> None:
        """Remove the folder this run made when the run was refused before writing
        anything in it (only the lock is there)."""
        try:
            if os.listdir(self.path) == [LOCK_NAME]:
                os.remove(os.path.join(self.path, LOCK_NAME))
                os.rmdir(self.path)
        except OSError:
            pass             # in use after all: left as it is

    def _make_writable_folder(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise OutDirError(f"--out-dir '{self.path}' is a file, not a folder; choose "
                              "another --out-dir")
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise OutDirError(f"--out-dir '{self.path}' is a symbolic link to "
                              f"'{os.readlink(self.path)}', which does not exist; create that "
                              "folder, or choose another --out-dir")
        try:
            os.makedirs(self.path, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".tmp-write-test-", dir=self.path)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise OutDirError(f"--out-dir '{self.path}' is not writable ({exc.strerror}); "
                              "fix its permissions or choose another --out-dir") from None

    def _take_lock(self) -> None:
        path = os.path.join(self.path, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutDirError(f"'{path}' is a symbolic link; remove it (the trainer "
                                  "makes its own lock file)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutDirError(f"'{path}' is not a regular file; remove it (the trainer "
                              "makes its own lock file)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutDirError(f"another trainer is using --out-dir '{self.path}'; wait "
                                  "for it to end, or choose another --out-dir") from None
            raise
        self._lock = fd

    # ---- one run per folder ----------------------------------------------------------
    def check_new_run(self) -> None:
        """CheckpointError unless a new run may start here: no checkpoint, and no
        evaluation logged by a run whose checkpoint is gone (nothing is overwritten)."""
        for path in [self.checkpoint, self.best, *self.numbered_checkpoints().values()]:
            if os.path.lexists(path):
                raise CheckpointError(
                    f"'{path}' already exists; pass --resume to continue that run, or "
                    "choose another --out-dir (nothing was overwritten)")
        if self.writer and any("val_loss" in r for r in self.read_metrics()):
            raise CheckpointError(
                f"'{self.metrics_path}' holds the evaluations of an earlier run whose "
                f"checkpoint is not in --out-dir '{self.path}'; move it away or choose "
                "another --out-dir (nothing was overwritten)")

    def check_resume(self, source: str, step: int, last_eval: dict,
                     run_id: str | None = None) -> None:
        """CheckpointError unless the checkpoint ``source`` (at ``step``, its last
        evaluation ``last_eval``, its ``run_id``) may continue in this folder: the
        folder's own checkpoint or one of its run (ckpt.npz and best.npz of the same run
        id), or no other checkpoint here and a metrics file of the
        same run (every record carries its run id; a run older than run ids: its last
        evaluation is logged, or nothing after its step is)."""
        if not self.writer:
            return
        others = [path for path in (self.checkpoint, self.best) if os.path.lexists(path)
                  and not _same_file(source, path)
                  and (run_id is None or _run_id_of(path) != run_id)]
        if others:
            raise CheckpointError(
                f"--out-dir '{self.path}' holds another run's checkpoint; resume '{source}' "
                "into an empty --out-dir, or resume that run with --resume alone (nothing "
                "was changed)")
        records = self.read_metrics()
        evals_here = [r for r in records if "val_loss" in r and r["step"] == step]
        if run_id is not None:
            same_run = all(r.get("run") == run_id for r in records)
        elif last_eval and evals_here:
            same_run = _as_logged(last_eval) in evals_here
        else:     # killed between saving and logging: nothing logged after the checkpoint
            same_run = all(r["step"] <= step for r in records)
        if not same_run:
            raise CheckpointError(
                f"'{self.metrics_path}' holds the metrics of another run than checkpoint "
                f"'{source}' (step {step}); resume it into an empty --out-dir, or move "
                "metrics.jsonl away (nothing was changed)")

    # ---- checkpoints -----------------------------------------------------------------
    def numbered(self, step: int) -> str:
        return os.path.join(self.path, f"ckpt-{step:06d}.npz")

    def numbered_checkpoints(self) -> dict:
        """step -> path of the ``ckpt-STEP.npz`` files in the folder (none: no folder yet,
        as another rank than the writer may see it)."""
        names = os.listdir(self.path) if os.path.isdir(self.path) else []
        return {int(name[5:-4]): os.path.join(self.path, name)
                for name in names if NUMBERED_CHECKPOINT.match(name)}

    def save(self, state, best: bool = False, keep_last: int = 0) -> None:
        """Write ``state`` as ckpt.npz; as best.npz too when ``best`` (its validation
        loss is the lowest yet); as ckpt-STEP.npz when ``keep_last``, then remove the
        numbered checkpoints older than the last ``keep_last`` (this run's only: a
        symlink, another run's file or anything else of that name is left alone). Each
        write is atomic."""
        state.save(self.checkpoint)
        if best:
            state.save(self.best)
        if keep_last:
            state.save(self.numbered(state.step))
            numbered = self.numbered_checkpoints()
            for step in sorted(numbered)[:-keep_last]:
                path = numbered[step]
                if stat.S_ISREG(os.lstat(path).st_mode) and _run_id_of(path) == state.run_id:
                    os.remove(path)

    def best_val_loss(self, run_id: str | None) -> float:
        """The validation loss of run ``run_id``'s best.npz; infinity when there is none
        (no file, an unreadable one, or one without that run id: it is then replaced)."""
        try:
            with CheckpointFile(self.best) as checkpoint:
                meta = checkpoint.meta
            loss = meta["metrics"]["val_loss"]
            if meta.get("run_id") == run_id and isinstance(loss, (int, float)):
                return float(loss)
        except (CheckpointError, OSError, KeyError, TypeError):
            pass
        return math.inf

    # ---- metrics ---------------------------------------------------------------------
    def read_metrics(self) -> list[dict]:
        try:
            return read_metrics(self.metrics_path)
        except NotRegularFileError as exc:
            raise OutDirError(f"{exc}; move it away (the trainer writes metrics.jsonl "
                              "itself)") from None

    def open_metrics(self, upto_step: int, last_eval: dict | None = None,
                     run_id: str | None = None) -> "MetricsLog":
        """The metrics file, cut back to the records of steps ``<= upto_step``.
        ``last_eval``: the checkpoint's own evaluation record, put back if the process
        was killed between writing the checkpoint and logging it. Written to a new
        temporary file renamed over the old one, which then takes the appends, each
        with ``run_id`` (none: an older run's, without)."""
        kept = [r for r in self.read_metrics() if r["step"] <= upto_step]
        if last_eval and last_eval.get("step") == upto_step and not any(
                "val_loss" in r and r["step"] == upto_step for r in kept):
            kept.append(last_eval)
        with replacing(self.metrics_path, None, own_name=METRICS_NAME, keep_open=True) as f:
            log = MetricsLog(f, {"run": run_id} if run_id else {})
            for record in kept:
                log.write(record)
        return log


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file, as the next run reads it: a torn last line (a
    process killed mid-write) or any other damaged line (not UTF-8, not JSON, not an
    object with a step) is skipped; no file is no records."""
    try:
        f = open_regular_file(path)
    except FileNotFoundError:
        return []
    records = []
    with f:
        for line in f:           # a line at a time: the file is never held whole
            try:                 # ValueError: not UTF-8, not JSON, an int too long
                record = json.loads(line.decode())
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict) and _is_step(record.get("step")):
                records.append(record)
    return records


def _is_step(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _run_id_of(path: str) -> str | None:
    """The run id a checkpoint records; None if it records none or cannot be read."""
    try:
        with CheckpointFile(path) as checkpoint:
            return checkpoint.meta.get("run_id")
    except (CheckpointError, OSError, AttributeError):
        return None


def _as_logged(record: dict) -> dict:
    """``record`` as read back from the metrics file."""
    return json.loads(_to_json(record))


class MetricsLog:
    """Appends one strict-JSON record a line to an open binary file, flushed at once;
    ``tag``'s fields (the run id) in each."""

    def __init__(self, file, tag: dict):
        self._file, self._tag = file, tag

    def write(self, record: dict) -> None:
        self._file.write((_to_json({**record, **self._tag}) + "\n").encode())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _to_json(record: dict) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)
