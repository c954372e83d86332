"""Our loss and every gradient agree with PyTorch autograd on the same architecture and
weights (float64). Skipped where PyTorch is not installed: the package never needs it."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from brainlike_np import model
from brainlike_np import transformer as tr
from brainlike_np.backends import get_backend
from brainlike_np.config import preset

torch = pytest.importorskip("torch", reason="PyTorch is optional (the bench extra)")

TORCH_REF = Path(__file__).resolve().parents[1] / "bench" / "torch_ref.py"
BRAINLIKE_TINY = preset("tiny")
CASES = {
    "brainlike-tiny": ("brainlike", model, BRAINLIKE_TINY),
    # tau = 0.5 masks some keys; tau = 0.9 leaves a sample with no key at all
    "brainlike-tiny-masking": ("brainlike", model, BRAINLIKE_TINY.with_overrides(tau=0.5)),
    "brainlike-tiny-no-keys": ("brainlike", model, BRAINLIKE_TINY.with_overrides(tau=0.9)),
    "transformer-tiny": ("transformer", tr, tr.preset("tiny")),
}


@pytest.fixture(scope="module")
def torch_ref():
    spec = importlib.util.spec_from_file_location("torch_ref", TORCH_REF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perturbed_host_params(module, cfg, seed=1):
    """Initial parameters plus noise, so zero-initialised weights are generic."""
    backend = get_backend("numpy")
    params = module.init_params(cfg, backend, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 100)
    return {n: np.asarray(v) + 0.3 * rng.standard_normal(v.shape) for n, v in params.items()}


def windows(cfg, B=5, seed=3):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, size=(B, cfg.context)),
            rng.integers(0, cfg.vocab_size, size=B))


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_every_gradient_agree_with_autograd(torch_ref, case):
    name, module, cfg = CASES[case]
    backend = get_backend("numpy")
    x, y = windows(cfg)
    host = perturbed_host_params(module, cfg)

    ours_p = {n: backend.asarray(v, backend.dtype("float64")) for n, v in host.items()}
    loss, grads = module.loss_and_grads(ours_p, backend.asarray(x), backend.asarray(y), cfg,
                                        backend.ops)
    ref_loss, ref_grads = torch_ref.loss_and_grads(
        name, torch_ref.to_torch(host), torch.from_numpy(x), torch.from_numpy(y), cfg)

    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert set(grads) == set(ref_grads)
    for n, ref in ref_grads.items():
        ref = ref.numpy()
        assert np.any(ref != 0), f"{n}: autograd gives no gradient, the check is empty"
        np.testing.assert_allclose(np.asarray(grads[n]), ref, rtol=1e-9,
                                   atol=1e-12 * np.max(np.abs(ref)), err_msg=n)


@pytest.mark.parametrize("case, coverage", [("brainlike-tiny-masking", "some keys masked"),
                                            ("brainlike-tiny-no-keys", "a query with no key")])
def test_the_masking_cases_cover_what_they_claim(torch_ref, case, coverage):
    _, module, cfg = CASES[case]
    x, _ = windows(cfg)
    key_masks = []
    torch_ref.brainlike_logits(torch_ref.to_torch(perturbed_host_params(module, cfg)),
                               torch.from_numpy(x), cfg, key_masks)
    keep = torch.stack(key_masks)                                   # [S, B, k]
    assert not bool(keep.all()), coverage
    if coverage == "a query with no key":
        assert bool((~keep.any(dim=-1)).any()), coverage
