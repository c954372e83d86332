"""The cross-backend test matrix: every test that takes ``backend`` runs on numpy,
array-api-strict and (where a GPU is usable) cupy."""

import pytest

from brainlike_np.backends import BACKEND_NAMES, backend_is_available, get_backend


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    ok, reason = backend_is_available(request.param)
    if not ok:
        pytest.skip(reason)
    return get_backend(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param
