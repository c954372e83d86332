"""The numpy backend's host memory policy: freed array memory is reused, so a step does
not fault its temporaries' pages in again; BRAINLIKE_HOST_MALLOC=system opts out."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource
from brainlike_np.backends import get_backend
from brainlike_np.backends.host_memory import keep_freed_memory
from brainlike_np.data import random_batch
from brainlike_np.models import brainlike
backend, cfg = get_backend("numpy"), brainlike.PRESETS["default"]
params = brainlike.init_params(cfg, backend)
x, y = (backend.asarray(a) for a in random_batch(64, cfg.context))
brainlike.loss_and_grads(params, x, y, cfg, backend.ops)          # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    brainlike.loss_and_grads(params, x, y, cfg, backend.ops)
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_probe(policy):
    env = {**os.environ, "BRAINLIKE_HOST_MALLOC": policy}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    not os.confstr("CS_GNU_LIBC_VERSION"), reason="the policy is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    """Three forward+backward passes (default preset and batch, 64) after a warm-up:
    with the policy their temporaries reuse the warm-up's pages; with the C library's
    defaults they fault thousands of pages in again (about 9x as many here; at batch 16
    no array of the step is large enough any more, since attention forms no
    [B, h, k, k] scores on numpy, and both fault the same)."""
    applied, faults = run_probe("reuse")
    system_applied, system_faults = run_probe("system")
    assert applied and not system_applied
    assert faults * 5 < system_faults, (faults, system_faults)
