"""The trainer's output folder: ``ckpt.npz``, ``metrics.jsonl`` and a lock.

- It is checked before any training time is spent: a usable path, a folder, writable.
- One trainer at a time: an OS lock (``flock`` on ``.lock``) that the kernel releases when
  the process ends, however it ends, so a killed trainer never leaves it stuck.
- Leftover temporary checkpoint files of a killed write (``.tmp-*.npz``) are removed.
- The metrics file agrees with the checkpoint: opening it keeps only the records up to
  the checkpoint's step (a run killed after its last checkpoint logged steps that the
  resumed run repeats; a run that died before its first checkpoint left records that a
  new run replaces). Records are strict JSON: NaN and infinities are written as null.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import math
import os

from .checkpoint import CheckpointError

CHECKPOINT_NAME = "ckpt.npz"
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
        self.metrics_path = os.path.join(path, METRICS_NAME)
        self._lock = None

    def __enter__(self):
        if self.writer:
            self._make_writable_folder()
            self._take_lock()
            for leftover in glob.glob(os.path.join(self.path, ".tmp-*.npz")):
                os.remove(leftover)
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            os.close(self._lock)     # releases the flock
            self._lock = None

    def _make_writable_folder(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise OutDirError(f"--out-dir '{self.path}' is a file, not a folder; choose "
                              "another --out-dir")
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = os.path.join(self.path, f".write-test-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"x")
            os.remove(probe)
        except OSError as exc:
            raise OutDirError(f"--out-dir '{self.path}' is not writable ({exc.strerror}); "
                              "fix its permissions or choose another --out-dir") from None

    def _take_lock(self) -> None:
        fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutDirError(f"another trainer is using --out-dir '{self.path}'; wait "
                                  "for it to end, or choose another --out-dir") from None
            raise
        self._lock = fd

    def check_fresh(self) -> None:
        """CheckpointError if a checkpoint is already there (a new run never overwrites)."""
        if os.path.exists(self.checkpoint):
            raise CheckpointError(
                f"'{self.checkpoint}' already exists; pass --resume to continue that run, or "
                "choose another --out-dir (nothing was overwritten)")

    def open_metrics(self, upto_step: int, last_eval: dict | None = None) -> "MetricsLog":
        """The metrics file, cut back to the records of steps ``<= upto_step``.
        ``last_eval``: the checkpoint's own evaluation record, put back if the process
        was killed between writing the checkpoint and logging it."""
        kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= upto_step]
        if last_eval and last_eval.get("step") == upto_step and not any(
                "val_loss" in r and r.get("step") == upto_step for r in kept):
            kept.append(last_eval)
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(_to_json(r) + "\n" for r in kept)
        os.replace(tmp, self.metrics_path)
        return MetricsLog(self.metrics_path)


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file, as the next run reads it: a torn last line (a
    process killed mid-write) is skipped; no file is no records."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Appends one strict-JSON record a line, flushed at once."""

    def __init__(self, path: str):
        self._file = open(path, "a")

    def write(self, record: dict) -> None:
        self._file.write(_to_json(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _to_json(record: dict) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)
