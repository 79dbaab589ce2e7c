"""Token shards: one flat array of token ids per `.bin` file, behind a 32-byte header.

Header (little-endian), then the tokens as a flat array of the header's dtype:

    offset  size  field
    0       8     magic b"LMSHARD\\0"
    8       4     version (uint32, currently 1)
    12      4     bytes per token (uint32: 2 = uint16, 4 = uint32)
    16      8     token count (uint64)
    24      8     vocab size of the tokenizer that wrote it (uint64)

uint16 is used when every id fits (vocab size <= 65536), which halves disk and page cache.
A file's size must be exactly 32 + count * bytes per token; anything else is a truncated or
foreign file and reading it is a `ShardError` that names the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmstack.atomic import atomic_write
from lmstack.errors import LmstackError

MAGIC = b"LMSHARD\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = HEADER.size  # 32
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class ShardError(LmstackError):
    """A shard file (or a directory of them) that is missing, truncated or not a shard."""


@dataclass(frozen=True, slots=True)
class ShardHeader:
    version: int
    dtype: np.dtype
    token_count: int
    vocab_size: int


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id below `vocab_size`."""
    return DTYPES[2] if vocab_size <= 2**16 else DTYPES[4]


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> Path:
    """Write `tokens` to `path` atomically (a crash leaves no half-written shard)."""
    dtype = token_dtype(vocab_size)
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1, f"a shard is a flat array of ids, got shape {tokens.shape}"
    assert tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < vocab_size), "token id outside the vocab"
    header = HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size, vocab_size)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(tokens.astype(dtype, copy=False).tobytes())

    path = Path(path)
    atomic_write(path, write)
    return path


def read_header(path: str | Path) -> ShardHeader:
    """Read and validate a shard's header against the file's size."""
    path = Path(path)
    rerun = "re-run `lmstack prepare` to rewrite the shards"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError as err:
        raise ShardError(f"cannot read shard '{path}': {err.strerror}; {rerun}") from None
    if len(raw) < HEADER_SIZE:
        raise ShardError(f"shard '{path}' is truncated: {size} bytes, shorter than the "
                         f"{HEADER_SIZE}-byte header; {rerun}")
    magic, version, itemsize, count, vocab_size = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"'{path}' is not an lmstack shard (magic {magic!r}, expected {MAGIC!r}); "
                         "point the loader at a directory written by `lmstack prepare`")
    if version != VERSION:
        raise ShardError(f"shard '{path}' has format version {version}; this lmstack reads version "
                         f"{VERSION}; {rerun}")
    if itemsize not in DTYPES:
        raise ShardError(f"shard '{path}' has {itemsize} bytes per token; only 2 or 4 are valid; {rerun}")
    expected = HEADER_SIZE + count * itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ShardError(f"shard '{path}' is {state}: its header says {count} tokens ({expected} bytes) "
                         f"but the file has {size} bytes; {rerun}")
    return ShardHeader(version, DTYPES[itemsize], count, vocab_size)


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only memmap (no copy; pages load on first touch)."""
    header = read_header(path)
    if header.token_count == 0:
        return np.zeros(0, dtype=header.dtype)  # np.memmap refuses an empty mapping
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_SIZE, shape=(header.token_count,))
