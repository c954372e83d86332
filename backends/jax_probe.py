"""Probing JAX before the jax backend uses it: installed, 64-bit floats switched on, and
the asked-for device there (``cpu``, ``gpu``, ``gpu:N``). Each failure is a one-line
BackendError saying how to fix it.

float64: JAX computes in 32 bits unless ``jax_enable_x64`` is on, and silently makes a
float64 array float32. The backend switches it on when it is created, before it makes
any array, so both dtypes of ``TrainSettings`` mean what they say. It is a setting of
the whole process: ``jax.numpy``'s defaults for arrays made from Python numbers become
64-bit. This package's code gives every array its dtype, so it does not depend on them.
"""

from __future__ import annotations

import os

from .errors import BackendError
from .settings import ENV_DEVICE

INSTALL_HINT = "pip install -e '.[jax]' (a CPU build; see pyproject.toml)"


def import_jax():
    """Import JAX with 64-bit floats on; BackendError naming the extra otherwise."""
    try:
        import jax
    except ImportError as exc:
        raise BackendError(f"backend 'jax' needs JAX, which is not installed: {INSTALL_HINT}, "
                           "or choose BRAINLIKE_BACKEND=numpy") from exc
    jax.config.update("jax_enable_x64", True)
    return jax


def jax_device(jax, device: int | str | None):
    """The ``jax.Device`` to compute on: ``device`` (``"cpu"``, ``"gpu"``, ``"gpu:N"``),
    else ``$BRAINLIKE_DEVICE``, else the CPU. An int (a data-parallel rank's GPU index)
    picks that GPU when the device is a GPU, and is ignored on the CPU. BackendError if
    the device is unknown or not there."""
    text = device if isinstance(device, str) else os.environ.get(ENV_DEVICE) or "cpu"
    kind, _, index = str(text).strip().lower().partition(":")
    kind = "gpu" if kind == "cuda" else kind
    if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
        raise BackendError(f"backend 'jax': unknown device '{text}'; choose cpu, gpu or gpu:N "
                           f"(by argument or ${ENV_DEVICE})")
    index = int(index or 0)
    if isinstance(device, int) and kind == "gpu":
        index = device
    devices = _devices(jax, kind)
    if not 0 <= index < len(devices):
        raise BackendError(f"backend 'jax': {kind} {index} was asked for but {len(devices)} "
                           f"are visible; check CUDA_VISIBLE_DEVICES, or choose "
                           f"${ENV_DEVICE}=cpu")
    return devices[index]


def _devices(jax, kind: str) -> list:
    try:
        return jax.devices(kind)
    except RuntimeError:           # no backend of that kind: a CPU-only jaxlib
        if kind == "cpu":
            raise
        raise BackendError("backend 'jax' on 'gpu': this JAX sees no GPU (a CPU-only jaxlib, "
                           "no driver, or CUDA_VISIBLE_DEVICES empty); install "
                           f"'jax[cuda12]', or choose ${ENV_DEVICE}=cpu") from None
