"""Checkpoints crafted to break the reader's rules, each refused with a CheckpointError
before an array is trusted: a pickled entry (no code runs), an entry declaring fewer or
more bytes than its shape needs, a meta entry that is not uint8, another format version,
optimizer fields that are not finite numbers; and what a valid file must give: an entry
larger than two read chunks read whole (C and Fortran order), a run saved at step 0
resumed, a new file's mode."""

import io
import json
import math
import os
import re
import stat
import zipfile

import numpy as np
import pytest

from brainlike_np import CheckpointError, TrainSettings, TrainState, get_backend, get_preset
from brainlike_np.checkpoint import (FORMAT, MAX_META_BYTES, MAX_NPY_HEADER_BYTES, META_KEY,
                                     READ_CHUNK, CheckpointFile, save_checkpoint,
                                     save_npz_atomic)
from brainlike_np.data import random_batch
from npz import load_npz

TINY = get_preset("brainlike", "tiny")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, state) of a tiny run saved after one step: parameters and both moments."""
    state = TrainState.create("brainlike", TINY, get_backend("numpy"), TrainSettings(seed=4))
    state.train_step(*random_batch(4, TINY.context, seed=4), lr=1e-3)
    path = str(tmp_path_factory.mktemp("saved") / "ckpt.npz")
    state.save(path)
    return path, state


def npy_bytes(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def write_zip(path, entries: dict) -> None:
    """An ``.npz`` of raw entries ``name -> bytes`` (names without ``.npy``)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name + ".npy", data)


def raw_entries(path) -> dict:
    arrays, meta = load_npz(path)
    entries = {name: npy_bytes(a) for name, a in arrays.items()}
    entries[META_KEY] = npy_bytes(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return entries


def refused(path, says):
    with pytest.raises(CheckpointError, match=says) as caught:
        TrainState.load(str(path), get_backend("numpy"))
    assert str(path) in str(caught.value)


class MakesAFolder:
    """Unpickling it runs ``os.mkdir(path)``: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pickled_entry_runs_no_code(saved, tmp_path):
    marker = str(tmp_path / "code-ran")
    entries = raw_entries(saved[0])
    entries[META_KEY] = npy_bytes(np.array([MakesAFolder(marker)], dtype=object),
                                  allow_pickle=True)
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", "corrupted or not a brainlike-np checkpoint")
    assert not os.path.exists(marker)


def test_a_meta_entry_of_other_bytes_than_uint8_is_refused(saved, tmp_path):
    """Its JSON as int8 (the same bytes) is still not the UTF-8 byte array it must be."""
    entries = raw_entries(saved[0])
    meta = json.dumps(load_npz(saved[0])[1]).encode()
    entries[META_KEY] = npy_bytes(np.frombuffer(meta, dtype=np.int8))
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", "holds int8")


def test_a_renamed_entry_is_named_missing_and_unexpected(saved, tmp_path):
    entries = raw_entries(saved[0])
    entries["adam_m/W_old"] = entries.pop("adam_m/W_dec")
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", r"does not match the model \(AdamW first moment\): "
                                   r"missing \['W_dec'\], unexpected \['W_old'\]$")


@pytest.mark.parametrize("change, says", [(-8, "declares"), (+8, "declares")],
                         ids=["under-declared", "over-declared"])
def test_an_entry_whose_size_is_not_its_shapes_is_refused(saved, tmp_path, change, says):
    """Fewer bytes than the header's shape needs would leave part of the array
    uninitialised; more would be data nobody checked."""
    entries = raw_entries(saved[0])
    name = "params/W_dec"
    data = entries[name]
    entries[name] = data[:change] if change < 0 else data + bytes(change)
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", f"{name} {says}")


@pytest.mark.parametrize("version", ["brainlike-np/1", "brainlike-np/3", "other/2", None])
def test_another_format_version_is_refused(saved, tmp_path, version):
    arrays, meta = load_npz(saved[0])
    meta["format"] = version
    save_npz_atomic(str(tmp_path / "ckpt.npz"), arrays, meta)
    refused(tmp_path / "ckpt.npz", f"has format {version!r}, this version reads "
                                   f"'{FORMAT}'; start a new run")


NOT_NUMBERS = [True, False, math.nan, math.inf, -math.inf, "0.5", None, [0.5]]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
@pytest.mark.parametrize("field", ["beta1", "beta2", "eps", "weight_decay"])
def test_optimizer_fields_must_be_finite_numbers(saved, tmp_path, field, value):
    arrays, meta = load_npz(saved[0])
    meta["optimizer"][field] = value
    save_npz_atomic(str(tmp_path / "ckpt.npz"), arrays, meta)   # NaN, Infinity: JSON tokens
    refused(tmp_path / "ckpt.npz", f"optimizer {field} must be a finite number")


@pytest.mark.parametrize("value, says", [
    (True, "optimizer step must be an integer"), (1.0, "optimizer step must be an integer"),
    (-1, "optimizer step must be an integer"), ("1", "optimizer step must be an integer"),
    (2, "optimizer step 2"), (0, "optimizer step 0"),
])
def test_the_optimizer_step_must_be_the_runs(saved, tmp_path, value, says):
    arrays, meta = load_npz(saved[0])
    assert meta["step"] == 1
    meta["optimizer"]["step"] = value
    save_npz_atomic(str(tmp_path / "ckpt.npz"), arrays, meta)
    refused(tmp_path / "ckpt.npz", says)


@pytest.mark.parametrize("fortran", [False, True], ids=["C-order", "Fortran-order"])
def test_an_entry_larger_than_the_read_chunk_is_read_whole(tmp_path, fortran):
    """(67, 61, 71) float64 is 2.2 MiB: the chunked read loop runs three times, the
    second for a whole chunk at an offset, the third for a part chunk."""
    table = np.random.default_rng(0).standard_normal((67, 61, 71))
    table = np.asfortranarray(table) if fortran else table
    assert 2 * READ_CHUNK < table.nbytes < 3 * READ_CHUNK and table.nbytes % READ_CHUNK
    path = str(tmp_path / "big.npz")
    save_npz_atomic(path, {"params/E": table}, {"format": FORMAT})
    with CheckpointFile(path) as checkpoint:
        read = checkpoint.read_arrays({"params/E": table.shape}, "float64")
    assert list(read["params"]) == ["E"] and read["adam_m"] == {} and read["adam_v"] == {}
    np.testing.assert_array_equal(read["params"]["E"], table)


def test_a_run_saved_at_step_0_resumes_and_continues_exactly(tmp_path):
    """No moments exist before the first step: none are saved, none are read, and the
    resumed run's next step is the one the original takes."""
    backend = get_backend("numpy")
    settings = TrainSettings(seed=5, dtype="float64")
    state = TrainState.create("brainlike", TINY, backend, settings)
    path = str(tmp_path / "ckpt.npz")
    state.save(path)
    assert not any(k.startswith("adam_") for k in load_npz(path)[0])
    resumed = TrainState.load(path, backend)
    assert resumed.step == resumed.optimizer.step == 0
    assert resumed.optimizer.m == {} and resumed.optimizer.v == {}
    batch = random_batch(4, TINY.context, seed=6)
    for s in (state, resumed):
        s.train_step(*batch, lr=1e-2)
    assert resumed.step == resumed.optimizer.step == 1
    for group in ("params", "m", "v"):
        ours = resumed.params if group == "params" else getattr(resumed.optimizer, group)
        theirs = state.params if group == "params" else getattr(state.optimizer, group)
        assert ours.keys() == theirs.keys()
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{group}/{name}")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_a_new_checkpoint_gets_the_mode_the_umask_gives_a_new_file(saved, tmp_path, umask):
    """0o666 less the umask, as ``open()`` gives (never executable, setuid or sticky); a
    symlink in the way is refused, never replaced (tests/test_output_paths.py)."""
    path = tmp_path / "ckpt.npz"
    old = os.umask(umask)
    try:
        saved[1].save(str(path))
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("mode, kept", [(0o640, 0o640), (0o444, 0o444), (0o6755, 0o755),
                                        (0o1600, 0o600)])
def test_a_replaced_checkpoint_keeps_its_permissions_but_no_special_bits(saved, tmp_path,
                                                                         mode, kept):
    """A read-only checkpoint stays read-only; setuid, setgid and sticky are dropped."""
    path = tmp_path / "ckpt.npz"
    saved[1].save(str(path))             # an earlier checkpoint: what a save may replace
    path.chmod(mode)
    saved[1].save(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == kept
    assert load_npz(path)[1]["step"] == 1


@pytest.mark.parametrize("extra", [1, 0])
def test_a_meta_entry_over_the_limit_is_refused_by_its_declared_size(saved, tmp_path, extra):
    """The reader checks meta.json's declared size before it reads it (so a crafted file
    costs no memory), at the largest meta the writer can make plus its .npy header; an
    entry of that size exactly is read, and refused for holding more than a meta may."""
    limit = MAX_META_BYTES + MAX_NPY_HEADER_BYTES
    entries = raw_entries(saved[0])
    header = len(npy_bytes(np.zeros(0, dtype=np.uint8)))
    entries[META_KEY] = npy_bytes(np.zeros(limit + extra - header, dtype=np.uint8))
    assert len(entries[META_KEY]) == limit + extra
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", f"{META_KEY} declares {limit + 1} bytes, more than {limit}"
            if extra else rf"{META_KEY} holds uint8 \({limit - header},\), not UTF-8 bytes "
                          rf"\(at most {MAX_META_BYTES}\)")


@pytest.mark.parametrize("name, reason", [("x" * 300 + ".npz", "File name too long"),
                                          ("ckpt.npz/inside.npz", "Not a directory")])
def test_a_checkpoint_path_that_cannot_be_opened_is_one_error(saved, tmp_path, name, reason):
    """Not missing, not another kind of file: the system's reason, named (root reads
    every file, so these stand for a permission error in CI)."""
    (tmp_path / "ckpt.npz").write_bytes(b"")
    path = str(tmp_path / name)
    with pytest.raises(CheckpointError, match=f"cannot be read \\({reason}\\)") as caught:
        CheckpointFile(path)
    assert path in str(caught.value)


def test_the_meta_limit_and_its_parts_are_the_documented_ones():
    """docs/checkpoints.md states how much meta.json may hold and what for: the reader's
    limit, the data record's bound and the path's are those numbers."""
    from brainlike_np import data
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "checkpoints.md")) as f:
        text = " ".join(f.read().split())
    found = re.search(r"at most ([\d,]+) bytes: ([\d,]+) for the config, settings, RNG state "
                      r"and last evaluation, ([\d,]+) for a path and ([\d,]+) for the data "
                      r"record of at most (\d+) listed files", text)
    total, rest, path, record, files = (int(g.replace(",", "")) for g in found.groups())
    assert total == rest + path + record == MAX_META_BYTES
    header = re.search(r"and ([\d,]+) bytes of `\.npy` header is refused unread", text)
    assert int(header.group(1).replace(",", "")) == MAX_NPY_HEADER_BYTES
    assert (path, record, files) == (data.JSON_PATH_BYTES, data.MAX_DATA_RECORD_BYTES,
                                     data.MAX_RECORDED_FILES)


def test_a_state_holding_nan_is_not_saved_and_the_error_names_three_arrays(saved, tmp_path):
    """A diverged state never replaces a good checkpoint; the error names the first three
    arrays that hold NaN or infinity (of four here), not more."""
    path, state = saved
    target = tmp_path / "ckpt.npz"
    target.write_bytes(open(path, "rb").read())
    before = target.read_bytes()
    bad = {name: np.where(np.arange(p.size).reshape(p.shape) == 0, np.nan, p)
           for name, p in list(state.params.items())[:4]}
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(str(target), {**state.params, **bad}, state.optimizer, {},
                        get_backend("numpy"))
    named = re.search(r"not saving '.*': (.*) hold NaN or infinite values", str(caught.value))
    assert named.group(1).split(", ") == [f"params/{n}" for n in list(bad)[:3]]
    assert target.read_bytes() == before


@pytest.mark.parametrize("rows", [-3, 2])
def test_an_entry_of_another_shape_is_named_with_both_shapes(saved, tmp_path, rows):
    """The error names the group, the parameter, its saved shape and the config's, for
    a smaller and a larger entry."""
    entries = raw_entries(saved[0])
    moment = load_npz(saved[0])[0]["adam_m/W_dec"]                  # [N, V]
    n, v = moment.shape
    entries["adam_m/W_dec"] = npy_bytes(np.resize(moment, (n + rows, v)))
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", rf"AdamW first moment W_dec has shape \({n + rows}, {v}\), "
                                   rf"the config needs \({n}, {v}\)")



def test_a_meta_entry_of_other_than_one_dimension_is_refused_even_if_it_holds_json(saved,
                                                                                   tmp_path):
    entries = raw_entries(saved[0])
    meta = json.dumps(load_npz(saved[0])[1]).encode()
    entries[META_KEY] = npy_bytes(np.frombuffer(meta, dtype=np.uint8)[None, :])
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", rf"holds uint8 \(1, {len(meta)}\), not UTF-8 bytes")
    entries[META_KEY] = npy_bytes(np.array(ord("7"), dtype=np.uint8))     # the JSON 7
    write_zip(tmp_path / "ckpt0.npz", entries)
    refused(tmp_path / "ckpt0.npz", r"holds uint8 \(\), not UTF-8 bytes")


def test_unknown_entries_are_named_first_in_order(saved, tmp_path):
    entries = raw_entries(saved[0])
    entries["zz/second"] = entries["extra/first"] = npy_bytes(np.ones(3, dtype=np.float32))
    write_zip(tmp_path / "ckpt.npz", entries)
    refused(tmp_path / "ckpt.npz", "has an unknown entry 'extra/first'$")


def test_entries_in_npy_format_2_load_as_version_1(saved, tmp_path):
    """NumPy writes format 2.0 for headers over 64 KiB; either version reads the same."""
    entries = raw_entries(saved[0])
    for name, array in load_npz(saved[0])[0].items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, version=(2, 0))
        entries[name] = buffer.getvalue()
    write_zip(tmp_path / "ckpt.npz", entries)
    loaded = TrainState.load(str(tmp_path / "ckpt.npz"), get_backend("numpy"))
    for name, p in saved[1].params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
