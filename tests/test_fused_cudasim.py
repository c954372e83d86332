"""The fused ops' CUDA kernels (attention, RMSNorm, the step's tail) against their
array-API definitions in Numba's CUDA simulator: each family in its own process, since
the simulator is chosen when Numba is first imported (tests/cudasim_fused_checks.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cudasim_fused_checks.py")


@pytest.mark.parametrize("family", ["attention", "rmsnorm", "step_tail"])
def test_cuda_kernels_in_simulator(family):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, str(SCRIPT), family], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
