"""The math is written against the array API standard's array object, not NumPy's: a scan
of the device-side source for NumPy-only array attributes and methods.

Found by running on PyTorch: ``weights.size``, which is the standard's attribute on NumPy
but a method on ``torch.Tensor`` (the reference backward passed the method as a row
count). NumPy's ``.astype``, ``.copy``, ``.flat``, ``.fill``, ``.sum`` ... are absent or
different on other conforming libraries in the same way; the portable spellings are the
namespace's functions (``xp.astype(x, t)``, ``xp.sum(x)``) and, for a size,
``math.prod(x.shape)``.

Scanned: every module of brainlike_np/ and backends/reference/ that does not import NumPy
(those that do hold host NumPy arrays on purpose: data, checkpoints, generation).
"""

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [*sorted((ROOT / "brainlike_np").rglob("*.py")),
           *sorted((ROOT / "backends" / "reference").rglob("*.py"))]
# the standard's array attributes, less ``size`` (a method on torch.Tensor)
STANDARD = {"dtype", "device", "mT", "ndim", "shape", "T", "to_device"}
NUMPY_ONLY = {a for a in dir(np.ndarray) if not a.startswith("_")} - STANDARD
NAMESPACES = {"xp", "self.xp", "math"}      # xp.sum(...) is the portable spelling
OBJECTS = {"self", "comm", "json", "state"}  # roots of attribute chains that are not arrays


def imports_numpy(tree) -> bool:
    return any(isinstance(node, ast.Import) and any(a.name == "numpy" for a in node.names)
               or isinstance(node, ast.ImportFrom) and node.module == "numpy"
               for node in ast.walk(tree))


def is_allowed_receiver(node) -> bool:
    """A namespace, a host array (``backend.to_numpy(...)``), or an attribute chain from an
    object that is not an array (``self.layout``, ``comm``)."""
    text = ast.unparse(node)
    if text in NAMESPACES:
        return True
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        return func == "get_namespace" or func.endswith(".to_numpy")
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in OBJECTS and "[" not in text


def non_portable(source: str) -> list:
    """``(line, receiver.attribute)`` for each NumPy-only attribute used on an array."""
    return [(node.lineno, f"{ast.unparse(node.value)}.{node.attr}")
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr in NUMPY_ONLY
            and not is_allowed_receiver(node.value)]


def test_the_scan_finds_numpy_spellings():
    found = non_portable("n = weights.size\ny = cache.a.astype(t)\nz = self.m['w'].copy()\n"
                         "ok = xp.sum(x) + x.shape[0] + comm.size + backend.to_numpy(x).tolist()[0]")
    assert [what for _, what in found] == ["weights.size", "cache.a.astype", "self.m['w'].copy"]


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: str(p.relative_to(ROOT)))
def test_device_code_uses_only_the_standards_array_attributes(path):
    tree = ast.parse(path.read_text())
    if imports_numpy(tree):
        pytest.skip("host code: holds NumPy arrays on purpose")
    found = non_portable(path.read_text())
    assert not found, (f"{path.relative_to(ROOT)}: NumPy-only array attributes {found}; "
                       "use the namespace's functions (xp.astype, xp.sum, math.prod(x.shape))")
