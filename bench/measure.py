"""The benchmarks' measurement library: timing, memory (traced and resident), the record
of the machine, and one measurement run in a fresh process.

The rules it carries out (bench/README.md says why):

- a comparison between libraries measures each in its own fresh process
  (``in_fresh_process``): two allocators in one process distort each other;
- OpenBLAS picks its kernel when NumPy loads it, and this machine's environment forces
  one that users don't have (``FORCED_BLAS_VARS``): every script runs without those
  variables (``use_native_blas_kernel``, and the fresh processes it starts) unless
  given ``--forced-blas-kernel``;
- every result records the machine (``environment()``) and how busy it was
  (``machine_load()``), before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GIB, MIB = 2 ** 30, 2 ** 20
FORCED_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")
# glibc returns freed large blocks to the OS at once, so resident memory tracks arrays
# (it slows NumPy's temporaries by page faults: for memory runs only, never for timing);
# the numpy backend's host memory policy, which keeps freed blocks, is switched off
RESIDENT_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
                       "BRAINLIKE_HOST_MALLOC": "system"}
# the numpy backend's policy (backends/host_memory.py) is process-wide: a PyTorch process
# that draws our weights through a numpy backend must keep the allocator's defaults
OTHER_LIBRARY_ENV = {"BRAINLIKE_HOST_MALLOC": "system"}


def worker_env(what: str, ours: bool) -> dict:
    """The environment added to a measuring process: ``what`` "time" or "memory"; ``ours``
    False for another library (PyTorch)."""
    return {**(RESIDENT_MEMORY_ENV if what == "memory" else {}),
            **({} if ours else OTHER_LIBRARY_ENV)}


# ---------------------------------------------------------------------------------
# time
# ---------------------------------------------------------------------------------
def take_turns(calls: dict, repeats: int, sync, warmup: int = 0, between=None) -> dict:
    """Wall times of each of ``calls`` (name -> function): ``warmup`` untimed calls each,
    then ``repeats`` rounds in which the calls take turns, so a slow spell of the
    machine hits them all; ``sync()`` waits for the device, and ``between()``, if
    given, runs untimed before every timed call. -> name -> list of seconds."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            if between is not None:
                between()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def best_time(sync, fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs (the caller has warmed up). Best,
    not median: other work on a shared machine only ever adds time."""
    return min(take_turns({"fn": fn}, repeats, sync)["fn"])


# ---------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------
def traced_peak(backend, fn) -> int:
    """Peak bytes of arrays allocated while ``fn()`` runs, above what was alive before,
    in the backend's own accounting (tracemalloc on the host, a pool hook on CuPy)."""
    memory = backend.memory_tracker(exact_peak=True)
    memory.reset_peak()
    base = memory.current_bytes()
    fn()
    backend.synchronize()
    peak = memory.peak_bytes() - base
    memory.stop()
    return peak


def resident_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def resident_peak(fn) -> int:
    """Peak resident memory while ``fn()`` runs, above the resident memory before it (any
    library's allocations; run under ``RESIDENT_MEMORY_ENV``)."""
    base = resident_bytes()
    Path("/proc/self/clear_refs").write_text("5")            # resets VmHWM to VmRSS
    fn()
    return resident_bytes("VmHWM") - base


def torch_cuda_peak(fn) -> int:
    """Peak bytes PyTorch's CUDA allocator hands out while ``fn()`` runs, above before."""
    import torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def fmt_bytes(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if abs(b) >= GIB else f"{b / MIB:.0f} MiB"


# ---------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------
def environment() -> dict:
    """The machine and software behind a result: CPU, cores, library versions, the BLAS
    kernels in use, thread counts, and whether the BLAS kernel was forced."""
    import numba
    return {
        "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": {name: installed_version(name) for name in ("numpy", "numba", "torch")},
        "blas": blas_libraries(),
        "threads": {**{v: os.environ.get(v, "default") for v in THREAD_VARS},
                    "numba": numba.get_num_threads(),
                    "numba_threading_layer": numba_threading_layer()},
        "forced_blas_env": {v: os.environ.get(v) for v in FORCED_BLAS_VARS},
    }


def cpu_model() -> str:
    """The first CPU's model name with its family and model numbers: a virtual machine may
    name only the vendor's line ("AMD EPYC"), and generations of one line time differently
    (the same step took 0.70 s on one "AMD EPYC" and 0.43 s on a family 26 one)."""
    cpuinfo = Path("/proc/cpuinfo")
    fields = {}
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if not line.strip():
            break                                  # the first CPU's block only
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model") if key in fields]
    return fields["model name"] + (f" ({', '.join(numbers)})" if numbers else "")


def installed_version(distribution: str) -> str | None:
    """The installed version, without importing the package (PyTorch would bring its
    allocator and threads into the measuring process)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def blas_libraries() -> list:
    """The BLAS and OpenMP libraries this process has loaded, with the OpenBLAS kernel
    (``architecture``) and thread count of each."""
    from threadpoolctl import threadpool_info
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def numba_threading_layer() -> str | None:
    """Numba's threading layer (known once a parallel kernel has run)."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def machine_load() -> dict:
    """How busy the machine is: the kernel's CPU pressure (share of time some task waited
    for a CPU) and the load average. Other work on a shared machine slows every timing."""
    pressure = Path("/proc/pressure/cpu")
    return {"cpu_pressure": pressure.read_text().splitlines()[0] if pressure.exists() else None,
            "load_average": list(os.getloadavg())}


# ---------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------
def add_worker_arguments(parser) -> None:
    """``--forced-blas-kernel`` and the hidden ``--worker SPEC`` of a script that measures
    in fresh processes of itself (see ``start``)."""
    add_blas_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def start(args, worker) -> bool:
    """The first lines of such a script's ``main``: as a worker, measure ``args.worker``
    with ``worker`` and print it (-> True: the script is done); as the driver, go on
    with the native BLAS kernel (-> False)."""
    if args.worker:
        serve(args.worker, worker)
        return True
    use_native_blas_kernel(args.forced_blas_kernel)
    return False


def add_blas_argument(parser) -> None:
    parser.add_argument("--forced-blas-kernel", action="store_true",
                        help=f"keep {' and '.join(FORCED_BLAS_VARS)} from the environment "
                             "(default: remove them, as users don't have them)")


def measuring_env(forced_blas_kernel: bool, extra: dict | None = None) -> dict:
    """This process's environment, without the forced BLAS kernel unless asked, plus
    ``extra``."""
    env = dict(os.environ, **(extra or {}))
    if not forced_blas_kernel:
        for var in FORCED_BLAS_VARS:
            env.pop(var, None)
    return env


def use_native_blas_kernel(forced_blas_kernel: bool) -> None:
    """Run this script again, as the same command, without the forced BLAS kernel: NumPy
    has loaded OpenBLAS already, and OpenBLAS reads the variables only then."""
    if forced_blas_kernel or not any(var in os.environ for var in FORCED_BLAS_VARS):
        return
    print(f"running again without {', '.join(FORCED_BLAS_VARS)} (--forced-blas-kernel "
          "keeps them)", file=sys.stderr, flush=True)
    os.execve(sys.executable, sys.orig_argv, measuring_env(False))


def in_fresh_process(script: Path, spec: dict, *, forced_blas_kernel: bool = False,
                     env: dict | None = None, launcher: tuple = ()) -> dict:
    """Run ``python script --worker SPEC`` in a fresh process (under ``launcher``, e.g.
    mpirun), its environment ``measuring_env`` plus ``env``; -> the JSON object it
    printed last (see ``serve``)."""
    command = [*launcher, sys.executable, str(script), "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env=measuring_env(forced_blas_kernel, env))
    if done.returncode:
        raise RuntimeError(f"worker {Path(script).name} {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serve(spec_json: str, measure) -> None:
    """The fresh process's side: print ``measure(spec)`` as JSON, with the BLAS libraries
    this process ran on; a ``None`` result (an MPI rank other than 0) prints nothing."""
    result = measure(json.loads(spec_json))
    if result is not None:
        print(json.dumps({**result, "blas": blas_libraries()}))


# ---------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------
def machine_line(env: dict) -> str:
    """``environment()`` as one line of markdown."""
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items() if v)
    blas = ", ".join(f"{b['internal_api']}" + (f" kernel {b['architecture']}"
                                                 if b["architecture"] else "")
                     + f" ({b['num_threads']} threads)" for b in env["blas"])
    forced = [f"{var}={value}" for var, value in env["forced_blas_env"].items() if value]
    return (f"Machine: {env['cpu']}, {env['cores']} cores; {versions}; {blas}"
            + (f"; forced: {', '.join(forced)}" if forced else ""))


def load_line(load: dict) -> str:
    """``{"start": machine_load(), "end": machine_load()}`` as one line of markdown."""
    start, end = load["start"], load["end"]
    return (f"CPU pressure from other work at start / end: `{start['cpu_pressure']}` / "
            f"`{end['cpu_pressure']}`; load average (1 min) {start['load_average'][0]:.2f} / "
            f"{end['load_average'][0]:.2f}.")


def pyplot():
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def command_line() -> str:
    return "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
