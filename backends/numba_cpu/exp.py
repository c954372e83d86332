"""An exp that LLVM vectorises, for the Numba CPU kernels of the fused ops.

Numba's ``math.exp`` is a scalar libm call per element, about 10x slower than NumPy's
vector exp on a softmax row (measured on a loaded 2-core VM, so only indicative), and
the llvmlite wheels have no SVML to vectorise it. :func:`exp_row` computes
``exp(x) = 2^n * p(r)`` with ``x = n ln2 + r``, ``|r| <= ln2 / 2``: a Cody-Waite range
reduction, a Taylor polynomial (14 terms: below one unit in the last place in float64),
and n added to the result's exponent bits. Every loop is straight-line code over a row,
in the row's dtype.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

LN2_HI = 0.693145751953125            # ln 2 in 16 bits: n * LN2_HI is exact
LN2_LO = math.log(2.0) - LN2_HI
EXP_TERMS = 14                        # Taylor terms r^0/0! .. r^13/13!
# positions in the constants tuple (module constants: Numba folds them)
LOG2E, LN2_HI_AT, LN2_LO_AT, SMALLEST, HALF, ZERO, NEG_INF, TAYLOR = range(8)


@functools.cache
def exp_constants(dtype) -> tuple:
    """The kernels' constants as a tuple of ``dtype`` scalars (a tuple, not an array:
    passed by value, so LLVM keeps them in registers and the loops stay in ``dtype``):
    log2(e), ln2 in two parts, the smallest argument whose exp is normal (below it the
    exp is 0), 1/2, 0, -inf, then the Taylor coefficients from the highest power down."""
    dtype = np.dtype(dtype)
    taylor = [1.0 / math.factorial(n) for n in range(EXP_TERMS - 1, -1, -1)]
    smallest = math.log(np.finfo(dtype).tiny)
    values = [1.0 / math.log(2.0), LN2_HI, LN2_LO, smallest, 0.5, 0.0, -math.inf] + taylor
    return tuple(dtype.type(c) for c in values)


def integer_like(dtype) -> np.ndarray:
    """A one-element integer array as wide as ``dtype``'s floats: the type of
    :func:`exp_row`'s scratch (``np.empty(n, integer_like.dtype)`` in a kernel)."""
    return np.zeros(1, np.int32 if np.dtype(dtype) == np.float32 else np.int64)


@njit(cache=True, fastmath={"contract"})
def exp_row(x, n_scaled, consts):
    """``x = exp(x)`` in place, for x ``[n]`` up to about 80; arguments whose exp is
    subnormal give 0, NaN stays NaN. n_scaled ``[n]``: scratch of the integer type as
    wide as x's floats; consts: :func:`exp_constants` of x's dtype."""
    smallest, zero, half = consts[SMALLEST], consts[ZERO], consts[HALF]
    log2e, ln2_hi, ln2_lo = consts[LOG2E], consts[LN2_HI_AT], consts[LN2_LO_AT]
    taylor = consts[TAYLOR:]
    mantissa_bits = 23 if n_scaled.itemsize == 4 else 52
    for j in range(x.shape[0]):
        normal = not x[j] < smallest                  # NaN too
        xj = x[j] if normal else smallest
        n = np.floor(xj * log2e + half)
        r = (xj - n * ln2_hi) - n * ln2_lo
        p = zero
        for c in taylor:                              # Horner (a tuple: unrolled)
            p = p * r + c
        x[j] = p if normal else zero
        n_scaled[j] = np.int64(n) << mantissa_bits if normal else 0
    bits = x.view(n_scaled.dtype)
    for j in range(x.shape[0]):                       # times 2^n: add n to the exponent
        bits[j] += n_scaled[j]
