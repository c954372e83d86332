"""Probing PyTorch before the torch backend uses it: installed, and the asked-for device
there (``cpu``, ``cuda:N``, ``mps``). Each failure is a one-line BackendError saying how
to fix it."""

from __future__ import annotations

import os

from .errors import BackendError
from .settings import ENV_DEVICE

DEVICE_TYPES = ("cpu", "cuda", "mps")


def import_torch():
    """Import PyTorch; BackendError naming the extra otherwise."""
    try:
        import torch
    except ImportError as exc:
        raise BackendError(
            "backend 'torch' needs PyTorch, which is not installed: pip install -e "
            "'.[torch]' (a CPU build: see pyproject.toml), or choose BRAINLIKE_BACKEND=numpy"
        ) from exc
    return torch


def torch_device(torch, device: int | str | None):
    """The ``torch.device`` to compute on: ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"mps"``), else ``$BRAINLIKE_DEVICE``, else the CPU. An int (a data-parallel rank's
    GPU index) picks that GPU when the device is CUDA's, and is ignored on the others.
    BackendError if the device is unknown or not usable here."""
    if device is None or isinstance(device, int):
        named = _parse(torch, os.environ.get(ENV_DEVICE) or "cpu")
        if isinstance(device, int) and named.type == "cuda":
            named = torch.device("cuda", device)
        device = named
    else:
        device = _parse(torch, device)
    _check_usable(torch, device)
    return device


def _parse(torch, text):
    try:
        device = torch.device(str(text).strip().lower())
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise BackendError(
            f"backend 'torch': unknown device '{text}'; choose cpu, cuda, cuda:N or mps "
            f"(by argument or ${ENV_DEVICE})")
    return device


def _check_usable(torch, device) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BackendError(
                f"backend 'torch' on '{device}': this PyTorch sees no CUDA GPU (a CPU "
                f"build, no driver, or CUDA_VISIBLE_DEVICES empty); install a CUDA build of "
                f"PyTorch, or choose ${ENV_DEVICE}=cpu")
        if device.index is not None and not 0 <= device.index < count:
            raise BackendError(
                f"backend 'torch': GPU {device.index} was asked for but {count} GPU(s) are "
                "visible; run at most one rank per GPU on each node, or check "
                "CUDA_VISIBLE_DEVICES")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BackendError(
            f"backend 'torch' on 'mps': this PyTorch has no usable Apple GPU (MPS); "
            f"choose ${ENV_DEVICE}=cpu")
