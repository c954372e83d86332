"""The GPU check's stages that look at the installation and the kernels: environment,
kernels against the reference, the model test matrix, NCCL. Each is ``stage(ctx, st)``
(see gpu_report.py); gpu_training.py and gpu_performance.py hold the others."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
import warnings

import numpy as np

import array_api_compat.numpy as numpy_namespace
from brainlike_np.backends import get_backend
from brainlike_np.backends.reference import ReferenceOps
from gpu_report import Context, Skipped, Stage, errors, tail
from gpu_training import logged

GIB = 2**30
# max |got - want| / max |want| allowed against the NumPy reference
KERNEL_TOL = {"float32": 1e-5, "float64": 1e-12}
NCCL_HINT = ("pip install nvidia-nccl-cu13 (or -cu12), or the '.[cuda13-distributed]' extra; "
             "only data-parallel training on GPUs needs it")


# ---- environment -----------------------------------------------------------------------
def stage_environment(ctx: Context, st: Stage) -> None:
    """Versions, the GPU, and one matmul and one Numba kernel on the backend's arrays.
    NCCL is recorded, not required: only the nccl stage needs it."""
    st.figures.update(python=platform.python_version(), numpy=np.__version__,
                      numba=importlib.metadata.version("numba"))
    if ctx.gpu_only(st, "driver, CUDA runtime, CuPy, numba-cuda, NCCL, GPU"):
        st.figures.update(gpu_versions())
    backend = get_backend(ctx.backend, kernels="numba")   # outside: its warning filters stay
    a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        product = backend.to_numpy(backend.asarray(a) @ backend.asarray(a))
        rows = backend.to_numpy(backend.ops.gather_rows(backend.asarray(a),
                                                        backend.asarray(np.array([5, 0]))))
    st.check(f"matmul on {ctx.backend}", np.allclose(product, a @ a, rtol=1e-4, atol=1e-4))
    st.check(f"a Numba kernel ({backend.ops.name}) on {ctx.backend} arrays",
             np.array_equal(rows, a[[5, 0]]))
    st.figures["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    st.check("no warnings from the matmul or the kernel", not caught,
             st.figures["warnings"] or "")


def gpu_versions() -> dict:
    import cupy
    runtime = cupy.cuda.runtime
    props = device_props()
    return {"driver_cuda": cuda_version(runtime.driverGetVersion()),
            "cuda_runtime": cuda_version(runtime.runtimeGetVersion()),
            "cupy": cupy.__version__, "numba_cuda": importlib.metadata.version("numba-cuda"),
            "nccl": nccl_status(), "gpu": props["name"].decode(),
            "gpu_memory_gib": round(props["totalGlobalMem"] / GIB, 1),
            "memory_bandwidth_bytes_s": device_bandwidth(props)}


def nccl_status() -> str:
    """"available", or "not installed: <why>" (never raises: NCCL is optional)."""
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        return f"not installed: CuPy has no NCCL module ({exc})"
    if not nccl.available:            # the module imports, but libnccl could not be loaded
        return "not installed: CuPy could not load the NCCL library"
    return "available"


def device_props() -> dict:
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())


def cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def device_bandwidth(props: dict) -> float | None:
    """Peak memory bandwidth in bytes/s: clock (kHz) x bus width (bits) x 2 (DDR) / 8;
    None where the runtime no longer reports the clock (CUDA 13 dropped the field)."""
    if not props.get("memoryClockRate"):
        return None
    return props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] * 2 / 8


# ---- kernels against the reference -----------------------------------------------------
def stage_kernels(ctx: Context, st: Stage) -> None:
    """Every hot-path op of every implementation on the device against the reference ops
    on NumPy, float32 and float64; the deadline is checked between cases."""
    backend = get_backend(ctx.backend, kernels="reference")
    impls = {"reference": backend.ops, **numba_impls(ctx)}
    check_ops_against_numpy(ctx, backend, impls, st)
    check_determinism(backend, impls, st)
    check_out_of_range(ctx, st)


def numba_impls(ctx: Context) -> dict:
    if ctx.gpu:
        from brainlike_np.backends.numba_cuda import NumbaCudaOps
        return {"numba-cuda atomic": NumbaCudaOps(),
                "numba-cuda deterministic": NumbaCudaOps(deterministic=True)}
    from brainlike_np.backends.numba_cpu import NumbaCpuOps
    return {"numba serial": NumbaCpuOps(), "numba parallel": NumbaCpuOps(parallel_min_work=0)}


def check_ops_against_numpy(ctx: Context, backend, impls: dict, st: Stage) -> None:
    """Each implementation of ``impls`` (name -> ops on ``backend``'s arrays) against the
    reference ops on NumPy, over :func:`kernel_cases` in float32 and float64; the deadline
    is checked between cases."""
    host_ref = ReferenceOps(numpy_namespace)
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        for case, op, args in kernel_cases(ctx.sizes.kernels, dtype, rng):
            ctx.deadline.check()
            want = as_list(getattr(host_ref, op)(*args))
            on_device = tuple(backend.asarray(a) if isinstance(a, np.ndarray) else a
                              for a in args)
            for name, ops in impls.items():
                got = [backend.to_numpy(g) for g in as_list(getattr(ops, op)(*on_device))]
                error = max(relative_error(g, w) for g, w in zip(got, want))
                st.check(f"{case}, {dtype}, {name}", error <= KERNEL_TOL[dtype],
                         f"error {error:.1e}")


def kernel_cases(s: dict, dtype: str, rng) -> list:
    """(case, op, host args) for every hot-path operation, as the sparse path uses it,
    at sizes ``s``."""
    B, N, D, k, T, V = (s[key] for key in ("B", "N", "D", "k", "T", "V"))

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    tokens = rng.integers(0, V, (B, T))                                  # [B, T]
    z = np.round(normal(B, N), 2)                                        # [B, N], ties
    idx = np.argsort(-z, axis=1, kind="stable")[:, :k]                   # [B, k]
    E, P = normal(V, N), normal(T, N)
    return [
        ("gather embedding rows", "gather_rows", (normal(V, D), tokens)),
        ("gather neuron rows", "gather_rows", (normal(N, D), idx)),
        ("scatter-add embedding rows", "scatter_add_rows",
         (tokens.reshape(-1), normal(B * T, D), V)),
        ("scatter-add neuron rows", "scatter_add_rows", (idx.reshape(-1), normal(B * k, D), N)),
        ("top-k", "topk", (z, k)),
        ("gathered weighted sum", "gather_weighted_sum", (E, tokens, P)),
        ("gathered weighted sum backward", "gather_weighted_sum_backward",
         (normal(B, k), idx, E, tokens, P)),
    ] + fused_cases(s, normal, rng)


def fused_cases(s: dict, normal, rng) -> list:
    """(case, op, host args) for the fused ops of a training step: attention within the
    active set (masked) and over the context, RMSNorm, the interaction step's tail."""
    B, D, k, T = (s[key] for key in ("B", "D", "k", "T"))
    h = 4                                                                # heads
    ref = ReferenceOps(numpy_namespace)
    q, kk, v = normal(B, h, k, D // h) / 4, normal(B, h, k, D // h), normal(B, h, k, D // h)
    keep = rng.random((B, k)) > 0.3                                      # [B, k] key mask
    keep[:, 0] = True                                                    # no empty row
    _, lse = ref.attention_forward(q, kk, v, keep)
    x, g = normal(B, k, D), normal(D)
    _, r = ref.rmsnorm_forward(x, g, 1e-6)
    Y, H, w_a, b_a, z = normal(B, k, D), normal(B, k, D), normal(D), normal(), normal(B, k)
    H_new, U, a = ref.step_tail_forward(Y, H, w_a, b_a, z)
    return [
        ("attention in the set", "attention_forward", (q, kk, v, keep)),
        ("attention over the context", "attention_forward",
         (q, normal(B, h, T, D // h), normal(B, h, T, D // h), None)),
        ("attention backward", "attention_backward", (normal(*q.shape), q, kk, v, lse, keep)),
        ("RMSNorm", "rmsnorm_forward", (x, g, 1e-6)),
        ("RMSNorm backward", "rmsnorm_backward", (normal(B, k, D), x, r, g)),
        ("step tail", "step_tail_forward", (Y, H, w_a, b_a, z)),
        ("step tail backward", "step_tail_backward",
         (normal(B, k, D), normal(B, k), U, H_new, a, w_a)),
    ]


def as_list(result) -> list:
    return list(result) if isinstance(result, tuple) else [result]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (inf for a shape or dtype mismatch)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return float("inf")
    if got.size == 0:
        return 0.0
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    return float(diff / max(np.abs(want.astype(np.float64)).max(), 1e-30))


def check_determinism(backend, impls: dict, st: Stage) -> None:
    """The deterministic / serial scatter-add gives the same bits twice."""
    name = next(n for n in impls if "deterministic" in n or "serial" in n)
    rng = np.random.default_rng(1)
    ids = backend.asarray(rng.integers(0, 7, 5000))
    rows = backend.asarray(rng.standard_normal((5000, 33)).astype(np.float32))
    first, second = (backend.to_numpy(impls[name].scatter_add_rows(ids, rows, 7))
                     for _ in range(2))
    st.check(f"{name} scatter-add is bitwise reproducible", np.array_equal(first, second))


def check_out_of_range(ctx: Context, st: Stage) -> None:
    if ctx.gpu:
        st.skip("ids out of range", "the CUDA ops do not check ids (a check reads the device "
                                    "on every call); batches are checked on the host")
        return
    ops = numba_impls(ctx)["numba serial"]
    try:
        ops.gather_rows(np.zeros((4, 2), np.float32), np.array([0, 4]))
    except ValueError as exc:
        st.check("ids out of range: one-line ValueError", "out of range" in str(exc), exc)
    else:
        st.check("ids out of range: one-line ValueError", False, "no error")


# ---- the model test matrix -------------------------------------------------------------
def stage_model_tests(ctx: Context, st: Stage) -> None:
    """``pytest -k cupy``; on the GPU, none of those tests may skip for want of one."""
    done = ctx.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                    "-k", "cupy", "tests"], limit=300)
    lines = done.stdout.strip().splitlines() or [done.stderr]
    st.figures["pytest -k cupy"] = lines[-1]
    st.check("pytest -k cupy passes", done.returncode == 0,
             tail(done.stdout, 15) if done.returncode else "")
    if ctx.gpu_only(st, "the cupy-parametrized tests (they skip without a GPU)"):
        no_gpu = [line for line in lines if line.startswith("SKIPPED") and "'cupy'" in line]
        st.check("the cupy tests ran, none skipped for want of a GPU", not no_gpu,
                 " | ".join(no_gpu[:3]))


# ---- NCCL ------------------------------------------------------------------------------
def stage_nccl(ctx: Context, st: Stage) -> None:
    """``mpirun -n 1 ... --distributed`` for 5 steps: NCCL on the GPU (MPI in the dry run).
    Skipped, never failed, where NCCL, mpirun or mpi4py is not installed."""
    mpirun = shutil.which("mpirun")
    if mpirun is None or importlib.util.find_spec("mpi4py") is None:
        raise Skipped("not installed: needs mpirun and mpi4py (apt-get install openmpi-bin; "
                      "pip install mpi4py)")
    if ctx.gpu:
        nccl = nccl_status()
        if nccl != "available":
            raise Skipped(f"NCCL {nccl}: {NCCL_HINT}")
    else:
        st.skip("NCCL", "dry run: the same command on the numpy backend (MPI transport)")
    run_dir = ctx.out / "distributed"
    shutil.rmtree(run_dir, ignore_errors=True)
    flags = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    done = ctx.run([mpirun, *flags, "--oversubscribe", "-n", "1", sys.executable, "-m",
                    "brainlike_np.train", "--distributed", "--preset", "tiny",
                    "--max-iters", "5", "--eval-every", "5", "--eval-batches", "1",
                    "--out-dir", run_dir], limit=180)
    ok = done.returncode == 0 and len(logged(run_dir, "loss")) == 5
    st.check("mpirun -n 1 ... --distributed: 5 steps", ok, errors(done))


# ---- JAX on the GPU ------------------------------------------------------------------
def stage_jax_gpu(ctx: Context, st: Stage) -> None:
    """The jax backend on JAX's GPU: its native ops on the device against the reference
    ops on NumPy, then ``pytest tests/test_jax.py`` there (the compiled step against the
    numpy backend, donation, the guard, the trainer and generator). Skipped, never
    failed, where JAX or its GPU is not installed (the GPU image has no JAX) and in the
    dry run."""
    backend = jax_gpu_backend(ctx)
    check_ops_against_numpy(ctx, backend, {f"jax on {backend.device}": backend.ops}, st)
    done = ctx.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                    "tests/test_jax.py"], limit=300,
                   env=ctx.env(BRAINLIKE_BACKEND="jax", BRAINLIKE_DEVICE="gpu"))
    lines = done.stdout.strip().splitlines() or [done.stderr]
    st.figures["pytest tests/test_jax.py on the GPU"] = lines[-1]
    st.check("tests/test_jax.py passes on JAX's GPU", done.returncode == 0,
             tail(done.stdout, 15) if done.returncode else "")


def jax_gpu_backend(ctx: Context):
    """The jax backend on the GPU; Skipped with the reason where there is none."""
    if not ctx.gpu:
        raise Skipped("dry run: JAX's GPU is checked on a GPU machine only")
    if importlib.util.find_spec("jax") is None:
        raise Skipped("JAX is not installed (the GPU image has none): pip install "
                      "'jax[cuda12]' (or 'jax[cuda13]') to check this route")
    from brainlike_np.backends import BackendError
    try:
        return get_backend("jax", device="gpu")
    except BackendError as exc:
        raise Skipped(str(exc)) from None
