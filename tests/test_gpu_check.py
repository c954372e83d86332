"""bench/gpu_check.py without a GPU: the report written after every stage and readable
however the run ends (stages chosen, the deadline, SIGTERM), NCCL's absence a skip and
never a failure (CuPy stubbed), and the device/CPU loss comparison's handling of top-k
choices (the numpy backend standing in for the device)."""

import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from brainlike_np.backends import get_backend
from brainlike_np.data import random_batch
from brainlike_np.models import brainlike
from brainlike_np.train_state import TrainSettings, TrainState

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_stages  # noqa: E402
import gpu_training  # noqa: E402
from gpu_report import Context, CutOff, Deadline, Stage, run_stages, verdict  # noqa: E402


def read_report(out: Path) -> dict:
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith(f"# GPU check ({report['backend']})")
    return report


def statuses(report: dict) -> dict:
    return {st["name"]: st["status"] for st in report["stages"]}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def dry_context(tmp_path, deadline) -> Context:
    return Context("numpy", tmp_path, gpu_check.DRY, deadline)


# ---- the report, the stages chosen, the deadline -----------------------------------------
def test_the_chosen_stages_run_in_order_and_the_report_reads_back(tmp_path):
    code = gpu_check.main(["--backend", "numpy", "--out", str(tmp_path),
                           "--stages", "agreement,environment"])
    report = read_report(tmp_path)
    assert list(statuses(report).items()) == [("agreement", "passed"), ("environment", "passed")]
    assert report["verdict"] == "passed" and code == 0
    assert report["deadline_s"] == gpu_check.DEFAULT_DEADLINE_S


def test_an_unknown_stage_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--backend", "numpy",
                           "--out", str(tmp_path), "--stages", "kernels,bogus"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: argument --stages: unknown stage 'bogus'; choose from:")
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_passed_deadline_skips_the_remaining_stages_and_still_writes(tmp_path):
    code = gpu_check.main(["--backend", "numpy", "--out", str(tmp_path),
                           "--stages", "environment,kernels", "--deadline", "0"])
    report = read_report(tmp_path)
    assert statuses(report) == {"environment": "skipped: deadline", "kernels": "skipped: deadline"}
    assert report["verdict"] == "INCOMPLETE" and code == 1


def test_the_report_is_rewritten_after_every_stage_and_a_stage_is_cut_off_between_steps(tmp_path):
    clock = FakeClock()
    ctx = dry_context(tmp_path, Deadline(10, clock))
    seen = []

    def fails(ctx, st):
        st.check("a check that fails", False)

    def raises(ctx, st):
        raise RuntimeError("broken")

    def slow(ctx, st):
        for step in range(100):
            ctx.deadline.check()
            st.check(f"step {step}", True)
            clock.now += 3

    def never(ctx, st):
        raise AssertionError("ran after the deadline")

    stages = [("fails", fails), ("raises", raises), ("slow", slow), ("never", never)]
    results = run_stages(ctx, stages, lambda results: seen.append(
        [(st.name, st.status) for st in results]))
    assert [dict(s) for s in seen] == [
        {"fails": "not run yet", "raises": "not run yet", "slow": "not run yet",
         "never": "not run yet"},
        {"fails": "failed", "raises": "not run yet", "slow": "not run yet", "never": "not run yet"},
        {"fails": "failed", "raises": "error", "slow": "not run yet", "never": "not run yet"},
        {"fails": "failed", "raises": "error", "slow": "cut off: deadline", "never": "not run yet"},
        {"fails": "failed", "raises": "error", "slow": "cut off: deadline",
         "never": "skipped: deadline"}]
    assert len(results[2].checks) == 4                  # steps at t = 0, 3, 6, 9 kept
    assert "RuntimeError: broken" in results[1].error
    assert verdict(results) == "FAILED"


def test_a_subprocess_gets_at_most_the_time_left(tmp_path):
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.monotonic()
    with pytest.raises(CutOff, match="deadline"):
        dry_context(tmp_path, Deadline(1.0)).run(sleep, limit=300)
    with pytest.raises(subprocess.TimeoutExpired):  # its own limit: an error, not the deadline
        dry_context(tmp_path, Deadline(300)).run(sleep, limit=1.0)
    assert time.monotonic() - start < 30
    with pytest.raises(CutOff):                      # nothing starts after the deadline
        dry_context(tmp_path, Deadline(0)).run([sys.executable, "-c", "pass"], limit=300)


def test_sigterm_mid_run_leaves_a_report_that_says_how_far_it_got(tmp_path):
    """The report parses every time it is looked at while the check runs; SIGTERM during
    the end-to-end stage (a job's time limit) records that stage as cut off."""
    check = subprocess.Popen([sys.executable, str(BENCH / "gpu_check.py"), "--backend", "numpy",
                              "--out", str(tmp_path), "--stages", "environment,end-to-end,kernels"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        report, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            if (tmp_path / "gpu_check.json").exists():
                report = read_report(tmp_path)
                assert report["verdict"] in ("INCOMPLETE", "passed")
                if statuses(report)["environment"] != "not run yet":
                    break
            time.sleep(0.05)
        assert statuses(report)["end-to-end"] == "not run yet"
        time.sleep(0.5)                                  # into the first training run
        check.send_signal(signal.SIGTERM)
        check.communicate(timeout=60)
    finally:
        check.kill()
    report = read_report(tmp_path)
    assert statuses(report) == {"environment": "passed", "end-to-end": "cut off: terminated",
                                "kernels": "skipped: terminated"}
    assert report["verdict"] == "INCOMPLETE" and check.returncode == 1


# ---- NCCL is optional (CuPy stubbed) ---------------------------------------------------------
def stub_cupy(monkeypatch, nccl_available: bool | None):
    """A ``cupy`` with a runtime that reports one H200, and an NCCL module that loaded
    (True), could not load its library (False) or is missing (None)."""
    runtime = types.SimpleNamespace(
        driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000, getDevice=lambda: 0,
        getDeviceProperties=lambda i: {"name": b"NVIDIA H200", "totalGlobalMem": 141 * 2**30,
                                       "memoryClockRate": 0, "memoryBusWidth": 6144})
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime, cuda.__path__ = runtime, []                       # a package
    cupy = types.ModuleType("cupy")
    cupy.__version__, cupy.cuda = "14.2.0", cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    if nccl_available is None:
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", None)        # import fails
    else:
        cuda.nccl = types.SimpleNamespace(available=nccl_available)
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", cuda.nccl)
    monkeypatch.setattr(gpu_stages.importlib.metadata, "version", lambda name: "0.30.4")


@pytest.mark.parametrize("nccl_available", [False, None], ids=["library-missing", "no-module"])
def test_without_nccl_only_the_nccl_stage_is_skipped(tmp_path, monkeypatch, nccl_available):
    stub_cupy(monkeypatch, nccl_available)
    # the stages' GPU branches, on numpy arrays: the environment stage's matmul and kernel
    monkeypatch.setattr(gpu_stages, "get_backend", lambda name, **kw: get_backend("numpy", **kw))
    monkeypatch.setattr(gpu_stages.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(gpu_stages.importlib.util, "find_spec", lambda name: object())
    ctx = Context("cupy", tmp_path, gpu_check.GPU, Deadline(60))
    results = run_stages(ctx, [("environment", gpu_stages.stage_environment),
                               ("nccl", gpu_stages.stage_nccl)], lambda results: None)
    environment, nccl = results
    assert environment.status == "passed", environment.error or environment.checks
    assert environment.figures["nccl"].startswith("not installed")
    assert environment.figures["gpu"] == "NVIDIA H200"
    assert nccl.status == "skipped" and nccl.error.startswith("NCCL not installed")
    assert verdict(results) == "passed"


def test_with_nccl_the_nccl_stage_runs(monkeypatch):
    stub_cupy(monkeypatch, True)
    assert gpu_stages.nccl_status() == "available"


# ---- device vs CPU losses: robust to a top-k boundary flip -------------------------------------
class Topk:
    """numpy ops with another top-k rule, standing in for a device's kernels."""

    def __init__(self, ops, rule):
        self.ops, self.rule, self.name = ops, rule, "stand-in device"

    def __getattr__(self, name):
        return getattr(self.ops, name)

    def topk(self, z, k):
        return self.rule(np.asarray(z), k)


def swap_kth_and_next(z, k):
    """A boundary flip in every row: the (k+1)-th largest in place of the k-th."""
    order = np.argsort(-z, axis=1, kind="stable")
    return np.concatenate([order[:, :k - 1], order[:, k:k + 1]], axis=1)


def numpy_backend(topk_rule=None):
    backend = get_backend("numpy", kernels="reference")
    if topk_rule:
        backend.ops = Topk(backend.ops, topk_rule)
    return backend


def own_losses(backend, steps=20):
    """The losses of compare_training's run on one backend alone (its own top-k)."""
    state = TrainState.create("brainlike", brainlike.PRESETS["tiny"], backend,
                              TrainSettings(seed=0, batch_size=4))
    return np.array([state.train_step(*random_batch(4, 8, seed=step),
                                      lr=gpu_training.COMPARE_LR)["loss"]
                     for step in range(steps)])


def test_the_cpu_takes_the_devices_top_k_choices_so_a_flip_does_not_fail_the_losses():
    """Every row flipped at the boundary: the CPU, following the device's choices, gets
    the device's losses; choosing for itself it would not. These flips are not near-ties,
    so the tie check (which keeps the replay from hiding a wrong top-k) fails."""
    st = Stage("agreement")
    gpu_training.compare_training(numpy_backend(swap_kth_and_next), numpy_backend(),
                                  brainlike.PRESETS["tiny"], 20, 4, st)
    losses_ok, ties_ok = (c["ok"] for c in st.checks)
    assert losses_ok and not ties_ok
    assert st.figures["top-k rows where the device chose otherwise than the CPU"] == 20 * 4
    assert st.figures["first 20 losses, max relative difference"] == 0.0
    flipped, own = own_losses(numpy_backend(swap_kth_and_next)), own_losses(numpy_backend())
    assert np.max(np.abs(flipped / own - 1)) > gpu_training.LOSS_RTOL


def test_a_near_tie_taken_from_the_device_passes_and_a_real_difference_does_not():
    replay = gpu_training.ReplayTopk(get_backend("numpy", kernels="reference").ops, [])
    z = np.array([[3.0, 2.0, 1.0 + 1e-6, 1.0], [3.0, 2.0, 1.5, 1.0]])
    replay.choices.append(np.array([[0, 1, 3], [0, 1, 2]]))          # row 0: a near-tie
    np.testing.assert_array_equal(replay.topk(z, 3), [[0, 1, 3], [0, 1, 2]])
    assert replay.rows_differing == 1 and 0 < replay.worst_shortfall <= gpu_training.TIE_RTOL
    replay.choices.append(np.array([[0, 1, 2], [0, 1, 3]]))          # row 1: 1.0 for 1.5
    replay.topk(z, 3)
    assert replay.rows_differing == 2 and replay.worst_shortfall == pytest.approx(0.5 / 3)


def test_a_wrong_loss_on_the_device_fails_the_comparison():
    device = numpy_backend()
    right = device.ops.gather_rows
    device.ops.gather_rows = lambda *args: 1.1 * right(*args)      # gathered rows 10% off
    st = Stage("agreement")
    gpu_training.compare_training(device, numpy_backend(), brainlike.PRESETS["tiny"], 5, 4, st)
    assert not st.checks[0]["ok"], st.figures


# ---- the PyTorch route ---------------------------------------------------------------------------
def test_the_torch_stage_is_skipped_with_the_reason_without_pytorch(tmp_path, monkeypatch):
    import gpu_torch
    monkeypatch.setitem(sys.modules, "torch", None)               # as if not installed
    results = run_stages(dry_context(tmp_path, Deadline(60)),
                         [("torch-cuda", gpu_torch.stage_torch)], lambda results: None)
    assert results[0].status == "skipped" and "pip install -e '.[torch]'" in results[0].error
    assert verdict(results) == "passed"


def test_the_torch_stage_is_skipped_on_a_gpu_where_pytorch_sees_none(tmp_path, monkeypatch):
    import gpu_torch
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ctx = Context("cupy", tmp_path, gpu_check.GPU, Deadline(60))
    results = run_stages(ctx, [("torch-cuda", gpu_torch.stage_torch)], lambda results: None)
    assert results[0].status == "skipped" and "sees no CUDA GPU" in results[0].error
