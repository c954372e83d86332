"""Probing CuPy before the cupy backend uses it: installed, a GPU visible, the asked-for
GPU there, cuBLAS loadable. Each failure is a one-line BackendError saying how to fix it."""

from __future__ import annotations

from .errors import BackendError


def import_cupy():
    """Import CuPy and check that a GPU is visible; BackendError otherwise."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: "
            "pip install -e '.[cuda12]' (or '.[cuda13]' for CUDA 13), "
            "or choose BRAINLIKE_BACKEND=numpy") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver
        raise BackendError(
            f"backend 'cupy': CuPy is installed but no GPU is usable ({exc}); "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, "
            "or choose BRAINLIKE_BACKEND=numpy") from exc
    if count == 0:
        raise BackendError(
            "backend 'cupy': CuPy is installed but no GPU is visible; "
            "check CUDA_VISIBLE_DEVICES, or choose BRAINLIKE_BACKEND=numpy")
    return cupy


def gpu_index(cupy, device: int | None) -> int:
    """The GPU to use: ``device``, else CUDA's current one; BackendError if it is not there."""
    if device is None:
        return cupy.cuda.runtime.getDevice()
    count = cupy.cuda.runtime.getDeviceCount()
    if not 0 <= device < count:
        raise BackendError(
            f"backend 'cupy': GPU {device} was asked for but {count} GPU(s) are visible; "
            "run at most one rank per GPU on each node, or check CUDA_VISIBLE_DEVICES")
    return device


def check_cublas(cupy) -> None:
    """One tiny matmul, so a missing cuBLAS is a one-line error now, not a traceback later."""
    try:
        a = cupy.ones((2, 2), dtype=cupy.float32)
        a @ a
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise BackendError(
            f"backend 'cupy': CuPy cannot run a matmul ({type(exc).__name__}: {reason}); "
            "cuBLAS and the other CUDA libraries come with CuPy's [ctk] extra: "
            "pip install -e '.[cuda12]' (or '.[cuda13]')") from None
