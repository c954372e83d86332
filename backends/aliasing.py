"""Which namespaces make a reshaped slice of a contiguous array a view that writes through.

NumPy, CuPy and PyTorch do, so the optimizer keeps parameters, gradients and moments in one flat
buffer each, with every parameter a view into it (one reduction for the global norm, one
pass for the update). The array API standard leaves it unspecified, so array-api-strict,
standing for any conforming library, keeps one array per parameter. A namespace wrapper
that knows its arrays alias (the launch counter's, ``counting.py``) says so with a
``views_alias`` attribute.
"""

from __future__ import annotations

from array_api_compat import is_cupy_namespace, is_numpy_namespace, is_torch_namespace


def views_alias(xp) -> bool:
    """True where writing through ``reshape(flat[a:b], shape)`` writes into ``flat``."""
    return (getattr(xp, "views_alias", False) or is_numpy_namespace(xp) or is_cupy_namespace(xp)
            or is_torch_namespace(xp))
