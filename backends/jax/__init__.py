"""JAX arrays (``jax.numpy``) with JAX's own operations on the hot path: the jax
backend's ops, and its compiled training step (``JaxBackend.compile_step``, backend.py).

- ``ops``: :class:`JaxOps`, the reference ops with scatter-add and top-k replaced by
  JAX's native ones; the fused ops (attention, RMSNorm, step tail) are the reference's,
  which XLA fuses itself once the step is compiled.
"""

from .ops import JaxOps

__all__ = ["JaxOps"]
