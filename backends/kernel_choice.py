"""Which ops a backend gets: the portable reference, or its own kernels where they run.

A backend's own kernels are of one kind, its class's ``kernels``: "numba" (Numba CPU or
CUDA kernels: numpy, cupy), "native" (the array library's own operations: torch, jax)
or None (array-api-strict). ``kernels`` asks for "reference", for that kind by name (the
kernels, or a one-line BackendError), or for "auto" (the kernels where they run, else
the reference). Under "auto", kernels that exist but cannot run here (not installed,
not importable, no cache folder, rejected by the driver) are reported in one line on
stderr, once; a backend without kernels (array-api-strict) takes the reference silently.
"""

from __future__ import annotations

import contextlib
import os

from .errors import BackendError, KernelsMissing, KernelsUnavailable, warn_once
from .reference import ReferenceOps
from .settings import ENV_KERNELS


def choose_ops(backend_cls, xp, kernels: str):
    """The ops ``kernels`` asks for, for ``backend_cls`` (whose ``kernel_ops(xp)`` gives its
    kernels, of the kind ``backend_cls.kernels``) on namespace ``xp``."""
    if kernels == "reference":
        return ReferenceOps(xp)
    if kernels != "auto" and kernels != backend_cls.kernels:
        raise BackendError(
            f"backend '{backend_cls.name}' has no {kernels} kernels; choose kernels "
            f"{' or '.join(repr(k) for k in ('auto', backend_cls.kernels, 'reference') if k)}")
    try:
        return backend_cls.kernel_ops(xp)
    except KernelsMissing:
        pass
    except KernelsUnavailable as exc:
        if kernels != "auto":
            raise BackendError(f"kernels '{kernels}' for backend '{backend_cls.name}': {exc}, "
                               f"or set {ENV_KERNELS}=reference") from None
        kind = {"numba": "Numba"}.get(backend_cls.kernels, backend_cls.kernels)
        warn_once(f"warning: the {kind} kernels of backend '{backend_cls.name}' cannot run "
                  f"({exc}); using the reference ops instead (slower; "
                  f"{ENV_KERNELS}=reference silences this)")
    return ReferenceOps(xp)


@contextlib.contextmanager
def importing_kernels(install_hint: str):
    """Turn the failures of importing a kernel module into KernelsUnavailable: Numba or
    its CUDA target not installed (``install_hint`` says how to install it), installed
    but not importable (e.g. a library of another CUDA version: an ImportError that is
    not ModuleNotFoundError), or no writable folder for the compiled-code cache. Import
    errors of this package's own modules are bugs, and pass through."""
    try:
        yield
    except ImportError as exc:
        if (exc.name or "").startswith("brainlike_np"):
            raise                                  # a bug here, not a missing library
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            raise KernelsUnavailable(f"{exc.name} is not installed: {install_hint}") from None
        reason = " ".join(str(exc).split())
        raise KernelsUnavailable(
            f"the kernels' libraries cannot be imported ({type(exc).__name__}: {reason}); "
            f"reinstall them: {install_hint}") from None
    except RuntimeError as exc:       # numba.core.caching: "cannot cache function ..."
        if "cannot cache function" not in str(exc):
            raise
        raise KernelsUnavailable(
            f"Numba found no writable folder for its compiled-code cache "
            f"(NUMBA_CACHE_DIR={os.environ.get('NUMBA_CACHE_DIR', 'unset')}, and the "
            "package folder is read-only): set NUMBA_CACHE_DIR to a writable folder") from None
    except ValueError as exc:         # numba's import refuses NUMBA_NUM_THREADS (0, > cores)
        if "threads" not in str(exc).lower():
            raise
        raise KernelsUnavailable(
            f"Numba refuses NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')} ({exc}): "
            "set it to a number from 1 to the cores, or unset it") from None
