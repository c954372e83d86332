"""The environment's say in the choice of backend and kernels: ``$BRAINLIKE_BACKEND``
and ``$BRAINLIKE_KERNELS``, read and checked here (an argument wins over either)."""

from __future__ import annotations

import os

from .errors import BackendError

BACKEND_NAMES = ("numpy", "array_api_strict", "cupy", "jax")
ALIASES = {"array-api-strict": "array_api_strict", "strict": "array_api_strict"}
KERNEL_CHOICES = ("auto", "reference", "numba", "native")
ENV_BACKEND = "BRAINLIKE_BACKEND"
ENV_KERNELS = "BRAINLIKE_KERNELS"
ENV_DEVICE = "BRAINLIKE_DEVICE"     # the torch and jax backends' device (default: cpu)


def backend_name(name: str | None = None) -> str:
    """``name`` (default: ``$BRAINLIKE_BACKEND``, else numpy) as one of BACKEND_NAMES;
    BackendError listing them otherwise."""
    name = (name or os.environ.get(ENV_BACKEND) or "numpy").strip().lower()
    name = ALIASES.get(name, name)
    if name not in BACKEND_NAMES:
        raise BackendError(
            f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_NAMES)} "
            f"(by argument or ${ENV_BACKEND})")
    return name


def kernels_choice(kernels: str | None = None) -> str:
    """``kernels`` (default: ``$BRAINLIKE_KERNELS``, else auto) as one of KERNEL_CHOICES;
    BackendError listing them otherwise."""
    kernels = (kernels or os.environ.get(ENV_KERNELS) or "auto").strip().lower()
    if kernels not in KERNEL_CHOICES:
        raise BackendError(
            f"unknown kernels '{kernels}'; choose one of: {', '.join(KERNEL_CHOICES)}")
    return kernels
