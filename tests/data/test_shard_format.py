"""The .bin shard format, checked by parsing the bytes by hand (struct), not with our reader."""

import struct

import numpy as np
import pytest

from lmstack.data.shards import ShardError, read_shard, write_shard


def parse_by_hand(path):
    raw = path.read_bytes()
    magic, version, itemsize, count, vocab = struct.unpack("<8sIIQQ", raw[:32])
    tokens = np.frombuffer(raw[32:], dtype={2: "<u2", 4: "<u4"}[itemsize])
    return magic, version, itemsize, count, vocab, tokens


@pytest.mark.parametrize("vocab_size, itemsize", [(320, 2), (65535, 2), (65536, 2), (65537, 4), (200_000, 4)])
def test_header_counts_tokens_and_picks_dtype(tmp_path, vocab_size, itemsize):
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=1001)
    path = write_shard(tmp_path / "train_000000.bin", tokens, vocab_size)
    magic, version, size, count, vocab, on_disk = parse_by_hand(path)
    assert (magic, version, size, count, vocab) == (b"LMSHARD\0", 1, itemsize, 1001, vocab_size)
    assert path.stat().st_size == 32 + 1001 * itemsize
    np.testing.assert_array_equal(on_disk, tokens)
    np.testing.assert_array_equal(read_shard(path), tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["train_000000.bin"]  # no temp file left behind


def test_empty_shard_reads_as_empty(tmp_path):
    path = write_shard(tmp_path / "s.bin", np.array([], dtype=np.int64), 320)
    assert read_shard(path).size == 0


def test_truncated_shard_names_the_file(tmp_path):
    path = write_shard(tmp_path / "train_000003.bin", np.arange(100), 320)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ShardError, match=r"train_000003\.bin' is truncated: its header says 100 tokens"):
        read_shard(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ShardError, match="shorter than the 32-byte header"):
        read_shard(path)


def test_foreign_and_overlong_files(tmp_path):
    foreign = tmp_path / "val_000000.bin"
    foreign.write_bytes(b"\x00" * 64)
    with pytest.raises(ShardError, match="is not an lmstack shard"):
        read_shard(foreign)
    path = write_shard(tmp_path / "s.bin", np.arange(10), 320)
    path.write_bytes(path.read_bytes() + b"\x01\x00")
    with pytest.raises(ShardError, match="longer than its header says"):
        read_shard(path)
    with pytest.raises(ShardError, match="cannot read shard"):
        read_shard(tmp_path / "missing.bin")
