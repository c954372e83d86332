"""The library checks its inputs as the command line does: TrainState.create and
sample_batch raise TypeError/ValueError naming the argument; bytes are tokens; a saved
RNG state NumPy does not take back is a CheckpointError; every BRAINLIKE_* variable is
checked like a flag."""

import copy

import numpy as np
import pytest

from brainlike_np import BackendError, get_backend, get_preset
from brainlike_np.backends import settings
from brainlike_np.checkpoint import CheckpointError, save_npz_atomic
from brainlike_np.datafiles import Tokens
from brainlike_np.train_state import TrainSettings, TrainState
from npz import load_npz

CFG = get_preset("brainlike", "tiny")


@pytest.fixture(scope="module")
def state():
    return TrainState.create("brainlike", CFG, get_backend("numpy"), TrainSettings(seed=3))


@pytest.mark.parametrize("tokens, error, words", [
    (np.full(1000, 5000), ValueError, "tokens must be in [0, 256)"),
    (np.full(1000, -1), ValueError, "tokens must be in [0, 256)"),
    (np.full(1000, 5.0), TypeError, "tokens must be integers"),
    (np.ones(1000, dtype=bool), TypeError, "tokens must be integers"),
    (np.arange(CFG.context) % 7, ValueError, "longer than the context"),
    (b"", ValueError, "longer than the context"),
    (np.zeros((10, 100), dtype=np.int64), ValueError, "one sequence"),
    ("def f(): pass\n" * 50, TypeError, "encode text first"),
], ids=["ids-above-vocab", "negative", "float", "bool", "short", "empty-bytes", "2-d", "str"])
def test_sample_batch_refuses_tokens_it_cannot_use(state, tokens, error, words):
    with pytest.raises(error) as err:
        state.sample_batch(tokens, 4)
    assert words in str(err.value)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, "4", np.int64(0)])
def test_sample_batch_refuses_a_batch_size_that_is_not_positive(state, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        state.sample_batch(b"x" * 100, batch_size)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_are_tokens(state, kind):
    """Bytes give the same windows as the same values as an int64 array, drawn from the
    same sampler state, each window a run of the text."""
    text = bytes(range(97, 123)) * 7                    # 182 bytes, no repeats within 26
    rng_state = copy.deepcopy(state.sampler.bit_generator.state)
    x, y = state.sample_batch(kind(text), 5)
    state.sampler.bit_generator.state = rng_state
    x2, y2 = state.sample_batch(np.frombuffer(text, dtype=np.uint8).astype(np.int64), 5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (5, CFG.context) and x.dtype == np.int64
    for row, target in zip(x, y):
        window = bytes(row.tolist()) + bytes([target])
        assert window in text


def test_token_ids_are_never_wrapped_to_bytes():
    """Ids above 255 from an array keep their values (were cast to uint8: 300 -> 44)."""
    ids = np.arange(1000, dtype=np.int64) * 7 % 997                   # up to 996
    taken = Tokens.of(ids).take(np.array([[0, 43, 500], [999, 1, 2]]))
    np.testing.assert_array_equal(taken, ids[[[0, 43, 500], [999, 1, 2]]])


@pytest.mark.parametrize("args, error, words", [
    (("brainlike", CFG, "numpy"), TypeError, "needs a backend"),
    (("brainlike", CFG, None), TypeError, "needs a backend"),
    (("brainlike", CFG, "BACKEND", None), TypeError, "settings must be a TrainSettings"),
    (("brainlike", CFG, "BACKEND", {"seed": 1}), TypeError, "settings must be a TrainSettings"),
    ((3, CFG, "BACKEND"), TypeError, "model_name"),
    (("nonsense", CFG, "BACKEND"), ValueError, "unknown model"),
    (("brainlike", {"context": 8}, "BACKEND"), ValueError, "needs a BrainlikeConfig"),
])
def test_create_names_the_argument_that_cannot_work(args, error, words):
    args = tuple(get_backend("numpy") if a == "BACKEND" else a for a in args)
    with pytest.raises(error) as err:
        TrainState.create(*args)
    assert words in str(err.value)


def test_load_names_the_backend_argument(tmp_path, state):
    state.save(str(tmp_path / "ckpt.npz"))
    with pytest.raises(TypeError, match="needs a backend"):
        TrainState.load(str(tmp_path / "ckpt.npz"), "numpy")


# ---- a crafted RNG state ---------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("state", -1), ("state", 2**128), ("state", 2**300), ("state", "x"), ("state", 1.5),
    ("inc", -5), ("bit_generator", "MT19937"),
])
def test_a_crafted_rng_state_is_a_checkpoint_error(tmp_path, state, field, value):
    path = tmp_path / "ckpt.npz"
    state.save(str(path))
    arrays, meta = load_npz(path)
    target = meta["rng"] if field == "bit_generator" else meta["rng"]["state"]
    target[field] = value
    save_npz_atomic(str(path), arrays, meta)
    with pytest.raises(CheckpointError, match="rng state") as err:
        TrainState.load(str(path), get_backend("numpy"))
    assert "\n" not in str(err.value)


def test_a_saved_rng_state_round_trips(tmp_path, state):
    state.sample_batch(b"abcdefghij" * 30, 3)          # move the sampler on
    state.save(str(tmp_path / "ckpt.npz"))
    loaded = TrainState.load(str(tmp_path / "ckpt.npz"), get_backend("numpy"))
    assert loaded.sampler.bit_generator.state == state.sampler.bit_generator.state


# ---- every BRAINLIKE_* variable is checked like a flag ----------------------------------
@pytest.mark.parametrize("name, value, words", [
    ("BRAINLIKE_PARALLEL_MIN_WORK", "-5", "is not a number >= 0"),
    ("BRAINLIKE_PARALLEL_MIN_WORK", "nan", "is not a number >= 0"),
    ("BRAINLIKE_PARALLEL_MIN_WORK", "1e5x", "is not a number >= 0"),
    ("BRAINLIKE_HOST_MALLOC", "bogus", "is not one of: reuse, system"),
    ("BRAINLIKE_KERNELS", "bogus", "unknown kernels 'bogus'"),
    ("BRAINLIKE_BACKEND", "bogus", "unknown backend 'bogus'"),
    ("BRAINLIKE_BACKNED", "numpy", "unknown environment variable BRAINLIKE_BACKNED"),
])
def test_a_bad_environment_variable_is_one_line(monkeypatch, name, value, words):
    """Refused whatever backend is asked for by argument, as a bad flag would be."""
    monkeypatch.setenv(name, value)
    with pytest.raises(BackendError) as err:
        get_backend("numpy", kernels="reference")
    message = str(err.value)
    assert words in message and "\n" not in message
    assert name in message or name == "BRAINLIKE_BACKEND" or name == "BRAINLIKE_KERNELS"


@pytest.mark.parametrize("value, expected", [("0", 0.0), ("100000", 1e5), (" 2.5e3 ", 2500.0),
                                             ("", float("inf")), ("inf", float("inf"))])
def test_parallel_min_work_takes_a_number_of_zero_or_more(monkeypatch, value, expected):
    monkeypatch.setenv("BRAINLIKE_PARALLEL_MIN_WORK", value)
    assert settings.parallel_min_work() == expected


@pytest.mark.parametrize("value, expected", [("", "reuse"), ("System", "system"),
                                             ("reuse", "reuse")])
def test_host_malloc_takes_reuse_or_system(monkeypatch, value, expected):
    monkeypatch.setenv("BRAINLIKE_HOST_MALLOC", value)
    assert settings.host_malloc() == expected


def test_every_variable_the_code_reads_is_listed(monkeypatch):
    """The list in docs/guarantees.md is settings.ENV_VARIABLES: every BRAINLIKE_* name in
    the code is in it."""
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parent.parent
    named = set()
    for folder in ("brainlike_np", "backends"):
        for path in (root / folder).rglob("*.py"):
            named |= set(re.findall(r"BRAINLIKE_[A-Z_]+", path.read_text()))
    assert named <= set(settings.ENV_VARIABLES), named - set(settings.ENV_VARIABLES)
    listed = (root / "docs" / "guarantees.md").read_text()
    assert all(name in listed for name in settings.ENV_VARIABLES)


@pytest.mark.parametrize("origin", [
    {"preset": 5, "overrides": {}}, {"preset": "tiny"}, [1],
    {"preset": "tiny", "overrides": {"nonsense": 3}},
    {"preset": "tiny", "overrides": {"context": "x"}},
    {"preset": "tiny", "overrides": {"context": CFG.context + 1}},
], ids=["preset-int", "no-overrides", "list", "unknown-field", "wrong-type", "not-the-config"])
def test_a_crafted_config_origin_is_a_checkpoint_error(tmp_path, state, origin):
    path = tmp_path / "ckpt.npz"
    state.save(str(path))
    arrays, meta = load_npz(path)
    meta["config_origin"] = origin
    save_npz_atomic(str(path), arrays, meta)
    with pytest.raises(CheckpointError, match="config_origin"):
        TrainState.load(str(path), get_backend("numpy"))


def test_a_numpy_integer_is_a_batch_size(state):
    x, y = state.sample_batch(b"abcdefghijklmnop" * 4, np.int64(3))
    assert x.shape == (3, CFG.context) and y.shape == (3,)
