"""Counting the array operations a computation issues: the instrument of the launch budget.

On a GPU every array operation is one kernel launch plus some microseconds of Python, so
the number of operations a training step issues bounds how fast it can run however fast
the device is. :func:`counting_backend` gives a backend on array-api-strict's arrays that
counts, while :meth:`LaunchCounter.counting` is active:

- every call of a namespace function (``xp.sum``, ``xp.where``, ...), whether the code
  got the namespace from ``backend.xp`` or from its arrays (``get_namespace``);
- every array operator that computes (``a + b``, ``a @ b``, ``a *= s``, ``a[ids]``,
  ``a[i] = b``), but not the conversions to host values (those are host reads);
- every ``backend.ops`` call, as one (a kernel on numpy and cupy).

A function that only views its input (``reshape``, ``permute_dims``, ``matrix_transpose``,
basic slicing, ``asarray`` or ``astype`` of an array that needs no copy) counts only when
it had to copy. Calls made inside a counted call (a namespace function built on others,
the reference ops' own operations) are not counted again: the count is what the calling
code asks for, independent of how the library implements it.

The counted arrays are NumPy's underneath, so a reshaped slice of a contiguous array is a
view that writes through, as on NumPy and CuPy: the counting namespace says so
(``views_alias``), and the training step then takes the flat-buffer path those backends
take. The count is therefore that of a numpy or cupy step.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np

from .backend import ArrayApiStrictBackend
from .reference import ReferenceOps

# functions that may return a view of their first argument: they count only when they copy
VIEW_FUNCTIONS = frozenset({"reshape", "permute_dims", "matrix_transpose", "expand_dims",
                            "squeeze", "broadcast_to", "asarray", "astype", "__getitem__"})
# functions that describe dtypes or devices and launch nothing
METADATA_FUNCTIONS = frozenset({"isdtype", "finfo", "iinfo", "result_type", "can_cast",
                                "__array_namespace_info__", "get_array_api_strict_flags",
                                "set_array_api_strict_flags", "reset_array_api_strict_flags"})
# array methods that hand a value to the host or describe the array: not launches
NOT_COUNTED_METHODS = frozenset({
    "__new__", "__init__", "__repr__", "__str__", "__reduce__", "__hash__", "__float__",
    "__int__", "__bool__", "__index__", "__complex__", "__array__", "__buffer__",
    "__dlpack__", "__dlpack_device__", "__iter__", "__array_namespace__", "__module__",
    "__doc__", "__slots__", "__annotations__", "__weakref__"})


class LaunchCounter:
    """Counts operations by part: ``total``, ``by_part`` (label -> count; operations
    outside any :meth:`part` go to ``"other"``)."""

    def __init__(self):
        self.total = 0
        self.by_part: dict[str, int] = {}
        self._parts = ["other"]
        self._depth = 0            # > 0 inside a counted call: nested calls do not count
        self._active = False

    @contextlib.contextmanager
    def part(self, label: str):
        """Attribute the operations issued inside to ``label`` (the innermost wins)."""
        self._parts.append(label)
        try:
            yield
        finally:
            self._parts.pop()

    def reset(self) -> None:
        self.total, self.by_part = 0, {}

    def _add(self) -> None:
        self.total += 1
        label = self._parts[-1]
        self.by_part[label] = self.by_part.get(label, 0) + 1

    def call(self, fn, args, kwargs, may_view: bool = False):
        """Run ``fn(*args, **kwargs)``, counting it once unless it is nested in a counted
        call or, for ``may_view``, returned a view of an argument."""
        if not self._active or self._depth:
            return fn(*args, **kwargs)
        self._depth += 1
        try:
            out = fn(*args, **kwargs)
        finally:
            self._depth -= 1
        if not (may_view and _is_view(out, args)):
            self._add()
        return out

    @contextlib.contextmanager
    def counting(self):
        """Count while inside: array-api-strict's arrays report the counting namespace
        and count their operators (the patches are undone on exit)."""
        import array_api_strict
        array_type = type(array_api_strict.asarray(0.0))
        namespace = CountingNamespace(array_api_strict, self)
        saved = {}
        for name, method in list(vars(array_type).items()):
            if name.startswith("__") and callable(method) and name not in NOT_COUNTED_METHODS:
                saved[name] = method
                setattr(array_type, name, _counted_method(self, method, name))
        saved["__array_namespace__"] = array_type.__array_namespace__
        array_type.__array_namespace__ = lambda self_, api_version=None: namespace
        self._active = True
        try:
            yield self
        finally:
            self._active = False
            for name, method in saved.items():
                setattr(array_type, name, method)


def _counted_method(counter, method, name):
    may_view = name in VIEW_FUNCTIONS

    def counted(*args, **kwargs):
        return counter.call(method, args, kwargs, may_view)

    counted.__name__ = name
    return counted


def _is_view(out, args) -> bool:
    """Whether ``out`` (an array) shares memory with an array among ``args``."""
    data = getattr(out, "_array", None)
    if not isinstance(data, np.ndarray):
        return False
    return any(isinstance(getattr(a, "_array", None), np.ndarray)
               and np.shares_memory(data, a._array) for a in args)


class CountingNamespace:
    """A namespace whose functions count through a :class:`LaunchCounter`; constants,
    dtypes and metadata functions pass through. Submodules (``linalg``) count too."""

    views_alias = True        # see the module docstring

    def __init__(self, inner, counter):
        self.__name__ = f"counting.{inner.__name__}"
        self._inner, self._counter = inner, counter

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if isinstance(value, types.ModuleType):
            return CountingNamespace(value, self._counter)
        if not callable(value) or isinstance(value, type) or name in METADATA_FUNCTIONS:
            return value
        may_view = name in VIEW_FUNCTIONS
        counter = self._counter

        def counted(*args, **kwargs):
            return counter.call(value, args, kwargs, may_view)

        return counted


class CountingOps:
    """``backend.ops`` whose every call counts one (a kernel on numpy and cupy)."""

    def __init__(self, inner, counter):
        self._inner, self._counter = inner, counter
        self.name = f"counting.{inner.name}"

    def __getattr__(self, name):
        method = getattr(self._inner, name)
        counter = self._counter

        def counted(*args, **kwargs):
            return counter.call(method, args, kwargs)

        return counted


class CountingBackend(ArrayApiStrictBackend):
    """array-api-strict with every operation counted by ``counter`` (inside
    ``counter.counting()``) and the reference ops."""

    name = "counting"

    @classmethod
    def create_counting(cls, counter: LaunchCounter) -> "CountingBackend":
        import array_api_strict as xp
        backend = cls(CountingNamespace(xp, counter), xp.Device("CPU_DEVICE"),
                      CountingOps(ReferenceOps(xp), counter))
        backend.counter = counter
        return backend


def counting_backend() -> CountingBackend:
    """A fresh counting backend; its counter is ``backend.counter``. RuntimeError if
    array-api-strict's views no longer write through (the count would then be of a
    step that does not work)."""
    import array_api_strict as xp
    flat = xp.zeros(4)
    view = xp.reshape(flat[1:3], (2,))
    view += 1.0
    if float(xp.sum(flat)) != 2.0:
        raise RuntimeError("array-api-strict's views do not write through: the counting "
                           "backend cannot run the flat-buffer step")
    return CountingBackend.create_counting(LaunchCounter())
