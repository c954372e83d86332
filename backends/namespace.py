"""The array-API namespace and device of arrays, whatever library made them."""

from __future__ import annotations

from array_api_compat import array_namespace
from array_api_compat import device as device_of


def get_namespace(*arrays):
    """The array-API namespace of ``arrays`` (Chainer's ``get_array_module``)."""
    return array_namespace(*arrays)


__all__ = ["device_of", "get_namespace"]
