"""The torch backend: its native ops against the reference ops (as tests/test_kernels.py
checks the Numba kernels), its devices and one-line errors, its memory accounting, and
the trainer and generator end to end on it."""

import subprocess
import sys

import numpy as np
import pytest

from brainlike_np import train
import brainlike_np.generate as gen
from brainlike_np.backends import BackendError, get_backend
from brainlike_np.backends.reference import ReferenceOps
from conftest import single_threaded_torch

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch: pip install -e '.[torch]'")
xp = pytest.importorskip("array_api_compat.torch")
from brainlike_np.backends.torch import TorchOps  # noqa: E402  (needs torch)

import array_api_compat.numpy as np_xp  # noqa: E402

REF = ReferenceOps(np_xp)
OPS = TorchOps(xp)
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(autouse=True)
def one_thread():
    single_threaded_torch()


def normal(rng, shape, dtype_name):
    return rng.standard_normal(shape).astype(dtype_name)


def on_torch(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def assert_close(got, want, dtype_name):
    got = got.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL[dtype_name])


# ---- the native ops against the reference ------------------------------------------
def test_the_torch_backend_uses_the_native_ops():
    assert get_backend("torch").ops.name == "native"
    assert get_backend("torch", kernels="native").ops.name == "native"
    assert get_backend("torch", kernels="reference").ops.name == "reference"
    with pytest.raises(BackendError, match="has no numba kernels; choose kernels 'auto' or 'native'"):
        get_backend("torch", kernels="numba")


@pytest.mark.parametrize("n, n_rows", [(500, 7), (30, 100), (1, 1), (0, 5)])
def test_scatter_add_rows_matches_reference(rng, dtype_name, id_dtype, n, n_rows):
    ids = rng.integers(0, n_rows, n).astype(id_dtype)                   # repeats
    rows = normal(rng, (n, 9), dtype_name)
    assert_close(OPS.scatter_add_rows(*on_torch(ids, rows), n_rows),
                 REF.scatter_add_rows(ids, rows, n_rows), dtype_name)


def test_reproducible_ops_sum_in_a_fixed_order(rng):
    """``reproducible()``: on CUDA the reference's sort-based scatter-add replaces the
    atomic ``index_add_``; on the CPU both give the same bits run after run."""
    same = OPS.reproducible()
    assert same.deterministic and same.reproducible() is same and not OPS.deterministic
    assert REF.reproducible() is REF
    ids, rows = on_torch(rng.integers(0, 7, 3000), normal(rng, (3000, 5), "float32"))
    first, second = (same.scatter_add_rows(ids, rows, 7).numpy() for _ in range(2))
    assert np.array_equal(first, second)
    np.testing.assert_allclose(first, REF.scatter_add_rows(ids.numpy(), rows.numpy(), 7),
                               **TOL["float32"])


@pytest.mark.parametrize("k", [1, 5, 63])
def test_topk_matches_reference(rng, dtype_name, k):
    z = normal(rng, (7, 63), dtype_name)
    z[1] = np.round(z[1])            # many ties, across the k-th value
    z[2] = 0.5                       # all tied
    z[3, [4, 9, 40]] = np.nan        # NaN ranks first, as in a stable descending sort
    z[4] = np.arange(63)             # ascending
    z[5, [3, 30]] = np.inf           # infinities tie with each other, below NaN
    z[5, [7, 50]] = np.nan
    z[6] = np.nan                    # all NaN
    got = OPS.topk(*on_torch(z), k)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), REF.topk(z, k))


def test_topk_empty_batch_zero_k_and_bad_k():
    assert OPS.topk(torch.zeros((0, 8)), 3).shape == (0, 3)
    assert OPS.topk(torch.zeros((2, 8)), 0).shape == (2, 0)
    for k in (-1, 9):
        with pytest.raises(ValueError, match="outside 0..8"):
            OPS.topk(torch.zeros((2, 8)), k)


def test_gather_rows_takes_int32_and_int64_ids(rng, id_dtype):
    table = normal(rng, (20, 3, 4), "float64")
    ids = rng.integers(0, 20, (5, 7)).astype(id_dtype)
    got = OPS.gather_rows(*on_torch(table, ids))
    np.testing.assert_array_equal(got.numpy(), REF.gather_rows(table, ids))


@pytest.mark.parametrize("k", [1, 8, 64])
def test_gather_weighted_sum_and_backward_match_reference(rng, dtype_name, id_dtype, k):
    table, weights = normal(rng, (30, 64), dtype_name), normal(rng, (12, 64), dtype_name)
    ids = rng.integers(0, 30, (4, 10)).astype(id_dtype)
    cols = REF.topk(normal(rng, (4, 64), "float64"), k).astype(id_dtype)   # [B, k]
    dout = normal(rng, (4, k), dtype_name)
    assert_close(OPS.gather_weighted_sum(*on_torch(table, ids, weights)),
                 REF.gather_weighted_sum(table, ids, weights), dtype_name)
    for got, want in zip(OPS.gather_weighted_sum_backward(*on_torch(dout, cols, table, ids, weights)),
                         REF.gather_weighted_sum_backward(dout, cols, table, ids, weights)):
        assert_close(got, want, dtype_name)


# ---- devices and one-line errors ------------------------------------------------------
def test_devices_default_to_the_cpu(monkeypatch):
    monkeypatch.delenv("BRAINLIKE_DEVICE", raising=False)
    assert get_backend("torch").device == torch.device("cpu")
    assert get_backend("torch", device=1).device == torch.device("cpu")   # a rank's index
    backend = get_backend("torch", device="CPU")
    x = backend.asarray(np.arange(6.0).reshape(2, 3))
    assert x.device == torch.device("cpu") and x.dtype == torch.float64
    np.testing.assert_array_equal(backend.to_numpy(x), np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("device, expected", [
    ("tpu", "unknown device 'tpu'; choose cpu, cuda, cuda:N or mps"),
    ("cuda:x", "unknown device 'cuda:x'"),
])
def test_an_unknown_device_is_one_line(device, expected):
    with pytest.raises(BackendError, match=expected) as info:
        get_backend("torch", device=device)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setenv("BRAINLIKE_DEVICE", "cuda")
    with pytest.raises(BackendError, match="sees no CUDA GPU") as info:
        get_backend("torch")
    assert "\n" not in str(info.value)


def test_a_ranks_index_picks_its_gpu(monkeypatch):
    """With $BRAINLIKE_DEVICE=cuda, a data-parallel rank's index is its GPU; an index past
    the visible GPUs is one line (PyTorch's device queries stubbed: no GPU here)."""
    from brainlike_np.backends.torch_probe import torch_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("BRAINLIKE_DEVICE", "cuda")
    assert torch_device(torch, 1) == torch.device("cuda", 1)
    assert torch_device(torch, "cuda:0") == torch.device("cuda", 0)
    with pytest.raises(BackendError, match="GPU 3 was asked for but 2 GPU"):
        torch_device(torch, 3)


def test_missing_torch_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("BRAINLIKE_BACKEND", "torch")
    assert train.main(["--out-dir", str(tmp_path)]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: backend 'torch' needs PyTorch")
    assert "pip install -e '.[torch]'" in lines[0]


# ---- memory accounting ----------------------------------------------------------------
def test_cpu_memory_is_the_resident_memory_and_sees_an_allocation():
    """In a fresh process (no allocator reuse from earlier tests): 64 MiB of PyTorch
    tensor shows in the current and peak resident memory, and the peak stays after it
    is freed until reset."""
    code = """if True:
        import numpy as np
        from brainlike_np.backends import get_backend
        backend = get_backend("torch", device="cpu")
        memory = backend.memory
        assert memory.mode == "resident" and "resident" in memory.label
        memory.reset_peak()
        base = memory.current_bytes()
        x = backend.ones((8 * 2**20,), backend.dtype("float64"))       # 64 MiB, written
        assert memory.current_bytes() - base >= 60 * 2**20
        del x
        assert memory.peak_bytes() - base >= 60 * 2**20
        memory.reset_peak()
        assert memory.peak_bytes() - base < 32 * 2**20
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_without_proc_the_peak_is_said_to_be_unknown(monkeypatch):
    from brainlike_np.backends import memory
    monkeypatch.setattr(memory.os.path, "exists", lambda path: False)
    tracker = memory.MemoryTracker.for_resident()
    tracker.reset_peak()
    assert tracker.mode == "unknown" and tracker.peak_bytes() == 0
    assert tracker.describe_peak(tracker.peak_bytes()).startswith("peak memory unknown")


# ---- the trainer and the generator end to end -----------------------------------------
def test_train_resume_and_generate_on_torch(monkeypatch, capsys, tmp_path):
    """On $BRAINLIKE_DEVICE (the CPU by default; bench/gpu_torch.py runs it on CUDA)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"def add(a, b):\n    return a + b\n" * 80)
    monkeypatch.setenv("BRAINLIKE_BACKEND", "torch")
    out_dir = str(tmp_path / "run")
    run = ["--preset", "tiny", "--eval-every", "2", "--eval-batches", "2", "--data", str(corpus)]
    assert train.main(run + ["--max-iters", "3", "--out-dir", out_dir]) == 0
    assert train.main(["--resume", "--max-iters", "5", "--out-dir", out_dir]) == 0
    out = capsys.readouterr().out
    assert "backend torch (kernels: native)" in out and "done: 5 steps" in out
    assert f"peak {get_backend('torch').memory.label}" in out
    assert gen.main(["--checkpoint", f"{out_dir}/ckpt.npz", "--prompt", "def ",
                     "--max-new-bytes", "12", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text.encode()) >= 4 + 12


# ---- data-parallel: gradients averaged through host buffers ----------------------------
@pytest.mark.parametrize("on_host", [True, False], ids=["cpu", "device"])
def test_allreduce_mean_goes_through_a_host_buffer(monkeypatch, on_host):
    """On the CPU MPI sums the tensor's own memory; from a device (stood for by the CPU
    tensor with ``arrays_on_host`` False) a host copy, one counted read, and back."""
    import types
    from brainlike_np.backends import host_reads
    from brainlike_np.backends.distributed import MpiCommunicator

    def allreduce(_in_place, host, op):    # two ranks holding rank 0's and rank 1's values
        host[...] = host + np.arange(host.shape[0])
    world = types.SimpleNamespace(Get_rank=lambda: 0, Get_size=lambda: 2, Allreduce=allreduce)
    mpi = types.SimpleNamespace(IN_PLACE=None, SUM="sum")
    backend = get_backend("torch", device="cpu")
    monkeypatch.setattr(backend, "arrays_on_host", lambda: on_host)
    flat = backend.asarray(np.array([2.0, 4.0, 6.0]))
    reads = host_reads()
    mean = MpiCommunicator(mpi, world, backend).allreduce_mean(flat)
    assert isinstance(mean, torch.Tensor) and mean.device == backend.device
    np.testing.assert_array_equal(mean.numpy(), [1.0, 2.5, 4.0])
    assert host_reads() - reads == (0 if on_host else 1)
