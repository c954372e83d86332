"""The model registry and the interface every model module follows.

A model is a module (``brainlike.py``, ``transformer.py``) that provides what
:class:`Model` lists; the trainer, the generator, the benches and the generic tests use
nothing else. :class:`Model` is the one statement of that interface:
``tests/test_model_interface.py`` holds every module in ``MODELS`` against it and names
what is missing or wrong. Adding a model variant is one new module here plus one line
in ``MODELS``.
"""

from __future__ import annotations

from typing import Protocol

from ..config import choose
from . import brainlike, transformer


class Model(Protocol):
    """What a model module provides (read ``transformer.py`` for a short example).

    Shapes: x ``[B, T']`` int tokens (T' <= the config's context), y ``[B]`` the byte
    after each window, p a dict ``name -> array`` on a backend, ``ops`` the backend's
    hot-path operations (``backend.ops``).

    The constants sit in one block right after the module's ``Config``; the functions
    take exactly the parameters named here.
    """

    Config: type
    """Frozen config dataclass (a :class:`~brainlike_np.config.ConfigDict`), validated in
    ``__post_init__``. Every field is annotated ``int``, ``float``, ``str`` or ``bool``,
    read as a name (the module starts with ``from __future__ import annotations``): the
    trainer makes a flag of each by it, and ``check_types`` checks values against it.
    Every field has a default (a checkpoint written before a field existed loads
    with it, so a new field's default keeps the old behaviour). Execution options (how
    to compute, not what) are fields too, so they are saved, validated and resumed with
    the rest."""
    PRESETS: dict
    """name -> Config; every model has a ``"tiny"`` preset (the generic tests use it)
    and a ``"default"`` one (what the trainer runs without flags)."""
    BATCH_SIZES: dict
    """preset name -> the trainer's default batch size for it (a positive int)."""
    EXECUTION_OPTIONS: dict
    """config field -> a tuple of its values that must give the same loss and gradients
    as the default (the generic tests check each one)."""
    NO_DECAY: frozenset
    """parameter names (of ``param_shapes``) that get no weight decay (gains, biases)."""

    def param_shapes(self, cfg) -> dict:
        """name -> shape tuple, in the order parameters are drawn."""

    def init_params(self, cfg, backend, seed: int = 0, dtype: str = "float32") -> dict:
        """Initial parameters, drawn on the host (same seed, same weights on every backend)."""

    def supervised_targets(self, cfg) -> int:
        """Next-byte targets one window trains on (the benches count learning by them)."""

    def forward_flops(self, cfg, batch_size: int) -> int:
        """Matmul FLOPs of one forward pass (the benches' rate of useful work)."""

    def activation_bytes(self, cfg, batch_size: int, itemsize: int) -> int:
        """An upper estimate, from the shapes, of a training step's memory beyond the
        parameters, gradients and AdamW moments (the trainer checks it before a run)."""

    def loss_and_grads(self, p, x, y, cfg, ops) -> tuple:
        """-> (the training loss as a 0-d array on the device, not read back: the
        trainer reads it once the update is issued; grads: one array per parameter)."""

    def loss(self, p, x, y, cfg, ops):
        """Mean cross-entropy of y given x, a float, without the backward: the
        evaluation every model is scored on."""

    def next_logits(self, p, x, cfg, ops):
        """Logits ``[B, V]`` of the byte after each window."""


MODELS = {
    "brainlike": brainlike,
    "transformer": transformer,
}


def get_model(name: str) -> Model:
    """The model module registered as ``name``; ConfigError naming the choices if none."""
    return choose(MODELS, name, "model")


def get_preset(model_name: str, preset_name: str):
    """The named preset config of a model."""
    return choose(get_model(model_name).PRESETS, preset_name, "preset",
                  f" for model '{model_name}'")


__all__ = ["MODELS", "Model", "get_model", "get_preset"]
