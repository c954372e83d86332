"""Byte-level corpora on the host: the default (the running Python's standard library
sources, read into memory) or ``--data FILE|DIR|GLOB`` (files memory-mapped read-only,
never read whole), split deterministically into train and validation; windows drawn
from them with a seeded NumPy generator; count-model baselines from a bounded sample;
the corpus's identity record, which ``--resume`` compares.

Everything here is host-side NumPy (bytes in, ``uint8``/``int64`` arrays out), whatever
the backend: batches go to the device with ``backend.asarray``."""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import math
import os
import stat
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import choose
from .datafiles import MAX_FILE_BLOCKS, DataError, DataFile, Tokens

SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}
VALID_FRACTION = 0.1      # a single file: its last 10% of bytes are the validation split
VALID_ONE_IN = 10         # several files: those whose path's CRC-32 is 0 mod 10
COUNT_CHUNK = 1 << 18     # bytes the baselines count at a time: their extra memory is O(this)
DENSE_PAIRS = 1 << 20     # the baselines count pairs in a dense table up to this many codes
BASELINE_SAMPLE_BYTES = 100 * 2**20   # the baselines read at most this much of each split
MAX_HASH_BLOCKS = 512     # the record's content hashes read at most this many 64 KiB blocks
MAX_RECORDED_FILES = MAX_HASH_BLOCKS // 2   # files recorded one by one (those hashed)
TOKEN_DTYPES = ("uint16", "uint32")   # --token-dtype: raw little-endian token ids
NANOGPT_SPLITS = ("train.bin", "val.bin")   # a folder holding both: nanoGPT's layout
TOKENS_SIDECAR = "tokens.json"        # beside them: {"dtype", "vocab_size", "tokenizer"}
MAX_PATH_BYTES = 4096     # PATH_MAX: no file can be opened by a longer path (nor --data be)
JSON_PATH_BYTES = 6 * MAX_PATH_BYTES + 256   # a path in JSON (a byte as "\udcff" at worst),
                                             # with a file entry's other fields
MAX_DATA_RECORD_BYTES = (MAX_RECORDED_FILES + 2) * JSON_PATH_BYTES + 64 * MAX_RECORDED_FILES
# the names the trainer writes in its --out-dir (outdir.py, output.replacing)
OUT_DIR_NAMES = ("ckpt.npz", "metrics.jsonl", ".lock", ".tmp-x0y1z2.npz", ".tmp-x0y1z2.jsonl",
                 ".tmp-write-test-x0y1z2", "best.npz", "ckpt-000200.npz")


# ---- corpora ------------------------------------------------------------------------
@dataclass
class Corpus:
    name: str
    train: Tokens        # [n_train]
    valid: Tokens        # [n_valid]
    files: list = field(default_factory=list)   # DataFiles, in order (none: in memory)
    split: dict = field(default_factory=dict)   # how validation was chosen, as recorded
    source: str | None = None                   # --data, resolved; None: the default
    root: str | None = None                     # the folder a --data folder lists
    pattern: str | None = None                  # --data GLOB, resolved (as ``source``)
    tokens: dict | None = None                  # token files: {"dtype", "vocab_size"
                                                # (None: max id + 1), "tokenizer"}; None: bytes
    _record: dict | None = field(default=None, repr=False)
    _max_id: int | None = field(default=None, repr=False)

    @property
    def unit(self) -> str:
        """What one token of the corpus is, for messages: 'byte' or 'token'."""
        return "token" if self.tokens else "byte"

    @property
    def vocab_size(self) -> int:
        """The vocabulary the data needs: 256 for bytes; for token ids the sidecar's
        ``vocab_size``, else the largest id + 1 (every token read once)."""
        if not self.tokens:
            return 256
        return self.tokens.get("vocab_size") or self.max_id() + 1

    def max_id(self) -> int:
        """The largest token in either split (every token read once, then remembered)."""
        if self._max_id is None:
            self._max_id = max(int(piece.max()) for split in (self.train, self.valid)
                               for piece, _ in split.chunks(len(split), COUNT_CHUNK))
        return self._max_id

    def check_fits(self, context: int, vocab_size: int = 256) -> None:
        """DataError unless both splits hold more than ``context + 1`` bytes and every
        byte is a token of the model (below ``vocab_size``; checked on the baselines'
        sample of a larger corpus); cheap, so call it before the model is allocated."""
        for split in ("train", "valid"):
            tokens = getattr(self, split)
            n = tokens.shape[0]
            if n <= context + 1:
                raise DataError(
                    f"corpus '{self.name}': the {split} split has {n} {self.unit}s, too "
                    f"short for windows of {context} {self.unit}s plus a target; use a "
                    "longer file or a smaller --context")
            if self.tokens and self.max_id() >= vocab_size:
                raise DataError(f"corpus '{self.name}' holds token id {self.max_id()}, but "
                                f"the model's vocab_size is {vocab_size}; raise --vocab-size "
                                f"or the vocab_size of its {TOKENS_SIDECAR}, or leave both "
                                "out (the largest id + 1 is taken)")
            if not self.tokens and vocab_size < 256:      # every byte is below 256
                top = max(int(piece.max()) for piece, _ in
                          tokens.chunks(BASELINE_SAMPLE_BYTES, COUNT_CHUNK))
                if top >= vocab_size:
                    raise DataError(
                        f"corpus '{self.name}' holds byte {top}, but the model's vocab_size "
                        f"is {vocab_size}: a byte corpus needs --vocab-size 256")

    def check_outside(self, folder: str) -> None:
        """DataError if the files the trainer writes in ``folder`` (the run's --out-dir)
        would be data: ``folder`` lies in a --data folder, or one of the names it writes
        there matches a --data glob."""
        out = os.path.realpath(folder)
        if self.root and os.path.join(out, "").startswith(os.path.join(self.root, "")):
            raise DataError(f"--out-dir '{folder}' is inside the --data folder '{self.root}', "
                            "so its checkpoint would become data that changes; keep "
                            "--out-dir out of it")
        written = [name for name in OUT_DIR_NAMES
                   if self.pattern and glob_reaches(self.pattern, out, name)]
        if written:
            raise DataError(f"the --data glob '{self.pattern}' matches '{written[0]}', which "
                            f"the trainer writes in --out-dir '{folder}', so it would become "
                            "data that changes; narrow the glob or move --out-dir")

    def record(self) -> dict:
        """The corpus's identity, JSON-able, for the checkpoint: the resolved source, the
        split and the split sizes, and the files: their number, digests of all their
        absolute paths and sizes and of their modification times, and the records (path,
        size, modification time, content hash) of the at most MAX_RECORDED_FILES files
        ``hash_budget`` hashes (all of a corpus of up to that many files); an in-memory
        corpus: a hash of its bytes instead. Bounded whatever the number of files (see
        ``bounded_record``); computed once."""
        if self._record is None:
            rec = {"source": self.source, "split": self.split,
                   "train_bytes": len(self.train), "valid_bytes": len(self.valid)}
            if self.tokens:     # lengths in tokens; the ids' type and vocabulary
                rec["tokens"] = self.tokens
            if self.files:
                rec["files"] = [f.record(n) for f, n in zip(self.files,
                                                           hash_budget(len(self.files)))]
            else:
                h = hashlib.blake2b(digest_size=16)
                for tokens in (self.train, self.valid):
                    for piece, _ in tokens.chunks(len(tokens), COUNT_CHUNK):
                        h.update(piece)
                rec["fingerprint"] = h.hexdigest()
            self._record = bounded_record(rec)
        return self._record

    def digest(self) -> str:
        """SHA-256 of the record without paths and times (which differ between nodes
        that hold copies of the same files): what every rank must see the same of."""
        rec = self.record()
        content = {**rec, "source": None, "listing": None, "times": None,
                   "files": [[f.size, f.content_hash(n) if n else None] for f, n in
                             zip(self.files, hash_budget(len(self.files)))]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def bounded_record(rec: dict) -> dict:
    """A data record with one entry per file (as older versions saved it) -> its bounded
    form: ``n_files``, ``listing`` (a digest of every path and size), ``times`` (of every
    modification time; None if the record has none) and ``files``, the entries of the
    files ``hash_budget`` hashes, at most MAX_RECORDED_FILES; a split's list of
    validation files longer than that becomes its count and digest. Whatever the number
    of files, the record's JSON then fits in MAX_DATA_RECORD_BYTES. A record already
    bounded is returned as it is."""
    if "n_files" in rec:
        return rec
    files = rec.get("files", [])
    recorded = [f for f, n in zip(files, hash_budget(len(files))) if n is not None]
    split = dict(rec.get("split") or {})
    if len(split.get("valid_files", [])) > MAX_RECORDED_FILES:
        chosen = split.pop("valid_files")
        split["valid_files_count"], split["valid_files_digest"] = len(chosen), _digest(chosen)
    times = ([f["mtime_ns"] for f in files] if all("mtime_ns" in f for f in files) else None)
    return {**rec, "split": split, "n_files": len(files), "files": recorded,
            "listing": _digest([[f["path"], f["size"]] for f in files]),
            "times": None if times is None else _digest(times)}


def _digest(items: list) -> str:
    """BLAKE2b (16 bytes) of a list of JSON-able items, one at a time."""
    h = hashlib.blake2b(digest_size=16)
    for item in items:
        h.update(json.dumps(item).encode() + b"\n")
    return h.hexdigest()


def hash_budget(n_files: int) -> list:
    """How many 64 KiB blocks each of ``n_files`` files' content hash reads (None: not
    hashed), MAX_HASH_BLOCKS in all at most: up to 18 blocks a file for a few files, 2
    (the first and last) for many, and beyond MAX_HASH_BLOCKS / 2 files only that many,
    evenly spaced, are hashed (the others are checked by size and modification time)."""
    per_file = min(MAX_FILE_BLOCKS, max(2, MAX_HASH_BLOCKS // max(n_files, 1)))
    hashed = set(np.linspace(0, n_files - 1, min(n_files, MAX_HASH_BLOCKS // per_file))
                 .round().astype(np.int64).tolist())
    return [per_file if i in hashed else None for i in range(n_files)]


def glob_reaches(pattern: str, folder: str, name: str) -> bool:
    """Whether ``glob.glob(pattern, recursive=True)`` would list ``name`` in ``folder``
    (absolute, symlinks resolved) were it there, by any spelling: the pattern's own, or
    through a folder it lists that resolves to ``folder`` or above it (``l*/*`` reaches
    ``o/ckpt.npz`` through a symlink ``link -> o``)."""
    if glob_matches(pattern, os.path.join(folder, name)):
        return True
    head = os.path.dirname(pattern)
    listed = glob.glob(head, recursive=True) if glob.has_magic(head) else [head]
    for spelled in listed:
        real = os.path.realpath(spelled)
        if os.path.join(folder, "").startswith(os.path.join(real, "")):
            below = os.path.relpath(folder, real)
            if glob_matches(pattern, os.path.normpath(os.path.join(spelled, below, name))):
                return True
    return False


def glob_matches(pattern: str, path: str) -> bool:
    """Whether ``glob.glob(pattern, recursive=True)`` would list ``path`` if it existed
    (both absolute): ``*``, ``?`` and ``[...]`` within a name, ``**`` across folders,
    and names starting with a dot only matched by a pattern part that starts with one."""
    return _parts_match(Path(pattern).parts, Path(path).parts)


def _parts_match(pattern: tuple, names: tuple) -> bool:
    if not names:
        return all(part == "**" for part in pattern)
    if not pattern:
        return False
    first, name = pattern[0], names[0]
    if first == "**":       # no names, or one more (not hidden) for the same "**"
        return _parts_match(pattern[1:], names) or (
            not name.startswith(".") and _parts_match(pattern, names[1:]))
    if name.startswith(".") and not first.startswith(".") and glob.has_magic(first):
        return False
    return fnmatch.fnmatchcase(name, first) and _parts_match(pattern[1:], names[1:])


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not SKIPPED_STDLIB_DIRS & set(p.relative_to(root).parts))


def in_validation(relative_paths: list[str]) -> list[bool]:
    """Whole files to validation: those whose relative path's CRC-32 is 0 mod 10."""
    return [zlib.crc32(os.fsencode(rel)) % VALID_ONE_IN == 0 for rel in relative_paths]


def load_stdlib_corpus() -> Corpus:
    """Every tenth file (by a hash of its path) goes to validation. Each split grows in
    one buffer (files joined by newlines), never as a list of files plus a joined copy."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    train, valid = bytearray(), bytearray()
    for path, to_valid in zip(files, in_validation([str(p.relative_to(root)) for p in files])):
        split = valid if to_valid else train
        if split:
            split += b"\n"
        split += path.read_bytes()
    if not train or not valid:
        raise DataError(f"no Python sources found under {root}; pass --data FILE")
    return Corpus(f"python-stdlib ({root})", Tokens.of(_read_only(train)),
                  Tokens.of(_read_only(valid)), split={"valid": "files by path hash"})


class NotRegularFileError(OSError):
    """The path exists but is not a regular file (a folder, a FIFO, a device...)."""


def open_regular_file(path: str):
    """``path`` opened for binary reading, if it is a regular file: a FIFO would block
    forever and ``/dev/zero`` never ends, so anything else raises NotRegularFileError
    (its message names what the path is) before a byte is read. Other failures raise
    the OSError that ``os.stat``/``os.open`` raise (FileNotFoundError, ...)."""
    _check_regular(path, os.stat(path))
    # O_NONBLOCK: opening a FIFO swapped in after the stat returns at once instead of
    # waiting for a writer; the fstat below then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(path, os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"'{path}' is {file_kind(st.st_mode)}, not a regular file")


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words: 'a folder', 'a FIFO (named pipe)'..."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
             (stat.S_ISREG, "a regular file"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_corpus(spec: str | None = None, missing: str | None = None,
                token_dtype: str | None = None) -> Corpus:
    """The default corpus (``spec`` None), or ``spec``'s files mapped: a file, a folder
    (every regular file under it, sorted) or a glob pattern (``'texts/*.txt'``); a
    folder holding nanoGPT's ``train.bin`` and ``val.bin``: those two, as token ids.
    ``token_dtype`` ('uint16', 'uint32'): the files hold raw little-endian token ids of
    that type (None: bytes; nanoGPT's folder: uint16 or its sidecar's). ``missing``: what
    a missing file's DataError tells the user to do."""
    if token_dtype is not None:
        choose(TOKEN_DTYPES, token_dtype, "--token-dtype")
    if spec is None:
        if token_dtype is not None:
            raise DataError("--token-dtype needs --data: the default corpus is bytes")
        return load_stdlib_corpus()
    if spec and os.path.isdir(spec) and all(os.path.isfile(os.path.join(spec, name))
                                            for name in NANOGPT_SPLITS):
        return _nanogpt_corpus(spec, token_dtype, missing)
    tokens = {"dtype": token_dtype, "vocab_size": None, "tokenizer": None} if token_dtype \
        else None
    return dataclasses.replace(_open_files(spec, missing, token_dtype or "uint8"), tokens=tokens)


def _nanogpt_corpus(folder: str, token_dtype: str | None, missing: str | None) -> Corpus:
    """``folder``'s ``train.bin`` and ``val.bin`` as the train and validation splits
    (nothing else in it is read but ``tokens.json``), as nanoGPT's ``prepare.py`` writes
    them: raw token ids, uint16 unless ``token_dtype`` or the sidecar says otherwise."""
    tokens = {"dtype": None, "vocab_size": None, "tokenizer": None,
              **read_tokens_sidecar(os.path.join(folder, TOKENS_SIDECAR))}
    if token_dtype and tokens["dtype"] and token_dtype != tokens["dtype"]:
        raise DataError(f"--token-dtype {token_dtype} contradicts {TOKENS_SIDECAR} in "
                        f"'{folder}' (dtype {tokens['dtype']}); drop the flag or fix the file")
    tokens["dtype"] = token_dtype or tokens["dtype"] or "uint16"
    train, valid = (_open_data_file(os.path.join(folder, name), missing, tokens["dtype"])
                    for name in NANOGPT_SPLITS)
    for f in (train, valid):
        if f.n_tokens == 0:
            raise DataError(f"data file '{f.path}' is empty; pass a token file with content")
    return Corpus(f"nanoGPT token files '{folder}' ({tokens['dtype']})",
                  Tokens([(train, 0, train.n_tokens)]), Tokens([(valid, 0, valid.n_tokens)]),
                  [train, valid], {"valid": "val.bin"}, _resolved_source(folder),
                  root=os.path.realpath(folder), tokens=tokens)


def read_tokens_sidecar(path: str) -> dict:
    """The token files' sidecar ``tokens.json``, checked: a JSON object with any of
    ``dtype`` ('uint16'/'uint32'), ``vocab_size`` (a positive int) and ``tokenizer`` (a
    tiktoken encoding's name, e.g. 'gpt2'); {} if there is none. DataError naming the key."""
    try:
        with open_regular_file(path) as f:
            sidecar = json.loads(f.read(1 << 16).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"'{path}' cannot be read as JSON ({exc}); fix or remove it") from None
    if not isinstance(sidecar, dict):
        raise DataError(f"'{path}' must hold a JSON object, got {type(sidecar).__name__}")
    checks = {"dtype": lambda v: v in TOKEN_DTYPES,
              "vocab_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
              "tokenizer": lambda v: isinstance(v, str) and v != ""}
    for key, value in sidecar.items():
        if key not in checks:
            raise DataError(f"'{path}' has an unknown key '{key}'; it takes "
                            f"{', '.join(checks)}")
        if not checks[key](value):
            raise DataError(f"'{path}': {key} {value!r} is not valid (dtype: "
                            f"{' or '.join(TOKEN_DTYPES)}; vocab_size: a positive integer; "
                            "tokenizer: a name such as 'gpt2')")
    return sidecar


def _open_files(spec: str, missing: str | None, dtype: str) -> Corpus:
    """``spec``'s files (a file, a folder or a glob) mapped as tokens of ``dtype``."""
    if not spec:
        raise DataError("--data is empty; name a text file, a folder or a glob pattern")
    if len(os.fsencode(spec)) >= MAX_PATH_BYTES:
        raise DataError(f"--data is {len(os.fsencode(spec)):,} bytes long, longer than any "
                        f"path ({MAX_PATH_BYTES - 1}); name a shorter path or pattern")
    if os.path.isdir(spec):
        root, paths = spec, sorted(p for p in Path(spec).rglob("*") if p.is_file())
        what, source, none = f"folder '{spec}'", _resolved_source(spec), "holds no files"
        where = {"root": os.path.realpath(root)}
    elif glob.has_magic(spec) and not os.path.exists(spec):
        root = _literal_prefix(spec)
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        what, source, none = f"glob '{spec}'", _resolved_source(spec, root), "matches no files"
        where = {"pattern": source}
    else:
        return _open_one_file(spec, missing, dtype)
    if not paths:
        raise DataError(f"{what} {none}; point --data at text files")
    files = [_open_data_file(str(p), missing, dtype) for p in paths]
    kept = [(f, str(os.path.relpath(p, root))) for f, p in zip(files, paths) if f.n_tokens]
    if not kept:
        raise DataError(f"{what} holds only empty files; point --data at text files")
    if len(kept) == 1:
        return dataclasses.replace(_file_corpus(kept[0][0], what, source), **where)
    to_valid = in_validation([rel for _, rel in kept])
    if not any(to_valid) or all(to_valid):    # few files: the last one validates
        to_valid = [i == len(kept) - 1 for i in range(len(kept))]
    split = {"valid": "files by path hash", "valid_files": [i for i, v in enumerate(to_valid) if v]}
    sides = {side: Tokens([(f, 0, f.n_tokens) for (f, _), v in zip(kept, to_valid) if v == side])
             for side in (False, True)}
    return Corpus(f"{what} ({len(kept)} files)", sides[False], sides[True],
                  [f for f, _ in kept], split, source, **where)


def load_corpus(path: str | None = None) -> Corpus:
    """The library's name for ``open_corpus``."""
    return open_corpus(path)


def _open_one_file(path: str, missing: str | None = None, dtype: str = "uint8") -> Corpus:
    data_file = _open_data_file(path, missing, dtype)
    if data_file.size == 0:
        raise DataError(f"data file '{path}' is empty; pass a text file with content")
    return _file_corpus(data_file, path, data_file.path)


def _file_corpus(data_file: DataFile, name: str, source: str) -> Corpus:
    """The last 10% of the file's tokens are the validation split."""
    n = data_file.n_tokens
    cut = int(n * (1.0 - VALID_FRACTION))
    return Corpus(name, Tokens([(data_file, 0, cut)]), Tokens([(data_file, cut, n)]),
                  [data_file], {"valid": "tail", "valid_range": [cut, n]}, source)


def _open_data_file(path: str, missing: str | None = None, dtype: str = "uint8") -> DataFile:
    """A DataFile of tokens of ``dtype``, after checking that ``path`` is a regular file
    this process can read, a whole number of tokens long; ``missing``: the fix a missing
    file's message gives (default: pass another --data)."""
    try:
        with open_regular_file(path) as f:
            _check_size_is_content(path, f.fileno())
            data_file = DataFile(path, dtype)
        if data_file.size % data_file.dtype.itemsize:
            raise DataError(f"data file '{path}' has {data_file.size:,} bytes, not a whole "
                            f"number of {dtype} tokens; check --token-dtype")
        return data_file
    except NotRegularFileError as exc:
        raise DataError(f"data file {exc}; pass a text file to --data") from None
    except FileNotFoundError:
        raise DataError(f"data file '{path}' does not exist; " + (
            missing or "pass an existing text file to --data, or leave --data out for the "
                       "default corpus")) from None
    except OSError as exc:
        raise DataError(f"data file '{path}' cannot be read ({exc.strerror or exc}); check "
                        "the path and its permissions") from None


def _check_size_is_content(path: str, fd: int) -> None:
    """DataError unless the open file ``fd`` holds the bytes its size says: its last
    byte can be read, and an empty one has none. A procfs or sysfs file reports 0 or
    4096 bytes whatever it holds, and its content changes as it is read."""
    size = os.fstat(fd).st_size
    holds_its_size = len(os.pread(fd, 1, size - 1)) == 1 if size else not os.pread(fd, 1, 0)
    if not holds_its_size:
        raise DataError(f"data file '{path}' reports {size:,} bytes but holds "
                        f"{'fewer' if size else 'some'} (a procfs or sysfs file, generated as "
                        "it is read?); copy it to a regular file and pass that to --data")


def _literal_prefix(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    literal = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return str(Path(*parts[:literal])) if literal else "."


def _resolved_source(spec: str, prefix: str | None = None) -> str:
    """``spec`` made absolute with symlinks resolved (a glob pattern: its folder part)."""
    if prefix is None:
        return os.path.realpath(spec)
    return os.path.join(os.path.realpath(prefix), os.path.relpath(spec, prefix))


def check_same_data(saved: dict | None, current: dict) -> str | None:
    """DataError (one line) unless ``current`` (``Corpus.record()``) is the data the run
    was trained on (``saved``): the same files (absolute, symlinks resolved), sizes,
    modification times, content hashes and split. -> a note when there is no saved
    record to compare, or one from before the content hashes (sizes compared only)."""
    if saved is None:
        return ("note: the checkpoint has no data record (saved by an older version, or "
                "through the library without one), so the data could not be checked "
                "against the run's")
    problem = _record_problem(saved)
    if problem:
        raise DataError(f"the checkpoint's data record is damaged ({problem}); start a new "
                        "run in another --out-dir")
    return _compare_records(saved, current)


def _record_problem(saved) -> str | None:
    """What is wrong with the types of a saved data record; None if nothing."""
    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)
    if not isinstance(saved, dict):
        return f"not an object: {saved!r:.40}"
    files = saved.get("files", [])
    if not isinstance(files, list):
        return f"files is {files!r:.40}"
    for f in files:
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and is_int(f.get("size"))
                and isinstance(f.get("hash", f.get("fingerprint")), (str, type(None)))
                and (is_int(f["mtime_ns"]) if "mtime_ns" in f else True)):
            return f"file entry {f!r:.60}"
    split = saved.get("split")
    if not isinstance(split, (dict, type(None))) or (
            split and not isinstance(split.get("valid_files", []), list)):
        return f"split {split!r:.40}"
    problem = tokens_problem(saved.get("tokens"))
    if problem:
        return problem
    if "n_files" in saved:
        n_files = saved["n_files"]
        if not (is_int(n_files) and n_files >= 0 and isinstance(saved.get("listing"), str)
                and isinstance(saved.get("times"), (str, type(None)))):
            return f"n_files {n_files!r:.20}, listing or times"
        if len(files) != min(n_files, MAX_RECORDED_FILES):     # those hash_budget hashes
            return f"{len(files)} file entries for {n_files} files"
    return None


def tokens_problem(tokens) -> str | None:
    """What is wrong with a data record's ``tokens`` entry (None: bytes); None if nothing."""
    if tokens is None:
        return None
    ok = (isinstance(tokens, dict) and set(tokens) == {"dtype", "vocab_size", "tokenizer"}
          and tokens["dtype"] in TOKEN_DTYPES
          and isinstance(tokens["tokenizer"], (str, type(None)))
          and (tokens["vocab_size"] is None or (isinstance(tokens["vocab_size"], int)
                                                and tokens["vocab_size"] > 0)))
    return None if ok else f"tokens {tokens!r:.60}"


def _compare_records(saved: dict, current: dict) -> str | None:
    fix = "pass the run's data to --data, or start a new run in another --out-dir"
    saved, current = bounded_record(saved), bounded_record(current)
    old, new = saved["files"], current["files"]
    if saved["n_files"] != current["n_files"] or \
            [f["path"] for f in old] != [f["path"] for f in new]:
        raise DataError(f"this run was trained on {_describe(old, saved['n_files'])}, not "
                        f"{_describe(new, current['n_files'])}; {fix}")
    for before, after in zip(old, new):
        if before["size"] != after["size"]:
            raise DataError(f"data file '{after['path']}' changed since the run started "
                            f"({before['size']:,} -> {after['size']:,} bytes); {fix}")
        if "hash" in before and before["hash"] != after["hash"]:
            raise DataError(f"data file '{after['path']}' changed since the run started "
                            f"(its content differs); {fix}")
        if before.get("mtime_ns", after["mtime_ns"]) != after["mtime_ns"]:
            raise DataError(f"data file '{after['path']}' changed since the run started "
                            f"(its modification time differs); {fix}")
    if saved["listing"] != current["listing"]:
        raise DataError(f"a file of the run's {saved['n_files']:,} data files was renamed, "
                        f"replaced or resized since the run started; {fix}")
    if saved["times"] not in (None, current["times"]):
        raise DataError(f"a file of the run's {saved['n_files']:,} data files changed since "
                        f"the run started (its modification time differs); {fix}")
    for key in ("split", "train_bytes", "valid_bytes", "fingerprint", "tokens"):
        if saved.get(key) != current.get(key):
            raise DataError(f"the data changed since the run started ({key} "
                            f"{saved.get(key)} -> {current.get(key)}); {fix}")
    if any("hash" not in f for f in old):
        return ("note: the checkpoint's data record is from an older version: the files' "
                "paths and sizes were checked, not their content")
    return None


def _describe(files: list[dict], n_files: int) -> str:
    if not files:
        return "the default corpus"
    return files[0]["path"] + (f" and {n_files - 1:,} more" if n_files > 1 else "")


def random_batch(batch_size: int, context: int, vocab_size: int = 256, seed: int = 0):
    """Uniformly random host tokens x ``[B, T]`` and targets y ``[B]`` (int64), for tests
    and benchmarks that need inputs of a shape rather than text."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab_size, size=(batch_size, context))                # [B, T]
    y = rng.integers(0, vocab_size, size=batch_size)                           # [B]
    return x, y


def _read_only(buffer: bytearray) -> np.ndarray:
    tokens = np.frombuffer(buffer, dtype=np.uint8)      # no copy
    tokens.flags.writeable = False
    return tokens


def sample_windows(tokens, batch_size: int, context: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random windows x ``[B, T]`` (int64) and the byte after each, y ``[B]``, from a
    host array or Tokens: only the windows' bytes are read."""
    tokens = Tokens.of(tokens)
    starts = rng.integers(0, tokens.shape[0] - context, size=batch_size)       # [B]
    windows = tokens.take(starts[:, None] + np.arange(context + 1)[None, :])   # [B, T+1]
    windows = windows.astype(np.int64)
    return np.ascontiguousarray(windows[:, :-1]), windows[:, -1].copy()       # [B, T], [B]


def rank_parts(batch: np.ndarray, n: int, local_part) -> np.ndarray:
    """A global host batch ``[n * b, ...]`` of ``n`` micro-batches -> this rank's part of
    each, joined in order ``[n * b / P, ...]`` (``local_part``: the communicator's slice
    of one micro-batch ``[b, ...]`` -> ``[b / P, ...]``)."""
    return np.concatenate([local_part(part) for part in np.split(batch, n)])


def count_model_losses(train, valid, max_bytes: int | None = None,
                       vocab_size: int = 256) -> dict:
    """Validation cross-entropy (nats/token) of unigram and bigram count models fit on
    ``train``, with add-one smoothing over ``vocab_size`` tokens (256: bytes). Each split
    is read a chunk at a time (extra memory O(COUNT_CHUNK) plus the pairs seen), all of it
    up to ``max_bytes`` tokens, else evenly spaced blocks of about ``max_bytes`` (default
    BASELINE_SAMPLE_BYTES) in all (an estimate; ``baseline_note`` says when)."""
    max_bytes = BASELINE_SAMPLE_BYTES if max_bytes is None else max_bytes
    V = vocab_size
    unigram, pairs, pair_counts = _counts(Tokens.of(train), max_bytes, V)
    log_p1 = np.log((unigram + 1.0) / (unigram + 1.0).sum())                         # [V]
    row_totals = np.bincount(pairs // V, weights=pair_counts, minlength=V)           # [V]
    valid_unigram, valid_pairs, valid_counts = _counts(Tokens.of(valid), max_bytes, V)
    # each validation pair's training count (0 if unseen), then its smoothed log p(b | a)
    at = np.minimum(np.searchsorted(pairs, valid_pairs), max(len(pairs) - 1, 0))
    seen = np.where(pairs[at] == valid_pairs, pair_counts[at], 0.0) if len(pairs) else 0.0
    log_p2 = np.log((seen + 1.0) / (row_totals[valid_pairs // V] + V))    # [valid pairs]
    return {"unigram": float(-(valid_unigram * log_p1).sum() / valid_unigram.sum()),
            "bigram": float(-(valid_counts * log_p2).sum() / valid_counts.sum())}


def baseline_note(train, valid, max_bytes: int | None = None) -> str:
    """'' when ``count_model_losses`` counts every token, else which splits it sampled."""
    max_bytes = BASELINE_SAMPLE_BYTES if max_bytes is None else max_bytes
    sampled = [f"{name} ({_size(len(Tokens.of(t)))})" for name, t in
               (("train", train), ("valid", valid)) if len(Tokens.of(t)) > max_bytes]
    return (f"; estimated from {_size(max_bytes)} samples of {' and '.join(sampled)}"
            if sampled else "")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def _counts(tokens: Tokens, max_bytes: int, V: int):
    """How often each token occurs, float64 ``[V]``, and the pairs seen: their codes
    ``a * V + b`` (sorted, int64 ``[P]``) and how often b followed a (float64 ``[P]``).
    A piece that continues the previous one adds the pair across their edge. Pairs are
    counted in a dense table when there are at most DENSE_PAIRS codes (bytes: 65,536),
    else sorted per piece and merged once the pieces' outnumber those merged (O(P log P))."""
    tokens_seen = np.zeros(V, dtype=np.int64)
    dense = np.zeros(V * V, dtype=np.int64) if V * V <= DENSE_PAIRS else None
    merged = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))   # (codes, counts)
    pending, last = [], None
    for piece, continues in tokens.chunks(max_bytes, COUNT_CHUNK):
        tokens_seen += np.bincount(piece, minlength=V)
        run = (np.concatenate([last, piece]) if continues else piece).astype(np.int64)
        codes = run[:-1] * V + run[1:]                                        # [piece]
        if dense is not None:
            dense += np.bincount(codes, minlength=V * V)
        else:
            pending.append(np.unique(codes, return_counts=True))
            if sum(len(c) for c, _ in pending) > max(len(merged[0]), COUNT_CHUNK):
                merged, pending = _merge_counts([merged, *pending]), []
        last = piece[-1:]
    if dense is not None:
        codes = np.flatnonzero(dense)
        return tokens_seen.astype(np.float64), codes, dense[codes].astype(np.float64)
    codes, counts = _merge_counts([merged, *pending])
    return tokens_seen.astype(np.float64), codes, counts.astype(np.float64)


def _merge_counts(parts: list) -> tuple[np.ndarray, np.ndarray]:
    """[(codes, counts), ...] -> the codes, sorted and unique, with their summed counts."""
    codes, at = np.unique(np.concatenate([c for c, _ in parts]), return_inverse=True)
    counts = np.bincount(at, weights=np.concatenate([n for _, n in parts]), minlength=len(codes))
    return codes, counts.astype(np.int64)


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2.0)


def as_tokens(tokens, context: int, vocab_size: int) -> Tokens:
    """``tokens`` as Tokens to draw windows of ``context`` from, checked: bytes (each byte
    a token), a 1-D integer array of tokens in ``[0, vocab_size)``, or Tokens (a
    corpus split, whose bytes ``Corpus.check_fits`` checks); in each case longer than
    ``context``. TypeError/ValueError naming ``tokens`` otherwise."""
    if isinstance(tokens, str):
        raise TypeError("tokens must be bytes or integers, got str (encode text first, "
                        "e.g. text.encode())")
    if isinstance(tokens, (bytes, bytearray, memoryview)):
        tokens = np.frombuffer(tokens, dtype=np.uint8)
    if not isinstance(tokens, Tokens):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be one sequence [n], got shape {tokens.shape}")
        if tokens.dtype == np.bool_ or not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"tokens must be integers (or bytes), got {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ValueError(f"tokens must be in [0, {vocab_size}) (the model's vocabulary), "
                             f"got {tokens.min()}..{tokens.max()}")
        tokens = Tokens.of(tokens)
    if len(tokens) <= context:
        raise ValueError(f"tokens must be longer than the context ({context}) to hold a "
                         f"window and its next token, got {len(tokens)}")
    return tokens


def check_batch(x, y, vocab_size: int) -> None:
    """ValueError unless host x ``[B, T]`` and y ``[B]`` are integer tokens in
    ``[0, vocab_size)`` with B > 0: checked once on the host, so the device never has to."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != x.shape[:1] or x.shape[0] == 0:
        raise ValueError(f"a batch is x [B, T] and y [B] with B > 0, got {x.shape} and {y.shape}")
    for name, a in (("x", x), ("y", y)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer tokens, got {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            raise ValueError(f"{name} holds tokens outside [0, {vocab_size}): "
                             f"{a.min()}..{a.max()}")
