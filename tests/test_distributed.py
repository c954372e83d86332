"""Data-parallel training under mpirun: two ranks train exactly like one process on the
same global batch; a failing, dying or interrupted rank ends the whole job (no hang) and
leaves a loadable checkpoint; the single-process path never loads MPI."""

import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from brainlike_np import train
from brainlike_np.backends import backend_is_available, get_backend
from brainlike_np.train_state import TrainState

TEXT = (b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 60)
WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
MPIRUN = shutil.which("mpirun")
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
# 10 float64 steps on a global batch of 8 (4 windows per rank), checkpoints at 5 and 10
RUN = ["--preset", "tiny", "--eval-every", "5", "--eval-batches", "2", "--dtype", "float64",
       "--batch-size", "8", "--max-iters", "10"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_bytes(TEXT)
    return str(path)


@functools.cache
def open_mpi() -> bool:
    return "Open MPI" in subprocess.run([MPIRUN, "--version"], capture_output=True,
                                        text=True).stdout


@pytest.fixture(scope="module")
def launcher():
    """``mpirun`` and the flags it needs here (Open MPI: more ranks than cores, root)."""
    if not (MPIRUN and HAS_MPI4PY):
        pytest.skip("needs mpirun and mpi4py: apt-get install openmpi-bin; "
                    "pip install -e '.[distributed]'")
    flags = []
    if open_mpi():
        flags.append("--oversubscribe")
        if os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return [MPIRUN, *flags]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus_file):
    """The reference: RUN in a single process (no --distributed)."""
    out_dir = str(tmp_path_factory.mktemp("one_process"))
    assert train.main(RUN + ["--data", corpus_file, "--out-dir", out_dir]) == 0
    return out_dir


def start(command, backend="numpy") -> subprocess.Popen:
    threads = {"OMP_NUM_THREADS": "1"} if backend == "torch" else {}   # tiny tensors
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, BRAINLIKE_BACKEND=backend, **threads))


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for mpirun; a job still running after ``timeout`` s is a hang: stop it, fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()                       # mpirun passes it on to every rank
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the job hung for {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def mpirun(launcher, argv, timeout=60, backend="numpy") -> subprocess.CompletedProcess:
    """``mpirun -n 2 python ARGV`` on ``backend``."""
    return finish(start(launcher + ["-n", "2", sys.executable, *argv], backend), timeout)


def trainer(*flags):
    return ["-m", "brainlike_np.train", "--distributed", *flags]


def faulty_trainer(fault, rank, step, *flags):
    return [WORKER, fault, str(rank), str(step), "--distributed", *flags]


def checkpoint(out_dir):
    ck = np.load(os.path.join(out_dir, "ckpt.npz"))
    return {k: ck[k] for k in ck.files if k != "meta.json"}, json.loads(ck["meta.json"].tobytes())


def train_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def assert_same_training(out_dir, reference_dir):
    arrays, meta = checkpoint(out_dir)
    ref_arrays, ref_meta = checkpoint(reference_dir)
    assert sorted(arrays) == sorted(ref_arrays)       # params and both AdamW moments
    for name in ref_arrays:
        np.testing.assert_allclose(arrays[name], ref_arrays[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    assert (meta["step"], meta["rng"]) == (ref_meta["step"], ref_meta["rng"])


# ---- the single-process path -----------------------------------------------------------
def test_single_process_run_never_imports_mpi4py(tmp_path, corpus_file):
    script = (
        "import sys\n"
        "from brainlike_np import train\n"
        "assert 'mpi4py' not in sys.modules, 'imported by import brainlike_np.train'\n"
        f"assert train.main({RUN + ['--max-iters', '2', '--data', corpus_file]!r}"
        f" + ['--out-dir', {str(tmp_path)!r}]) == 0\n"
        "assert 'mpi4py' not in sys.modules, 'imported by a single-process run'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_distributed_without_mpi4py_is_a_one_line_error(tmp_path, corpus_file, capsys,
                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)       # as if not installed
    code = train.main(["--distributed"] + RUN + ["--data", corpus_file,
                                                 "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: --distributed needs mpi4py")
    assert "pip install -e '.[distributed]'" in err


# ---- two ranks -------------------------------------------------------------------------
def test_two_ranks_train_like_one_process_on_the_global_batch(
        launcher, tmp_path, corpus_file, one_process):
    result = mpirun(launcher, trainer(*RUN, "--data", corpus_file, "--out-dir", str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert_same_training(tmp_path, one_process)
    # the logged loss is the all-reduced global-batch loss, logged once per step (rank 0)
    losses, ref_losses = train_losses(tmp_path), train_losses(one_process)
    assert [s for s, _ in losses] == [s for s, _ in ref_losses] == list(range(1, 11))
    np.testing.assert_allclose([l for _, l in losses], [l for _, l in ref_losses], rtol=1e-12)
    assert result.stdout.count("done: 10 steps") == 1 and "over 2 ranks" in result.stdout


def test_two_ranks_accumulating_train_like_one_process_on_the_large_batch(
        launcher, tmp_path, corpus_file, one_process):
    """--grad-accum 2 of a global micro-batch of 4 (2 windows per rank) = the batch of 8."""
    run = [*RUN[:RUN.index("--batch-size")], "--batch-size", "4", "--grad-accum", "2",
           *RUN[RUN.index("--batch-size") + 2:]]
    result = mpirun(launcher, trainer(*run, "--data", corpus_file, "--out-dir", str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert_same_training(tmp_path, one_process)
    losses, ref_losses = train_losses(tmp_path), train_losses(one_process)
    np.testing.assert_allclose([l for _, l in losses], [l for _, l in ref_losses], rtol=1e-12)
    assert "batch 4 x 2 micro-batches over 2 ranks" in result.stdout


def test_two_ranks_on_torch_train_like_one_process(launcher, tmp_path, corpus_file,
                                                   monkeypatch):
    """The torch backend's gradients averaged through host buffers (MPI), on the CPU."""
    if not importlib.util.find_spec("torch"):
        pytest.skip("needs PyTorch: pip install -e '.[torch]'")
    monkeypatch.setenv("BRAINLIKE_BACKEND", "torch")
    monkeypatch.setenv("BRAINLIKE_DEVICE", "cpu")      # the ranks inherit it
    one = tmp_path / "one"
    assert train.main(RUN + ["--data", corpus_file, "--out-dir", str(one)]) == 0
    result = mpirun(launcher, trainer(*RUN, "--data", corpus_file, "--out-dir",
                                      str(tmp_path / "two")), backend="torch")
    assert result.returncode == 0, result.stderr
    assert "backend torch" in result.stdout and "over 2 ranks" in result.stdout
    assert_same_training(tmp_path / "two", one)


def test_two_jax_ranks_train_like_one_numpy_process(launcher, tmp_path, corpus_file,
                                                    one_process):
    """On jax each rank compiles its gradients and its update; the gradients are averaged
    on the host between the two. float64: jax agrees with numpy to rounding."""
    ok, reason = backend_is_available("jax")
    if not ok:
        pytest.skip(reason)
    result = mpirun(launcher, trainer(*RUN, "--data", corpus_file, "--out-dir", str(tmp_path)),
                    timeout=240, backend="jax")
    assert result.returncode == 0, result.stderr
    assert_same_training(tmp_path, one_process)
    np.testing.assert_allclose([l for _, l in train_losses(tmp_path)],
                               [l for _, l in train_losses(one_process)], rtol=1e-12)


def test_batch_size_must_split_evenly_across_ranks(launcher, tmp_path, corpus_file):
    result = mpirun(launcher, trainer(*RUN, "--batch-size", "5", "--data", corpus_file,
                                      "--out-dir", str(tmp_path)))
    assert result.returncode != 0       # whichever rank aborts first reports it
    assert re.search(r"error: rank [01]: --batch-size 5 must be divisible by the number of "
                     r"ranks \(2\)", result.stderr)


@pytest.mark.parametrize("rank1_flags, what", [
    (["--seed", "1"], "training settings"),
    (["--tau", "0.02"], "model config"),        # trained to exit 0 with a wrong result
    (["--n-neurons", "64"], "model config"),    # crashed in MPI_Allreduce (double free)
    (["--model", "transformer"], "model"),
    (["--lr", "0.01"], "training settings"),
], ids=["seed", "tau", "n-neurons", "model", "lr"])
def test_ranks_that_disagree_on_the_run_refuse_to_start(launcher, tmp_path, corpus_file,
                                                        rank1_flags, what):
    rank = [sys.executable, *trainer(*RUN, "--data", corpus_file, "--out-dir", str(tmp_path))]
    result = finish(start(launcher + ["-n", "1", *rank, ":", "-n", "1", *rank,
                                      *rank1_flags]), timeout=60)
    assert result.returncode != 0
    assert re.search(rf"error: rank [01]: rank\(s\) \[1\] differ from rank 0 in: "
                     rf"([a-z ]+, )*{what}[,;]", result.stderr), result.stderr
    assert "Traceback" not in result.stderr and "double free" not in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "ckpt.npz"))


def test_ranks_resuming_different_checkpoints_refuse_to_start(launcher, tmp_path, corpus_file,
                                                              one_process):
    """Two checkpoints with the same step, sampler and settings, one parameter changed
    by one ulp: the parameter checksum tells them apart."""
    other = tmp_path / "other"
    other.mkdir()
    with np.load(os.path.join(one_process, "ckpt.npz")) as ck:
        arrays = {k: ck[k] for k in ck.files}
    arrays["params/W_dec"] = np.nextafter(arrays["params/W_dec"], np.inf)
    np.savez(other / "ckpt.npz", **arrays)
    resume = [sys.executable, *trainer("--max-iters", "12", "--out-dir", str(tmp_path / "run"),
                                       "--resume")]
    (tmp_path / "run").mkdir()
    result = finish(start(launcher + ["-n", "1", *resume, os.path.join(one_process, "ckpt.npz"),
                                      ":", "-n", "1", *resume, str(other / "ckpt.npz")]),
                    timeout=60)
    assert result.returncode != 0
    assert "rank(s) [1] differ from rank 0 in: parameters;" in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / "run" / "ckpt.npz")


def test_a_rank_that_raises_ends_the_job_and_the_checkpoint_resumes(
        launcher, tmp_path, corpus_file, one_process):
    """Rank 1 raises after step 7: the job ends (rank 0 is not left waiting in the
    all-reduce of step 8), the step-5 checkpoint is intact, and resuming it on two ranks
    finishes exactly like the uninterrupted single-process run."""
    started = time.perf_counter()
    result = mpirun(launcher, faulty_trainer("raise", 1, 7, *RUN, "--data", corpus_file,
                                             "--out-dir", str(tmp_path)), timeout=30)
    assert result.returncode != 0 and time.perf_counter() - started < 30
    assert "error: rank 1: RuntimeError: injected fault after step 7" in result.stderr
    assert TrainState.load(os.path.join(tmp_path, "ckpt.npz"), get_backend("numpy")).step == 5

    resumed = mpirun(launcher, trainer("--resume", "--out-dir", str(tmp_path)))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training(tmp_path, one_process)


def test_a_rank_that_dies_ends_the_job(launcher, tmp_path, corpus_file):
    result = mpirun(launcher, faulty_trainer("exit", 1, 7, *RUN, "--data", corpus_file,
                                             "--out-dir", str(tmp_path)), timeout=30)
    assert result.returncode != 0
    assert TrainState.load(os.path.join(tmp_path, "ckpt.npz"), get_backend("numpy")).step == 5


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(launcher, tmp_path,
                                                              corpus_file):
    """Only rank 1 sees the Ctrl-C, after step 3; rank 0 must stop there too and save."""
    result = mpirun(launcher, faulty_trainer("sigint", 1, 3, *RUN, "--data", corpus_file,
                                             "--out-dir", str(tmp_path)), timeout=30)
    assert result.returncode != 0
    assert "interrupted at step 3; resume with --resume" in result.stderr
    assert checkpoint(tmp_path)[1]["step"] == 3
    assert [s for s, _ in train_losses(tmp_path)] == [1, 2, 3]


def test_ctrl_c_at_mpirun_saves_a_checkpoint_and_ends_the_job(launcher, tmp_path, corpus_file):
    """Ctrl-C in the terminal signals mpirun alone. Open MPI 4.1 then sends the ranks
    SIGCONT, SIGTERM odls_base_sigkill_timeout seconds later and SIGKILL as long again
    after that (measured with 4.1.4); 3 s instead of 1 leaves rank 0 time to save even
    on a busy machine."""
    ckpt = os.path.join(tmp_path, "ckpt.npz")
    grace = ["--mca", "odls_base_sigkill_timeout", "3"] if open_mpi() else []
    proc = start(launcher + grace + ["-n", "2", sys.executable,
                             *trainer(*RUN, "--max-iters", "100000", "--data", corpus_file,
                                      "--out-dir", str(tmp_path))])
    deadline = time.monotonic() + 30
    while not os.path.exists(ckpt) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    result = finish(proc, timeout=30)
    assert result.returncode != 0
    step = checkpoint(tmp_path)[1]["step"]
    assert 5 <= step < 100000
    assert f"interrupted at step {step}; resume with --resume" in result.stderr


@pytest.mark.parametrize("same_content", [False, True], ids=["other-bytes", "copies"])
def test_ranks_see_the_same_data_by_content_not_by_path(launcher, tmp_path, same_content):
    """Each rank runs in its own folder and reads --data c.txt there: the same flags, the
    same number of bytes. Files of other bytes are refused before the first step; copies
    of the same bytes (as on nodes with their own copy, at another path and time) train."""
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        (tmp_path / f"node{rank}" / "c.txt").write_bytes(TEXT if same_content or rank == 0
                                                         else TEXT[::-1])
    rank = [sys.executable, *trainer(*RUN, "--max-iters", "2", "--data", "c.txt",
                                     "--out-dir", str(tmp_path / "out"))]
    result = finish(start(launcher + ["-n", "1", "-wdir", str(tmp_path / "node0"), *rank, ":",
                                      "-n", "1", "-wdir", str(tmp_path / "node1"), *rank]),
                    timeout=60)
    if same_content:
        assert result.returncode == 0, result.stderr
        assert os.path.exists(tmp_path / "out" / "ckpt.npz")
    else:
        assert result.returncode != 0
        assert "rank(s) [1] differ from rank 0 in: training data;" in result.stderr, \
            result.stderr
        assert not os.path.exists(tmp_path / "out" / "ckpt.npz")
