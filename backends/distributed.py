"""Data-parallel training over MPI: ``mpirun -n P python -m brainlike_np.train --distributed``.

Every rank holds the whole model and draws the same global batch from the same seeded
sampler, then computes the loss and gradients of its own equal slice. The loss of a slice
is the mean over its windows, so the mean over the ranks of their (loss, gradients) is the
global batch's: one all-reduce per step over a single flat buffer (every gradient, then
the loss) leaves all ranks with identical gradients, hence identical clipping, AdamW
updates and parameters.

:func:`connect` joins the job, creates this rank's backend on its own device (made
current before anything is allocated: the one GPU the launcher gave the rank, else the
GPU of the rank's index on its node), and picks the transport the backend names
(``backend.transport``):

- host arrays (numpy, array-api-strict, torch and jax on the CPU): MPI's Allreduce
  through mpi4py, in the arrays' own memory where it is writable, else (jax's immutable
  buffers) on a host copy; torch and jax on a GPU: the same, through a copy on the host;
- CuPy arrays: NCCL through ``cupy.cuda.nccl`` on the GPUs, one GPU per rank; MPI only
  broadcasts NCCL's id, agrees on stopping and aborts.

mpi4py is the optional ``distributed`` extra and is imported only by :func:`connect`: a
single-process run uses :class:`SingleProcess` and never loads MPI.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .backend import get_backend
from .namespace import device_of, get_namespace

INSTALL_HINT = ("pip install -e '.[distributed]' (mpi4py) and an MPI library, e.g. "
                "apt-get install openmpi-bin")


class DistributedError(RuntimeError):
    """Distributed training cannot start or continue; the message says why."""


class SingleProcess:
    """One process, no communication: the rank's slice is the whole batch."""

    rank = 0
    size = 1

    def local_part(self, batch):
        return batch

    def average(self, loss, grads: dict) -> tuple:
        return loss, grads

    def any_rank(self, flag: bool) -> bool:
        return flag

    def allgather(self, value) -> list:
        return [value]


class MpiCommunicator:
    """The ranks of ``MPI.COMM_WORLD``, reducing host buffers with MPI; ``backend`` (None:
    one whose arrays live on the host) moves a device's buffers to the host and back."""

    def __init__(self, MPI, world, backend=None):
        self.MPI, self.world, self.backend = MPI, world, backend
        self.rank, self.size = world.Get_rank(), world.Get_size()

    def local_part(self, batch):
        """This rank's equal slice of a global host batch: ``[B, ...]`` -> ``[B / P, ...]``."""
        per_rank = batch.shape[0] // self.size
        return batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    def average(self, loss, grads: dict) -> tuple:
        """This rank's (mean loss, a 0-d array; its gradients) -> the mean over all ranks,
        with one all-reduce; every rank gets the same result."""
        flat, shapes = flatten(grads, loss)
        flat = self.allreduce_mean(flat)
        return flat[-1], unflatten(flat[:-1], shapes)

    def allreduce_mean(self, flat):
        """Element-wise mean over the ranks of a 1-d array ``[n]`` (``flat`` is a scratch
        buffer: it may be overwritten), summed in a host buffer."""
        on_host = self.backend is None or self.backend.arrays_on_host()
        # [n]: on the host, flat's own memory; from a device (a GPU), a copy
        host = np.from_dlpack(flat) if on_host else self.backend.to_numpy(flat)
        if not host.flags.writeable:         # an immutable library's buffer (jax): a copy
            host = host.copy()
        self.world.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        host /= self.size
        return get_namespace(flat).asarray(host) if on_host else self.backend.asarray(host)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return self.world.allreduce(bool(flag), op=self.MPI.LOR)

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object), on every rank."""
        return self.world.bcast(value, root=0)

    def allgather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        return self.world.allgather(value)

    def abort(self, code: int) -> None:
        """End every rank of the job now (no rank is left waiting in a collective)."""
        self.world.Abort(code)


class NcclCommunicator(MpiCommunicator):
    """Sums CuPy buffers on the GPUs with NCCL; one GPU per rank, the current device."""

    def __init__(self, MPI, world, cupy, nccl):
        super().__init__(MPI, world)
        self.cupy, self.nccl = cupy, nccl
        unique_id = self.broadcast(nccl.get_unique_id() if self.rank == 0 else None)
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def allreduce_mean(self, flat):
        """Element-wise mean over the ranks of a contiguous CuPy array ``[n]`` (summed in place)."""
        dtype = getattr(self.nccl, f"NCCL_{flat.dtype.name.upper()}")   # NCCL_FLOAT32/64
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, dtype,
                                 self.nccl.NCCL_SUM, stream.ptr)
        return flat / self.size


def flatten(grads: dict, loss):
    """-> (one contiguous buffer ``[n_params + 1]``: every gradient raveled, then the loss;
    the shapes that undo it)."""
    first = next(iter(grads.values()))
    xp = get_namespace(first)
    parts = [xp.reshape(g, (-1,)) for g in grads.values()]
    parts.append(xp.reshape(xp.asarray(loss, dtype=first.dtype, device=device_of(first)), (1,)))
    return xp.concat(parts), {name: tuple(g.shape) for name, g in grads.items()}


def unflatten(flat, shapes: dict) -> dict:
    """Buffer ``[n_params]`` -> gradients ``name -> [shape]`` (views into ``flat``)."""
    xp = get_namespace(flat)
    grads, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        grads[name] = xp.reshape(flat[start:start + size], shape)
        start += size
    return grads


def connect(backend: str | None = None, kernels: str | None = None):
    """Join the MPI job this process was launched in (mpirun, srun) -> (communicator,
    backend).

    The backend (``get_backend(backend, kernels, device=...)``, default
    ``$BRAINLIKE_BACKEND``) is created here, on this rank's device (:func:`rank_device`),
    so a GPU rank picks its own GPU before anything is allocated; the transport is the
    one the backend names (``backend.transport``: MPI or NCCL).
    """
    MPI = _mpi()
    world = MPI.COMM_WORLD
    local_rank = world.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()   # index on its node
    this_backend = get_backend(backend, kernels, device=rank_device(local_rank))
    return communicator(this_backend, MPI, world), this_backend


def rank_device(local_rank: int) -> int:
    """The GPU index this rank uses: 0 when the launcher gave the rank a GPU of its own
    (``CUDA_VISIBLE_DEVICES`` names exactly one device, as Slurm's
    ``--gpus-per-task=1`` does), else the rank's index on its node."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and len([d for d in visible.split(",") if d.strip()]) == 1:
        return 0
    return local_rank


def communicator(backend, MPI, world):
    """The data-parallel communicator for ``backend``'s arrays over ``world``: NCCL on
    the GPUs (MPI broadcasts NCCL's id), else MPI all-reduces on host buffers."""
    if backend.transport == "nccl":
        import cupy
        return NcclCommunicator(MPI, world, cupy, nccl_module())
    return MpiCommunicator(MPI, world, backend)


def _mpi():
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:   # RuntimeError: mpi4py found no MPI library
        reason = " ".join(str(exc).split())
        raise DistributedError(f"--distributed needs mpi4py and MPI ({reason}): "
                               f"{INSTALL_HINT}") from None
    return MPI


def nccl_module():
    """``cupy.cuda.nccl``, checked to have loaded the NCCL library."""
    hint = ("pip install -e '.[cuda12-distributed]' (or '.[cuda13-distributed]'), which "
            "brings the NCCL wheel for that CUDA major version")
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedError(f"--distributed on the cupy backend needs CuPy's NCCL "
                               f"module ({exc}): {hint}") from None
    if not nccl.available:      # the module imports, but libnccl could not be loaded
        raise DistributedError(f"--distributed on the cupy backend needs the NCCL library, "
                               f"which CuPy could not load: {hint}")
    return nccl
