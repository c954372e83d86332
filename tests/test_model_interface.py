"""Every registered model module against the one statement of the model interface, the
``Model`` Protocol in ``brainlike_np.models`` (in the manner of scikit-learn's common
estimator checks): each attribute present, functions with the Protocol's parameters,
constants of the Protocol's types and contents, config fields annotated int, float, str
or bool. A deliberately incomplete module shows the check names what is missing; the
benches' generic code uses only what the Protocol names."""

import ast
import dataclasses
import inspect
import types
import typing
from pathlib import Path

import pytest

from brainlike_np.config import ConfigDict
from brainlike_np.models import MODELS, Model, transformer

FIELD_TYPES = {"int", "float", "str", "bool"}
CONSTANTS = typing.get_type_hints(Model)                    # name -> type
FUNCTIONS = {name: value for name, value in vars(Model).items()
             if inspect.isfunction(value) and not name.startswith("_")}
BENCH = Path(__file__).resolve().parents[1] / "bench"


def parameters(function) -> str:
    """The parameters as written, without annotations and ``self``: "cfg, seed=0"."""
    return ", ".join(str(p.replace(annotation=inspect.Parameter.empty))
                     for p in inspect.signature(function).parameters.values() if p.name != "self")


def config_problems(Config) -> list:
    if not (isinstance(Config, type) and dataclasses.is_dataclass(Config)
            and issubclass(Config, ConfigDict)):
        return ["Config is not a ConfigDict dataclass"]
    problems = []
    if not Config.__dataclass_params__.frozen:
        problems.append("Config is not frozen")
    for f in dataclasses.fields(Config):
        if f.type not in FIELD_TYPES:
            problems.append(f"Config field {f.name} is annotated {f.type!r}, not one of "
                            f"{sorted(FIELD_TYPES)}")
        if f.default is dataclasses.MISSING:
            problems.append(f"Config field {f.name} has no default")
    return problems


def constant_problems(module) -> list:
    """What PRESETS, BATCH_SIZES, EXECUTION_OPTIONS and NO_DECAY must hold."""
    problems = []
    presets = module.PRESETS
    if not all(isinstance(c, module.Config) for c in presets.values()):
        problems.append("PRESETS holds a value that is not a Config")
    if not {"tiny", "default"} <= set(presets):
        problems.append("PRESETS lacks 'tiny' or 'default'")
    if not set(module.BATCH_SIZES) <= set(presets):
        problems.append("BATCH_SIZES names a preset that PRESETS lacks")
    if not all(type(b) is int and b > 0 for b in module.BATCH_SIZES.values()):
        problems.append("BATCH_SIZES holds a batch size that is not a positive int")
    field_names = {f.name for f in dataclasses.fields(module.Config)}
    for field, values in module.EXECUTION_OPTIONS.items():
        if field not in field_names or not isinstance(values, tuple):
            problems.append(f"EXECUTION_OPTIONS[{field!r}] is not a config field with a "
                            "tuple of values")
    tiny = presets.get("tiny")
    if tiny is not None and not module.NO_DECAY <= set(module.param_shapes(tiny)):
        problems.append("NO_DECAY names a parameter that param_shapes lacks")
    if not all(isinstance(n, str) for n in module.NO_DECAY):
        problems.append("NO_DECAY holds a name that is not a str")
    return problems


def interface_problems(module) -> list:
    """Everything ``module`` lacks or gets wrong against the Protocol, one line each."""
    problems = []
    for name, expected in CONSTANTS.items():
        if not hasattr(module, name):
            problems.append(f"lacks {name}")
        elif not isinstance(getattr(module, name), expected):
            problems.append(f"{name} is a {type(getattr(module, name)).__name__}, the "
                            f"Protocol says {expected.__name__}")
    for name, declared in FUNCTIONS.items():
        function = getattr(module, name, None)
        if function is None:
            problems.append(f"lacks {name}")
        elif not callable(function):
            problems.append(f"{name} is not callable")
        elif parameters(function) != parameters(declared):
            problems.append(f"{name} takes ({parameters(function)}), the Protocol says "
                            f"({parameters(declared)})")
    if not problems:
        problems += config_problems(module.Config)
    if not problems:
        problems += constant_problems(module)
    return problems


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_follows_the_protocol(name):
    assert interface_problems(MODELS[name]) == []


@pytest.mark.parametrize("name", list(MODELS))
def test_the_constants_sit_in_one_block_after_the_config(name):
    """Between the Config class and the last interface constant: assignments only."""
    tree = ast.parse(inspect.getsource(MODELS[name]))
    config_class = next(i for i, node in enumerate(tree.body) if isinstance(node, ast.ClassDef)
                        and node.name == MODELS[name].Config.__name__)
    def names(node):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {getattr(t, "id", None) for t in targets}

    assigned = [i for i, node in enumerate(tree.body)
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and names(node) & set(CONSTANTS)]
    assert len(assigned) == len(CONSTANTS)
    assert min(assigned) > config_class
    between = tree.body[config_class + 1:max(assigned) + 1]
    assert all(isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)) for node in between), \
        [type(node).__name__ for node in between]


def test_the_protocol_is_what_the_check_reads():
    """The check is not empty: it reads the constants and functions the Protocol lists."""
    assert set(CONSTANTS) == {"Config", "PRESETS", "BATCH_SIZES", "EXECUTION_OPTIONS", "NO_DECAY"}
    assert {"supervised_targets", "forward_flops", "loss_and_grads", "init_params"} <= set(FUNCTIONS)


def incomplete_model():
    """The Transformer's module without two functions, with a wrong parameter name, a
    list-valued constant and a config field of an unsupported type."""
    fake = types.ModuleType("incomplete")
    for name in [*CONSTANTS, *FUNCTIONS]:
        setattr(fake, name, getattr(transformer, name))
    del fake.supervised_targets, fake.forward_flops
    fake.loss = lambda params, x, y, cfg, ops: 0.0
    fake.NO_DECAY = ["g_f"]
    return fake


def test_a_model_that_lacks_something_is_named():
    fake = incomplete_model()
    assert interface_problems(fake) == [
        "NO_DECAY is a list, the Protocol says frozenset",
        "lacks supervised_targets",
        "lacks forward_flops",
        "loss takes (params, x, y, cfg, ops), the Protocol says (p, x, y, cfg, ops)"]
    fake.loss = transformer.loss
    fake.init_params = lambda cfg, backend, seed=1, dtype="float32": {}
    assert "init_params takes (cfg, backend, seed=1, dtype='float32'), the Protocol says " \
        "(cfg, backend, seed=0, dtype='float32')" in interface_problems(fake)


def test_a_config_or_constant_out_of_the_rules_is_named():
    # string annotations, as a model module writes them under `from __future__ import annotations`
    @dataclasses.dataclass(frozen=True)
    class ListConfig(ConfigDict):
        context: "int" = 8
        widths: "list" = None                   # not a flag the trainer can make
        steps: "int" = dataclasses.field(default_factory=lambda: 2)
        width: int = 4                          # a type, not its name: check_types cannot read it

    @dataclasses.dataclass
    class Unfrozen(ConfigDict):
        context: "int" = 8

    assert config_problems(ListConfig) == [
        "Config field widths is annotated 'list', not one of ['bool', 'float', 'int', 'str']",
        "Config field steps has no default",
        "Config field width is annotated <class 'int'>, not one of ['bool', 'float', 'int', 'str']"]
    assert config_problems(Unfrozen) == ["Config is not frozen"]
    assert config_problems(dict) == ["Config is not a ConfigDict dataclass"]

    fake = incomplete_model()
    fake.NO_DECAY = frozenset({"g_f", "bias"})
    fake.BATCH_SIZES = {"tiny": 4, "huge": 0}
    fake.EXECUTION_OPTIONS = {"path": ["dense"]}
    fake.PRESETS = {"tiny": transformer.PRESETS["tiny"]}
    assert constant_problems(fake) == [
        "PRESETS lacks 'tiny' or 'default'",
        "BATCH_SIZES names a preset that PRESETS lacks",
        "BATCH_SIZES holds a batch size that is not a positive int",
        "EXECUTION_OPTIONS['path'] is not a config field with a tuple of values",
        "NO_DECAY names a parameter that param_shapes lacks"]


# ---------------------------------------------------------------------------------
# the benches' generic code uses only what the Protocol names
# ---------------------------------------------------------------------------------
def model_attributes_used(source: str) -> set:
    """Attributes read off a model module in ``source``: ``get_model(...).X``,
    ``<anything>.module.X``, ``<anything>.model.X`` and ``m.X`` where ``m = get_model(...)``."""
    tree = ast.parse(source)

    def is_get_model(node):
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "get_model")

    bound = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and is_get_model(node.value) for t in node.targets if isinstance(t, ast.Name)}
    used = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if (is_get_model(value)
                or (isinstance(value, ast.Attribute) and value.attr in ("module", "model"))
                or (isinstance(value, ast.Name) and value.id in bound)):
            used.add(node.attr)
    return used


@pytest.mark.parametrize("script", ["lab.py", "learning.py"])
def test_the_benches_use_only_what_the_protocol_names(script):
    used = model_attributes_used((BENCH / script).read_text())
    assert used, f"{script}: no model attribute found; the scan is broken"
    assert used <= set(CONSTANTS) | set(FUNCTIONS), used - set(CONSTANTS) - set(FUNCTIONS)


def test_the_scan_finds_attributes_outside_the_protocol():
    source = ("m = get_model('x')\nm.forward\nsubject.module.loss\nget_model('y').PRESETS\n"
              "state.model.secret\n")
    assert model_attributes_used(source) == {"forward", "loss", "PRESETS", "secret"}
