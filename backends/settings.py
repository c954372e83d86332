"""The environment's say in the choice of backend and kernels: ``$BRAINLIKE_BACKEND``
and ``$BRAINLIKE_KERNELS``, read and checked here (an argument wins over either)."""

from __future__ import annotations

import os

from .errors import BackendError

BACKEND_NAMES = ("numpy", "array_api_strict", "cupy", "torch", "jax")
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


# ---- every BRAINLIKE_* variable, checked as a flag is ------------------------------
ENV_PARALLEL_MIN_WORK = "BRAINLIKE_PARALLEL_MIN_WORK"
ENV_HOST_MALLOC = "BRAINLIKE_HOST_MALLOC"
HOST_MALLOC_CHOICES = ("reuse", "system")
ENV_VARIABLES = {       # docs/guarantees.md's list ("Environment variables") follows this one
    ENV_BACKEND: "the backend: " + ", ".join(BACKEND_NAMES) + " (default numpy)",
    ENV_KERNELS: "the hot-path kernels: " + ", ".join(KERNEL_CHOICES) + " (default auto)",
    ENV_PARALLEL_MIN_WORK: "elements of work from which a Numba CPU kernel runs in "
                           "parallel, a number >= 0 (default: never)",
    ENV_HOST_MALLOC: "reuse (keep freed host memory for the next step) or system (the C "
                     "library's defaults); default reuse",
    ENV_DEVICE: "the torch and jax backends' device: cpu (default); torch: cuda, cuda:N or "
                "mps; jax: gpu or gpu:N",
}


def parallel_min_work() -> float:
    """``$BRAINLIKE_PARALLEL_MIN_WORK`` as a number >= 0 (unset or empty: ``math.inf``,
    never parallel); BackendError otherwise."""
    value = os.environ.get(ENV_PARALLEL_MIN_WORK, "").strip()
    try:
        number = float(value) if value else float("inf")
    except ValueError:
        number = float("nan")
    if not number >= 0:
        raise BackendError(
            f"{ENV_PARALLEL_MIN_WORK}={value!r} is not a number >= 0: set it to the elements "
            "of work from which a kernel runs its parallel loop (e.g. 100000), or unset it "
            "to always run serially")
    return number


def host_malloc() -> str:
    """``$BRAINLIKE_HOST_MALLOC`` (default reuse) as one of HOST_MALLOC_CHOICES;
    BackendError otherwise."""
    value = os.environ.get(ENV_HOST_MALLOC, "").strip().lower() or "reuse"
    if value not in HOST_MALLOC_CHOICES:
        raise BackendError(f"{ENV_HOST_MALLOC}={value!r} is not one of: "
                           f"{', '.join(HOST_MALLOC_CHOICES)}; set one, or unset it")
    return value


def check_environment() -> None:
    """BackendError naming the first ``BRAINLIKE_*`` variable that is set to a value it
    cannot take, or that this version does not know (a misspelled name is not ignored)."""
    unknown = sorted(name for name in os.environ
                     if name.startswith("BRAINLIKE_") and name not in ENV_VARIABLES)
    if unknown:
        raise BackendError(f"unknown environment variable {unknown[0]}; the known ones are "
                           f"{', '.join(ENV_VARIABLES)}: unset it or fix its name")
    backend_name()
    kernels_choice()
    parallel_min_work()
    host_malloc()
