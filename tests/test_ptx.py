"""Every CUDA kernel compiled to PTX for sm_80 (A100) and sm_90 (H100/H200), on the CPU,
with no GPU and no driver: the type-checking and lowering the CUDA simulator never does.

NVVM (and NVRTC, which Numba asks for the architectures it supports) come from NVIDIA's
wheels in the ``ptx`` extra (``pip install -e ".[ptx]"``; CI installs it). Without them
the test skips, saying so; with the extra installed, a toolkit that cannot be loaded is
a failure, never a skip.

Each architecture compiles in a fresh interpreter (this file run as a script): the
kernels must see the real ``numba.cuda``, not the simulator a test may have chosen.

Signatures: every kernel, for float32 and float64 and, if it takes ids, for int32 and
int64 ids. The models pass int64 ids (host batches, CuPy's argsort); int32 ids are what the tests
pass. Sort orders, segment bounds and flat keys are int64 whatever the ids
(``argsort``/``searchsorted`` results; ``NumbaCudaOps`` allocates the keys). Arrays are
C-contiguous: ``NumbaCudaOps`` makes them so before a launch. Key masks are bool.
"""

import importlib
import importlib.metadata
import os
import subprocess
import sys
import types

import pytest

ARCHITECTURES = [(8, 0), (9, 0)]
FLOATS, IDS = ("float32", "float64"), ("int32", "int64")
NO_TOOLKIT = 3          # the script's exit code when NVVM / NVRTC cannot be found

# the modules whose kernels (not device functions) are compiled
KERNEL_MODULES = ("numba_cuda.ops", "numba_cuda.attention", "numba_cuda.rmsnorm",
                  "numba_cuda.step_tail")
# kernel -> its arguments: F float array, I id array, K int64 array, B bool array; 1 to 4
# dimensions; S0 a float64 scalar
KERNEL_ARGS = {
    "_gather_rows_kernel": ("F2", "I1", "F2"),
    "_scatter_add_rows_kernel": ("I1", "F2", "F2"),
    "_segment_sum_rows_kernel": ("K1", "K1", "F2", "F2"),
    "_gather_weighted_sum_kernel": ("F2", "F2", "I2", "F2"),
    "_gather_weighted_sum_backward_kernel": ("F2", "I2", "F2", "F2", "I2", "F2", "F2"),
    "_gather_weighted_sum_backward_terms_kernel": ("F2", "I2", "F2", "F2", "I2",
                                                   "K1", "F1", "K1", "F1"),
    "_attention_forward_kernel": ("F4", "F4", "F4", "B2", "F4", "F3"),
    "_attention_backward_kernel": ("F4", "F4", "F4", "F4", "F3", "B2", "F4", "F3",
                                   "F4", "F4", "F4"),
    "_rmsnorm_forward_kernel": ("F2", "F1", "S0", "F2", "F1"),
    "_rmsnorm_backward_rows_kernel": ("F2", "F2", "F1", "F1", "F2"),
    "_rmsnorm_gain_grad_kernel": ("F2", "F2", "F1", "F1"),
    "_step_tail_forward_kernel": ("F2", "F2", "F1", "F1", "F1", "F2", "F2", "F1"),
    "_step_tail_backward_rows_kernel": ("F2", "F1", "F2", "F1", "F1", "F2", "F2", "F1"),
    "_readout_grads_kernel": ("F1", "F2", "F1", "F1"),
    "_tanh_backward_kernel": ("F2", "F2", "F2"),
}


def id_types(args) -> tuple:
    """The id widths to compile a kernel for: both if it takes ids, else one."""
    return IDS if any(a[0] == "I" for a in args) else IDS[:1]


def signature(args, float_type: str, id_type: str) -> str:
    """("F2", "I1") -> "void(float32[:, ::1], int64[::1])": C-contiguous arrays."""
    dims = {"0": "", "1": "[::1]", "2": "[:, ::1]", "3": "[:, :, ::1]", "4": "[:, :, :, ::1]"}
    element = {"F": float_type, "I": id_type, "K": "int64", "B": "boolean", "S": "float64"}
    return f"void({', '.join(element[a[0]] + dims[a[1]] for a in args)})"


# ---- the script: compile everything for one architecture --------------------------------
def toolkit_missing() -> str | None:
    """Why NVVM, NVRTC or libdevice cannot be used here, or None when they can."""
    from numba.cuda import cuda_paths
    from numba.cuda.cudadrv import nvvm
    try:
        paths = cuda_paths.get_cuda_paths()     # finds NVRTC, NVVM and libdevice
        nvvm.NVVM()                             # loads libnvvm
    except Exception as exc:                    # cuda.pathfinder's DynamicLibNotFoundError, ...
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if paths["libdevice"].info is None:
        return "libdevice.10.bc not found"
    for part in ("nvvm", "nvrtc", "libdevice"):     # where they came from, for the log
        print(f"{part}: {paths[part].info} (found via {paths[part].by})", file=sys.stderr)
    return None


def compile_all(cc: tuple[int, int]) -> None:
    """Compile every kernel for ``cc``; print one line per kernel; raise on the first
    kernel that does not compile, or a kernel without a signature here."""
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda import compile_ptx

    # A kernel's calls to device functions (@cuda.jit(device=True)) compile them for
    # "the current device", which needs a driver; here the device is the one asked for.
    assert hasattr(dispatcher, "get_current_device"), "numba-cuda moved get_current_device"
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)

    kernels = {}
    for module in KERNEL_MODULES:
        module = importlib.import_module(f"brainlike_np.backends.{module}")
        kernels.update({name: obj for name, obj in vars(module).items()
                        if isinstance(obj, dispatcher.CUDADispatcher)
                        and not obj.targetoptions["device"]})
    unlisted = kernels.keys() ^ KERNEL_ARGS.keys()
    assert not unlisted, f"kernels in {KERNEL_MODULES} and KERNEL_ARGS differ: {unlisted}"
    for name, kernel in kernels.items():
        for float_type in FLOATS:
            for id_type in id_types(KERNEL_ARGS[name]):
                sig = signature(KERNEL_ARGS[name], float_type, id_type)
                ptx, _ = compile_ptx(kernel.py_func, sig, cc=cc)
                assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx, (name, sig)
                print(f"sm_{cc[0]}{cc[1]} {name} {sig}: {len(ptx)} characters of PTX")


def main(argv) -> int:
    cc = tuple(int(part) for part in argv[1].split("."))
    reason = toolkit_missing()
    if reason:
        print(reason)
        return NO_TOOLKIT
    compile_all(cc)
    return 0


# ---- the test ---------------------------------------------------------------------------
def ptx_extra_installed() -> bool:
    """True when the ``ptx`` extra's NVVM wheel is installed (it must then work)."""
    try:
        importlib.metadata.distribution("nvidia-nvvm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize("cc", ARCHITECTURES, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_every_cuda_kernel_compiles_to_ptx(cc):
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run([sys.executable, __file__, f"{cc[0]}.{cc[1]}"], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode == NO_TOOLKIT and not ptx_extra_installed():
        pytest.skip(f"no NVVM/NVRTC to compile PTX with ({result.stdout.strip()}): "
                    "pip install -e '.[ptx]'")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    compiled = result.stdout.strip().splitlines()
    expected = sum(len(FLOATS) * len(id_types(args)) for args in KERNEL_ARGS.values())
    assert len(compiled) == expected, result.stdout


if __name__ == "__main__":
    sys.exit(main(sys.argv))
