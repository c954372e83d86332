"""The GPU acceptance check: one command, one report of everything the GPU path needs.

    python bench/gpu_check.py --out gpu-report                 # a GPU machine (< 8 min)
    python bench/gpu_check.py --backend numpy --out /tmp/dry   # dry run of the plumbing (CPU)
    python bench/gpu_check.py --out gpu-report --stages environment,kernels --deadline 120

The stages, in order (``--stages`` picks some):

1. environment (gpu_stages.py): driver, CUDA runtime, CuPy, numba-cuda, the GPU, whether
   NCCL loads (recorded, not required); one matmul and one Numba kernel on the
   backend's arrays, with any warnings they raise;
2. kernels (gpu_stages.py): every Numba kernel (atomic and deterministic) and the
   reference ops on the device against the reference ops on NumPy, float32 and float64;
3. model-tests (gpu_stages.py): ``pytest -k cupy`` (gradient checks, sparse vs dense,
   numpy agreement, the bit-identical resume chain on the deterministic kernels);
4. end-to-end (gpu_training.py): training, --resume and generation through the CLIs; the
   checkpoint read with NumPy alone; memory figures; two memory trackers in one process;
5. agreement (gpu_training.py): the first 20 training steps' losses against the CPU's on
   the same batches, the CPU following the device's top-k choices (near-ties checked);
6. performance (gpu_performance.py): step time and peak memory against PyTorch eager, up
   to the largest batch that fits 8 GiB; host reads per step; kernel bandwidth;
7. nccl (gpu_stages.py): ``mpirun -n 1 ... --distributed`` for a few steps; skipped, never
   failed, where NCCL (or MPI) is not installed;
8. torch-cuda (gpu_torch.py): the torch backend on CUDA: its ops against the reference,
   training, --resume and generation, ``pytest -k torch``; skipped, with the reason, where
   PyTorch is not installed or sees no GPU;
9. jax-gpu (gpu_stages.py): the jax backend on JAX's GPU, its ops against the reference
   and tests/test_jax.py; skipped, never failed, where JAX with a GPU is not installed.

A stage that fails or raises is recorded and the next one still runs. The report
(``DIR/gpu_check.json`` and ``.md``) is rewritten before the first and after every stage
(gpu_report.py), so it is there however the run ends. ``--deadline`` bounds the whole
run: subprocesses get at most the time left, in-process stages check it between steps,
and the stages not started by then are reported "skipped: deadline".

``--backend numpy`` runs the same stages on the CPU at small sizes (the GPU-only parts
are recorded as skipped, with the reason) in well under a minute: CI runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))           # gpu_*.py, kernels.py, measure.py: by name

from brainlike_np.cli import OneLineParser  # noqa: E402
from gpu_performance import stage_performance  # noqa: E402
from gpu_report import Context, Deadline, report, run_stages, verdict, write_report  # noqa: E402
from gpu_stages import (stage_environment, stage_jax_gpu, stage_kernels,  # noqa: E402
                        stage_model_tests, stage_nccl)
from gpu_torch import stage_torch  # noqa: E402
from gpu_training import stage_agreement, stage_end_to_end  # noqa: E402

GIB = 2**30
# A job on the target machine may run 10 minutes; the check is to end within 8. The
# default leaves a minute of the 8 for the in-process step running when the deadline
# passes (one batch size of the sweep, one kernel case) and for writing the report.
DEFAULT_DEADLINE_S = 7 * 60

STAGES = {"environment": stage_environment, "kernels": stage_kernels,
          "model-tests": stage_model_tests, "end-to-end": stage_end_to_end,
          "agreement": stage_agreement, "performance": stage_performance,
          "nccl": stage_nccl, "torch-cuda": stage_torch, "jax-gpu": stage_jax_gpu}


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""
    kernels: dict                  # B, N, D, k, T, V of the kernel checks
    train_preset: str              # end to end and agreement
    train_steps: int
    compare_steps: int             # training steps compared with the CPU's
    compare_batch: int
    perf_presets: tuple
    first_batch: int
    budget_bytes: int              # "largest batch that fits"
    timed_steps: int


GPU = Sizes(kernels=dict(B=256, N=4096, D=256, k=128, T=128, V=256), train_preset="default",
            train_steps=100, compare_steps=20, compare_batch=64, perf_presets=("default", "seed"),
            first_batch=32, budget_bytes=8 * GIB, timed_steps=5)
DRY = Sizes(kernels=dict(B=8, N=256, D=16, k=8, T=16, V=64), train_preset="tiny",
            train_steps=20, compare_steps=20, compare_batch=4, perf_presets=("tiny",),
            first_batch=4, budget_bytes=4 * 2**20, timed_steps=2)


def stage_list(text: str) -> list:
    """``--stages a,b``: (name, function) in the order given."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage {', '.join(map(repr, unknown)) or 'list'}; "
                         f"choose from: {','.join(STAGES)}")
    return [(n, STAGES[n]) for n in names]


def parse_args(argv):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--backend", choices=["cupy", "numpy"], default="cupy",
                        help="numpy: a dry run of the plumbing on the CPU, small sizes")
    parser.add_argument("--stages", type=stage_list, default=list(STAGES.items()),
                        help=f"comma-separated, in the order to run (default: {','.join(STAGES)})")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, metavar="SECONDS",
                        help="stop starting stages, and cut the running one off, this many "
                             f"seconds after the start (default {DEFAULT_DEADLINE_S}: the "
                             "whole run ends within 8 minutes)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.backend, out, GPU if args.backend == "cupy" else DRY,
                  Deadline(args.deadline))
    command = " ".join(["python bench/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])

    def write(results):
        write_report(out, report(ctx, results, command, time.perf_counter() - start))

    results = run_stages(ctx, args.stages, write)
    print(f"{verdict(results)}: report in {out / 'gpu_check.md'}")
    return 0 if verdict(results) == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
