"""Our loss and every gradient agree with PyTorch autograd on the same architecture and
weights (float64). Skipped where PyTorch is not installed: the package never needs it."""

import numpy as np
import pytest

from brainlike_np.backends import get_backend
from brainlike_np.data import random_batch
from brainlike_np.models import MODELS, get_model, get_preset
from conftest import load_bench_module
from gradcheck import SIZES, perturbed_params, sized_preset

torch = pytest.importorskip("torch", reason="PyTorch is optional (the bench extra)")

# every registered model at its tiny preset and at sizes no two alike, none a power of
# two (gradcheck.ODD_SIZES), plus the brain-like key mask's edge cases (tau = 0.5 masks
# some keys; tau = 0.9 leaves a sample with no key at all), each activation update and
# decoder read, and the Transformer trained on its last position
CASES = {name if sizes == "tiny" else f"{name}-{sizes}": (name, sized_preset(name, sizes))
         for name in MODELS for sizes in SIZES}
TINY_BRAIN = get_preset("brainlike", "tiny")
CASES["brainlike-masking"] = ("brainlike", TINY_BRAIN.with_overrides(tau=0.5))
CASES["brainlike-no-keys"] = ("brainlike", TINY_BRAIN.with_overrides(tau=0.9))
for update, reads in (("residual", "last"), ("replace", "all"), ("residual", "all")):
    CASES[f"brainlike-{update}-{reads}"] = ("brainlike", TINY_BRAIN.with_overrides(
        tau=0.5, act_update=update, decoder_reads=reads))
CASES["transformer-last"] = ("transformer", get_preset("transformer", "tiny").with_overrides(
    targets="last"))


@pytest.fixture(scope="module")
def torch_ref():
    return load_bench_module("torch_ref")


def perturbed_host_params(model, cfg):
    backend = get_backend("numpy")
    return {n: backend.to_numpy(v) for n, v in perturbed_params(backend, model, cfg).items()}


def windows(cfg, B=5, seed=3):
    return random_batch(B, cfg.context, cfg.vocab_size, seed)


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_every_gradient_agree_with_autograd(torch_ref, case):
    name, cfg = CASES[case]
    if name not in torch_ref.LOSSES:
        pytest.skip(f"bench/torch_ref.py has no PyTorch reference of model '{name}'")
    module = get_model(name)
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


@pytest.mark.parametrize("case, coverage", [("brainlike-masking", "some keys masked"),
                                            ("brainlike-no-keys", "a query with no key")])
def test_the_masking_cases_cover_what_they_claim(torch_ref, case, coverage):
    name, cfg = CASES[case]
    x, _ = windows(cfg)
    key_masks = []
    torch_ref.brainlike_logits(torch_ref.to_torch(perturbed_host_params(get_model(name), cfg)),
                               torch.from_numpy(x), cfg, key_masks)
    keep = torch.stack(key_masks)                                   # [S, B, k]
    assert not bool(keep.all()), coverage
    if coverage == "a query with no key":
        assert bool((~keep.any(dim=-1)).any()), coverage
