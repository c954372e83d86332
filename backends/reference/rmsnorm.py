"""RMSNorm as portable array-API code: the definition every RMSNorm kernel is tested
against, and the implementation on namespaces without kernels.

    y, r = rmsnorm_forward(x, g, eps)        # y = x * r * g, r = 1 / sqrt(mean(x^2) + eps)
    dx, dg = rmsnorm_backward(dy, x, r, g)

x, y, dy, dx ``[..., D]`` (rows of D features), g, dg ``[D]``, r ``[..., 1]`` (each
row's inverse root mean square, what the backward needs with x). The backward:
``dg = sum over rows of dy * x * r`` and ``dx = r (dxhat - xhat mean(dxhat xhat))`` with
``xhat = x r``, ``dxhat = dy g``. The kernels do each direction in one pass over the rows.
"""

from __future__ import annotations


class ReferenceRmsnorm:
    """The RMSNorm op pair on ``self.xp``; a mixin of :class:`~.ops.ReferenceOps`."""

    def rmsnorm_forward(self, x, g, eps):
        """x ``[..., D]``, g ``[D]`` -> (y ``[..., D]``, r ``[..., 1]``)."""
        xp = self.xp
        check_rmsnorm_shapes(x, g)
        r = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)  # [..., 1]
        return (x * r) * g, r

    def rmsnorm_backward(self, dy, x, r, g):
        """-> (dx ``[..., D]``, dg ``[D]``)."""
        xp = self.xp
        check_rmsnorm_shapes(x, g, dy)
        D = g.shape[0]
        xhat = x * r                                                           # [..., D]
        dg = xp.sum(xp.reshape(dy * xhat, (-1, D)), axis=0)                   # [D]
        dxhat = dy * g                                                         # [..., D]
        dx = r * (dxhat - xhat * xp.mean(dxhat * xhat, axis=-1, keepdims=True))
        return dx, dg


def check_rmsnorm_shapes(x, g, dy=None):
    """ValueError unless x ``[..., D]`` and g ``[D]`` agree, and dy (the backward's)
    has x's shape."""
    if g.ndim != 1 or x.ndim < 1 or x.shape[-1] != g.shape[0]:
        raise ValueError(f"x must be [..., D] and g [D]: {tuple(x.shape)}, {tuple(g.shape)}")
    if dy is not None and tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
