"""Host memory: what is free for new arrays, and the numpy backend's policy of keeping
freed array memory for reuse.

:func:`host_free_memory_bytes` reads Linux's MemAvailable (the host backends' free
memory, which the trainer checks before it allocates).

The policy, :func:`keep_freed_memory`:

A training step allocates and frees the same large temporaries every step. With glibc's
defaults, blocks above the (dynamic) mmap threshold are mapped fresh and unmapped on
every use, and the heap's top is trimmed back to the system: each step then page-faults
its whole working set in again, about a third of a CPU step. :func:`keep_freed_memory`
tells glibc (``mallopt``) to serve blocks up to 1 GiB from the heap and to keep up to
2 GiB of freed memory, so a step reuses the previous step's pages.

What it changes for the user: the process's resident memory stays near the peak of a
step between steps instead of falling back; the peak itself does not grow, and the
backend's accounting (tracemalloc, which counts live arrays) is unchanged. It applies
to the whole process, once, when a numpy backend is created; set
``BRAINLIKE_HOST_MALLOC=system`` to keep the C library's defaults. Elsewhere than glibc
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .settings import host_malloc

MALLOPT = {               # glibc's mallopt parameters -> value
    -3: 1 << 30,          # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap
    -1: (1 << 31) - 1,    # M_TRIM_THRESHOLD: keep up to 2 GiB of free heap top
    -2: 256 << 20,        # M_TOP_PAD: grow the heap 256 MiB at a time
}
_applied = None


def host_free_memory_bytes() -> int | None:
    """The host memory new allocations can take (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def keep_freed_memory() -> bool:
    """Apply the policy once per process; -> whether it is in force."""
    global _applied
    if _applied is None:
        _applied = host_malloc() != "system" and _mallopt_all()
    return _applied


def _mallopt_all() -> bool:
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None or not os.confstr("CS_GNU_LIBC_VERSION"):
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOPT.items())
