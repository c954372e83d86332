"""The one module that imports the Numba CUDA target (the ``numba-cuda`` package).

Kernel modules take ``cuda`` from here, so moving to the target's successor is a
change to the import below, nowhere else.

Stream ordering: numba-cuda (>= 0.29) hands a CuPy array to a kernel through the
array's ``__dlpack__``, naming the launch stream, and CuPy makes that stream wait for
the array's stream if they differ. Our kernels launch on CuPy's current stream
(:func:`current_stream`), the stream the arrays come from, so no wait is made.
(``NUMBA_CUDA_ARRAY_INTERFACE_SYNC`` does not apply: it is for arrays passed through
``__cuda_array_interface__``, which numba-cuda no longer uses for CuPy arrays.)

On CuPy's default stream the launch names stream 0, which DLPack reserves; CuPy reads
it as the legacy default stream, which it is, and warns once ("Stream 0 is passed from
a library"). That one warning is silenced here: the stream is right.

Numba warns about launches with fewer blocks than the GPU has multiprocessors. The hot
path has such launches by design (top-k sized grids, one sample when generating), so
that warning is off unless ``NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=1`` is set.
"""

from __future__ import annotations

import math
import os
import warnings

_OCCUPANCY_ENV = "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"
os.environ.setdefault(_OCCUPANCY_ENV, "0")

import numba.cuda as cuda  # noqa: E402  (numba-cuda: the Numba CUDA target)
from numba.cuda.core import config as cuda_config  # noqa: E402

cuda_config.CUDA_LOW_OCCUPANCY_WARNINGS = bool(int(os.environ[_OCCUPANCY_ENV]))  # if read earlier
warnings.filterwarnings("ignore", message="Stream 0 is passed from a library",
                        category=UserWarning)

SIMULATOR = bool(cuda_config.ENABLE_CUDASIM)
"""True under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` before Numba loads)."""

THREADS_PER_BLOCK = 256
"""The block size of the one-thread-per-item kernels."""


def launch_flat(kernel, n_threads, stream, *args):
    """Launch ``kernel`` with one thread per item, ``n_threads`` items (none when 0)."""
    if n_threads:
        kernel[math.ceil(n_threads / THREADS_PER_BLOCK), THREADS_PER_BLOCK, stream](*args)


_streams = {}      # (device id, CuPy stream pointer) -> the Numba stream wrapping it


def current_stream():
    """CuPy's current stream as a Numba stream, for launching kernels in CuPy's order.

    One Numba stream per CuPy stream, made on first use and kept: a launch
    configuration (``kernel[grid, block, stream]``) is cached by Numba per stream
    object, so a new wrapper per launch would configure every launch afresh.

    The simulator has no external streams (and cannot take CuPy arrays): there it is
    the default stream.
    """
    if SIMULATOR:
        return cuda.default_stream()
    import cupy
    ptr = cupy.cuda.get_current_stream().ptr
    key = (cupy.cuda.runtime.getDevice(), ptr)     # stream 0 exists once per device
    if key not in _streams:
        _streams[key] = cuda.external_stream(ptr)
    return _streams[key]


__all__ = ["cuda", "SIMULATOR", "THREADS_PER_BLOCK", "current_stream", "launch_flat"]
