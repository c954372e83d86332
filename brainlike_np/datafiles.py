"""The tokens of a corpus, read only where needed: :class:`DataFile` (one file's identity
and its checked, mapped or ``pread`` reads) and :class:`Tokens` (a token sequence made of
ranges of files or arrays, never joined in memory). A file holds bytes (each byte a
token) or raw little-endian ``uint16``/``uint32`` token ids (nanoGPT's ``train.bin``);
offsets and lengths count tokens. Host-side NumPy, like ``data.py``."""

from __future__ import annotations

import hashlib
import mmap
import os

import numpy as np

READ_CHUNK = 1 << 18      # bytes ``Tokens.tobytes`` reads at a time
SAMPLE_BLOCK = 2**20      # a sample of a long sequence: evenly spaced blocks of this size
HASH_BLOCK = 2**16        # a file's content hash reads blocks of this size: its first and
MAX_FILE_BLOCKS = 18      # last, and evenly spaced ones between, up to this many in all


class DataError(ValueError):
    """The corpus cannot be used; the message says which file and what to do."""


# ---- files: identity, checked reads --------------------------------------------------
class DataFile:
    """One file of a corpus, as it was when the corpus was opened: its absolute path
    (symlinks resolved), size, inode and modification and change times. ``map()`` maps
    it read-only for one read; a file removed, replaced, resized or written since is a
    DataError (reading a truncated map would kill the process with SIGBUS)."""

    def __init__(self, path: str, dtype: str = "uint8"):
        self.path = os.path.realpath(path)
        st = os.stat(self.path)
        self.size, self.mtime_ns, self._stat = st.st_size, st.st_mtime_ns, _identity(st)
        self.dtype = np.dtype(dtype).newbyteorder("<")      # the tokens' type on disk
        self.n_tokens = self.size // self.dtype.itemsize
        self._content_hash = {}

    def check_unchanged(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise DataError(self._changed("was removed")) from None
        if st.st_size != self.size:
            raise DataError(self._changed(f"changed size ({self.size:,} -> {st.st_size:,} "
                                          "bytes)"))
        if (st.st_dev, st.st_ino) != self._stat[:2]:
            raise DataError(self._changed("was replaced by another file"))
        if _identity(st) != self._stat:
            raise DataError(self._changed("was written to (its modification or change time "
                                          "moved)"))

    def _changed(self, what: str) -> str:
        return (f"data file '{self.path}' {what} during the run; restore it and --resume "
                "(the last checkpoint is intact)")

    def map(self) -> np.ndarray:
        """The whole file as a read-only token array ``[n_tokens]`` over a memory map,
        unmapped when the array is freed. MADV_RANDOM: a page fault reads its page, not
        the read-ahead window around it (8 MiB on some disks, for a 65-byte window)."""
        self.check_unchanged()
        with open(self.path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), self.size, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)
        return np.frombuffer(mapped, dtype=self.dtype, count=self.n_tokens)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` read with ``pread`` (the page cache holds them, not
        this process, unlike a map's pages)."""
        size = self.dtype.itemsize
        return np.frombuffer(self._read_spans([(start * size, stop * size)])[0],
                             dtype=self.dtype)

    def _read_spans(self, spans: list[tuple[int, int]]) -> list[bytes]:
        self.check_unchanged()
        with open(self.path, "rb") as f:
            got = [os.pread(f.fileno(), stop - start, start) for start, stop in spans]
        if any(len(g) != stop - start for g, (start, stop) in zip(got, spans)):
            raise DataError(self._changed("was truncated"))
        return got

    def content_hash(self, n_blocks: int = MAX_FILE_BLOCKS) -> str:
        """BLAKE2b (8 bytes, 16 hex digits) of the size and ``n_blocks`` (at least 2)
        blocks of HASH_BLOCK bytes: the first, the last and evenly spaced ones between;
        all of a file of at most ``n_blocks`` blocks. Reads ``n_blocks`` * 64 KiB at most."""
        if n_blocks not in self._content_hash:
            n_blocks = max(2, n_blocks)
            if self.size <= n_blocks * HASH_BLOCK:
                spans = [(0, self.size)]
            else:
                starts = np.linspace(0, self.size - HASH_BLOCK, n_blocks).astype(np.int64)
                spans = [(int(s), int(s) + HASH_BLOCK) for s in starts]
            h = hashlib.blake2b(str(self.size).encode(), digest_size=8)
            for piece in self._read_spans(spans):
                h.update(piece)
            self._content_hash[n_blocks] = h.hexdigest()
        return self._content_hash[n_blocks]

    def record(self, n_blocks: int | None) -> dict:
        """Path, size, modification time (ns) and content hash (None: ``n_blocks`` None,
        a file the corpus's hash budget left out); about 80 bytes of JSON plus the path."""
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns,
                "hash": None if n_blocks is None else self.content_hash(n_blocks)}


def _identity(st: os.stat_result) -> tuple:
    """What changes when a file is replaced or written: device, inode, size, mtime, ctime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# ---- token sequences made of parts ---------------------------------------------------
class Tokens:
    """A token sequence ``[n]`` made of parts, in order, never joined in memory: each part
    is a range of an in-memory integer array or of a DataFile, mapped only while read."""

    def __init__(self, parts: list[tuple[object, int, int]]):
        self.parts = parts                              # (array or DataFile, start, stop)
        self.lengths = np.array([stop - start for _, start, stop in parts], dtype=np.int64)
        self.ends = np.cumsum(self.lengths)             # [n_parts]: where each part ends
        self.starts = self.ends - self.lengths          # [n_parts]: where each begins
        self.shape = (int(self.ends[-1]) if parts else 0,)
        self.dtype = np.result_type(np.uint8, *(source.dtype.newbyteorder("=")
                                                for source, _, _ in parts))

    @classmethod
    def of(cls, tokens) -> "Tokens":
        """``tokens`` as Tokens: a Tokens as is, a 1-D host array as one part."""
        if isinstance(tokens, Tokens):
            return tokens
        tokens = np.asarray(tokens)
        return cls([(tokens, 0, tokens.shape[0])])

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at ``positions`` (any shape, each in ``[0, n)``): only the parts
        they fall in are read, and of those only the pages holding them."""
        which = np.searchsorted(self.ends, positions, side="right")     # part of each
        local = positions - self.starts[which]                          # offset in it
        out = np.empty(positions.shape, dtype=self.dtype)   # uint8 for bytes
        for i in np.unique(which):
            source, start, _ = self.parts[i]
            mapped = source.map() if isinstance(source, DataFile) else source
            hit = which == i
            out[hit] = mapped[start + local[hit]]
        return out

    def chunks(self, max_bytes: int, chunk: int):
        """-> (piece, whether it continues the previous piece), pieces of at most
        ``chunk`` bytes: every byte when there are at most ``max_bytes``, else evenly
        spaced blocks of SAMPLE_BLOCK bytes, about ``max_bytes`` in all."""
        for i, start, stop in self._ranges(max_bytes):
            source, offset, _ = self.parts[i]
            for s in range(start, stop, chunk):
                e = min(s + chunk, stop)
                piece = (source.read(offset + s, offset + e) if isinstance(source, DataFile)
                         else source[offset + s:offset + e])
                yield piece, s > start

    def _ranges(self, max_bytes: int):
        """(part, start, stop) ranges in the parts' own offsets."""
        if len(self) <= max_bytes:
            return [(i, 0, int(n)) for i, n in enumerate(self.lengths)]
        block = min(SAMPLE_BLOCK, max_bytes)
        starts = np.linspace(0, len(self) - block, max(1, max_bytes // block)).astype(np.int64)
        which = np.searchsorted(self.ends, starts, side="right")
        local = starts - self.starts[which]
        return [(int(i), int(s), int(min(s + block, self.lengths[i])))
                for i, s in zip(which, local)]

    def tobytes(self) -> bytes:
        """Every byte, joined (for small corpora and tests)."""
        return b"".join(piece.tobytes() for piece, _ in self.chunks(len(self), READ_CHUNK))

    def first(self, n: int) -> list:
        """The first ``n`` tokens (fewer if there are fewer), as a list of ints."""
        return self.take(np.arange(min(n, len(self)))).tolist()

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer if there are fewer)."""
        return self.take(np.arange(min(n, len(self)))).tobytes()
