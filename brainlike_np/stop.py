"""The trainer's stop on a signal: Ctrl-C (SIGINT) or SIGTERM ends a run at the next
step's end, with its checkpoint saved."""

from __future__ import annotations

import signal

from .cli import EXIT_INTERRUPTED

EXIT_TERMINATED = 143       # SIGTERM (Slurm, Kubernetes, kill)


class StopFlag:
    """Ctrl-C (SIGINT) and SIGTERM set a flag the loop checks after each step: it saves
    and exits 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C aborts at once, keeping the
    last checkpoint on disk.

    ``distributed``: a second signal does not abort (on Ctrl-C, Open MPI's mpirun sends
    every rank SIGTERM, then SIGKILL; Slurm sends SIGINT, then SIGTERM): the launcher
    kills the ranks itself after its grace period. A signal ignored at start stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, distributed=False):
        self.signum = None
        self.distributed = distributed

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED

    def __enter__(self):
        kept = [s for s in self.SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
        self._previous = {s: signal.signal(s, self._handle) for s in kept}
        return self

    def _handle(self, signum, frame):
        if self.requested and not self.distributed:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
