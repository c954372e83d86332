"""What every config dataclass shares: validation errors, dict round trips, overrides,
and the one way to look a name up in a table of choices."""

from __future__ import annotations

from dataclasses import asdict, fields, replace


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field and the fix."""


def flag(name: str) -> str:
    """The command-line flag of a config field or setting, without its dashes:
    ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


def choose(choices, name: str, what: str, where: str = ""):
    """``choices[name]`` for a dict, ``name`` for another collection, or ConfigError
    naming the valid choices: ``what`` says what the name is ("model", "preset"),
    ``where`` where it was looked for (" for model 'x'")."""
    try:
        if name in choices:
            return choices[name] if isinstance(choices, dict) else name
    except TypeError:          # an unhashable name
        pass
    raise ConfigError(f"unknown {what} '{name}'{where}; choose one of: "
                      f"{', '.join(map(str, choices))}")


class ConfigDict:
    """Dict round trips and overrides for frozen config dataclasses."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        if not isinstance(values, dict):
            raise ConfigError(f"a {cls.__name__} must be a mapping of fields, got "
                              f"{type(values).__name__}")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**values)

    def with_overrides(self, **overrides):
        """A copy with the given fields replaced (None means keep), validated again."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def check_types(self) -> None:
        """ConfigError unless every field holds a value of its annotated type (``int``,
        ``float``, ``str``, ``bool``; an int is accepted as a float; None where None is the
        default); called by ``__post_init__``, so a damaged checkpoint or a wrong
        library call is refused with the field's name."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            expected = _FIELD_TYPES[f.type]
            if isinstance(value, bool) != (f.type == "bool") or not isinstance(value, expected):
                raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}")


# config field annotations (strings under ``from __future__ import annotations``) -> types
_FIELD_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}
