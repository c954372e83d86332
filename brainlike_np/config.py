"""Model configuration: one frozen dataclass per model kind, validated, with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field and the fix."""


class ConfigDict:
    """Dict round-trips and overrides shared by the model kinds' config dataclasses."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**values)

    def with_overrides(self, **overrides):
        """A copy with the given fields replaced (None means keep), validated again."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class ModelConfig(ConfigDict):
    vocab_size: int = 256      # V: bytes
    context: int = 64          # T: the window the model reads
    n_neurons: int = 1024      # N
    d_state: int = 128         # D
    k_active: int = 64         # k: neurons kept by top-k
    n_steps: int = 5           # S: interaction steps
    n_heads: int = 4           # h, with D % h == 0
    tau: float = 0.01          # activation threshold for attending

    def __post_init__(self):
        for name in ("vocab_size", "context", "n_neurons", "d_state", "k_active", "n_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_steps < 0:
            raise ConfigError(f"n_steps must be 0 or more, got {self.n_steps}")
        if self.k_active > self.n_neurons:
            raise ConfigError(f"k_active ({self.k_active}) must be at most n_neurons "
                              f"({self.n_neurons}): lower --k-active or raise --n-neurons")
        if self.d_state % self.n_heads:
            raise ConfigError(f"d_state ({self.d_state}) must be divisible by n_heads "
                              f"({self.n_heads})")
        if not 0.0 <= self.tau < 1.0:
            raise ConfigError(f"tau must be in [0, 1), got {self.tau}")


PRESETS = {
    # for tests: every code path, in milliseconds
    "tiny": ModelConfig(context=8, n_neurons=32, d_state=8, k_active=6, n_steps=2, n_heads=2),
    # 1200 steps of batch 64 train in about 8 minutes on 2 CPU cores (0.34-0.38 s a step)
    "default": ModelConfig(),
    # the design note's sizes
    "seed": ModelConfig(context=128, n_neurons=4096, d_state=256, k_active=128, n_steps=5,
                        n_heads=4),
}

PRESET_BATCH_SIZE = {"tiny": 4, "default": 64, "seed": 32}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}") from None
