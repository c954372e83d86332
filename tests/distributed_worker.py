"""One MPI rank of the trainer with a fault injected on one rank, for test_distributed.py.

    mpirun -n 2 python tests/distributed_worker.py FAULT RANK STEP <train flags>

After training step STEP, rank RANK (only) suffers FAULT:
  raise   an exception inside the training step;
  exit    the process dies on the spot (no cleanup, no MPI finalize);
  sigint  a Ctrl-C delivered to that rank alone.
"""

import os
import signal
import sys

from brainlike_np import train
from brainlike_np.train_state import TrainState


def fail_by_raising(step):
    raise RuntimeError(f"injected fault after step {step}")


def fail_by_dying(step):
    os._exit(3)


def interrupt(step):
    os.kill(os.getpid(), signal.SIGINT)


FAULTS = {"raise": fail_by_raising, "exit": fail_by_dying, "sigint": interrupt}


def inject(fault, rank: int, at_step: int) -> None:
    real_step = TrainState.train_step

    def step_with_fault(self, x, y, lr):
        metrics = real_step(self, x, y, lr)
        if self.comm.rank == rank and self.step == at_step:
            fault(self.step)
        return metrics

    TrainState.train_step = step_with_fault


if __name__ == "__main__":
    fault_name, rank, step, *train_flags = sys.argv[1:]
    inject(FAULTS[fault_name], int(rank), int(step))
    sys.exit(train.main(train_flags))
