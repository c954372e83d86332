"""The interaction step's tail as portable array-API code: the definition every step-tail
kernel is tested against, and the implementation on namespaces without kernels.

After the update's products ``Y = X W_x + msg W_m + b_u``, a step ends with a tanh, a
residual add and the readout's sigmoid, one op pair (the update's products aside):

    H_new, U, a = step_tail_forward(Y, H, w_a, b_a, z)
    dY, dH, dw_a, db_a, dpre = step_tail_backward(dH_new, da, U, H_new, a, w_a)

- Y, H ``[B, M, D]``: the update before its tanh, and the step's input state;
- w_a ``[D]``, b_a ``[]``: the readout; z ``[B, M]`` added to its pre-activation, or None;
- forward: ``U = tanh(Y)``, ``H_new = H + U``, ``a = sigmoid(H_new @ w_a + b_a (+ z))``;
  U and a are what the backward reads (with H_new), so they are returned for the cache;
- backward: dH_new ``[B, M, D]``, da ``[B, M]`` or None (the step's activation then has
  no gradient: dw_a, db_a and dpre are None). ``dpre = da a (1 - a)`` (also z's
  gradient), ``dH = dH_new + dpre w_a`` (the input state's gradient through the residual
  and the readout), ``dY = dH (1 - U^2)``, ``dw_a = sum dpre H_new``, ``db_a = sum dpre``.
"""

from __future__ import annotations


class ReferenceStepTail:
    """The step-tail op pair on ``self.xp``; a mixin of :class:`~.ops.ReferenceOps`."""

    def step_tail_forward(self, Y, H, w_a, b_a, z=None):
        """Y, H ``[B, M, D]``, w_a ``[D]``, b_a ``[]``, z ``[B, M]`` or None ->
        (H_new ``[B, M, D]``, U ``[B, M, D]``, a ``[B, M]``)."""
        xp = self.xp
        check_step_tail_shapes(Y, H, w_a, z)
        U = xp.tanh(Y)                                                    # [B, M, D]
        H_new = H + U
        pre = H_new @ w_a + b_a                                           # [B, M]
        if z is not None:
            pre = pre + z
        e = xp.exp(-xp.abs(pre))            # sigmoid without overflow for any pre
        a = xp.where(pre >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return H_new, U, a

    def step_tail_backward(self, dH_new, da, U, H_new, a, w_a):
        """-> (dY, dH ``[B, M, D]``, dw_a ``[D]``, db_a ``[]``, dpre ``[B, M]``); the last
        three None when da is None."""
        xp = self.xp
        if da is None:
            return dH_new * (1.0 - U * U), dH_new, None, None, None
        D = w_a.shape[0]
        dpre = da * a * (1.0 - a)                                         # [B, M]
        dH = dH_new + dpre[..., None] * w_a                               # [B, M, D]
        dw_a = xp.reshape(dpre, (-1,)) @ xp.reshape(H_new, (-1, D))       # [D]
        return dH * (1.0 - U * U), dH, dw_a, xp.sum(dpre), dpre


def check_step_tail_shapes(Y, H, w_a, z):
    """ValueError unless Y, H ``[B, M, D]``, w_a ``[D]`` and z ``[B, M]`` (or None) agree."""
    if Y.ndim != 3 or tuple(Y.shape) != tuple(H.shape) or tuple(w_a.shape) != (Y.shape[2],):
        raise ValueError(f"Y and H must both be [B, M, D] and w_a [D]: {tuple(Y.shape)}, "
                         f"{tuple(H.shape)}, {tuple(w_a.shape)}")
    if z is not None and tuple(z.shape) != tuple(Y.shape[:2]):
        raise ValueError(f"z must be [B, M] = {tuple(Y.shape[:2])}, got {tuple(z.shape)}")
