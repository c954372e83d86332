"""Device-to-host reads, counted: on a GPU each one waits for the device's queue to drain.

Scalars are read through :func:`to_float`, arrays through ``Backend.to_numpy``; both
count here, and :func:`host_reads` tells how many this process has made (a test holds a
training step to its budget).
"""

from __future__ import annotations

_host_reads = 0


def host_reads() -> int:
    """How many device-to-host reads this process has made through :func:`to_float` and
    ``Backend.to_numpy``."""
    return _host_reads


def count_host_read() -> None:
    global _host_reads
    _host_reads += 1


def to_float(x) -> float:
    """A 0-d array of any backend as a Python float: one counted device-to-host read."""
    count_host_read()
    return float(x)
