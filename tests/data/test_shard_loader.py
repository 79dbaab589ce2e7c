"""ShardLoader: windows are the stream's spans, ranks are disjoint, a restored loader resumes exactly.

The stream is arange(N), so a window's first token names it and y must equal x + 1.
"""

import json

import numpy as np
import pytest
import torch

from lmstack.data.loader import LoaderError, ShardLoader
from lmstack.data.prepare import prepare
from lmstack.data.shards import ShardError, read_shard, write_shard

TOKENS, SEQ_LEN = 5000, 16
WINDOWS = (TOKENS - 1) // SEQ_LEN  # 312


@pytest.fixture
def data_dir(tmp_path):
    stream = np.arange(TOKENS)
    for index, (start, end) in enumerate([(0, 1000), (1000, 1037), (1037, 3037), (3037, TOKENS)]):
        write_shard(tmp_path / f"train_{index:06d}.bin", stream[start:end], vocab_size=65536)
    write_shard(tmp_path / "val_000000.bin", stream[:100], vocab_size=65536)
    return tmp_path


def starts_of(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


def check_spans(x: torch.Tensor, y: torch.Tensor) -> None:
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape
    expected = x[:, :1] + torch.arange(x.shape[1])  # contiguous span of the stream, even across shards
    assert torch.equal(x, expected) and torch.equal(y, x + 1)
    assert all(start % SEQ_LEN == 0 for start in starts_of(x))


def test_one_epoch_covers_every_window_once(data_dir):
    loader = ShardLoader(data_dir, "train", batch_size=4, seq_len=SEQ_LEN)
    assert loader.tokens == TOKENS and loader.windows == WINDOWS
    seen = []
    for _ in range(WINDOWS // 4):
        x, y = loader.next_batch()
        assert x.shape == (4, SEQ_LEN)
        check_spans(x, y)
        seen += starts_of(x)
    assert sorted(seen) == [i * SEQ_LEN for i in range(WINDOWS)]
    assert seen != sorted(seen)  # shuffled
    assert (loader.epoch, loader.position) == (0, WINDOWS)
    next_epoch = starts_of(loader.next_batch()[0])
    assert loader.epoch == 1 and next_epoch != seen[:4]


def test_ranks_never_share_a_window(data_dir):
    world_size = 3
    loaders = [ShardLoader(data_dir, "train", batch_size=8, seq_len=SEQ_LEN, rank=r, world_size=world_size, seed=5)
               for r in range(world_size)]
    per_rank = [[] for _ in loaders]
    for _ in range(WINDOWS // world_size // 8):  # one epoch: 104 windows per rank
        for rank, loader in enumerate(loaders):
            x, y = loader.next_batch()
            check_spans(x, y)
            per_rank[rank] += starts_of(x)
    all_windows = [s for windows in per_rank for s in windows]
    assert len(all_windows) == len(set(all_windows)) == WINDOWS
    assert loaders[0].state_dict() == loaders[1].state_dict() == loaders[2].state_dict()  # lockstep


def test_restored_loader_continues_with_exactly_the_next_batch(data_dir):
    loader = ShardLoader(data_dir, "train", batch_size=5, seq_len=SEQ_LEN, seed=3)
    for _ in range(61):  # 305 windows: the next batches cross into epoch 1
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # saved as JSON in train_state
    expected = [loader.next_batch() for _ in range(6)]
    assert loader.epoch == 1

    restored = ShardLoader(data_dir, "train", batch_size=5, seq_len=SEQ_LEN, seed=3)
    restored.load_state_dict(state)
    for x_expected, y_expected in expected:
        x, y = restored.next_batch()
        assert torch.equal(x, x_expected) and torch.equal(y, y_expected)


def test_one_ranks_state_restores_every_rank(data_dir):
    ranks = [ShardLoader(data_dir, "train", batch_size=4, seq_len=SEQ_LEN, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        for loader in ranks:
            loader.next_batch()
    state = ranks[0].state_dict()
    fresh_rank1 = ShardLoader(data_dir, "train", batch_size=4, seq_len=SEQ_LEN, rank=1, world_size=2)
    fresh_rank1.load_state_dict(state)
    assert torch.equal(fresh_rank1.next_batch()[0], ranks[1].next_batch()[0])


def test_seed_fixes_the_order(data_dir):
    order = lambda seed: starts_of(ShardLoader(data_dir, "train", batch_size=32, seq_len=SEQ_LEN, seed=seed).next_batch()[0])
    assert order(1) == order(1) and order(1) != order(2)


def test_val_pass_yields_each_window_once_in_order(data_dir):
    loader = ShardLoader(data_dir, "val", batch_size=4, seq_len=SEQ_LEN)  # 99 // 16 = 6 windows
    batches = list(loader.iter_epoch())
    assert [len(x) for x, _ in batches] == [4, 2]
    for x, y in batches:
        check_spans(x, y)
    assert [s for x, _ in batches for s in starts_of(x)] == [i * SEQ_LEN for i in range(6)]
    assert loader.position == 0  # evaluation does not move the training position
    halves = [ShardLoader(data_dir, "val", batch_size=4, seq_len=SEQ_LEN, rank=r, world_size=2) for r in range(2)]
    assert sorted(s for h in halves for x, _ in h.iter_epoch() for s in starts_of(x)) == [i * SEQ_LEN for i in range(6)]


def test_loader_reads_what_prepare_wrote(tokenizer, make_corpus, tmp_path):
    out = tmp_path / "data"
    prepare(str(make_corpus(30)), out, tokenizer, shard_tokens=300, workers=1, show_progress=False)
    stream = np.concatenate([read_shard(p) for p in sorted(out.glob("train_*.bin"))])
    loader = ShardLoader(out, "train", batch_size=3, seq_len=8, shuffle=False)
    windows = [x for x, _ in loader.iter_epoch()]
    rebuilt = torch.cat(windows).flatten()
    assert rebuilt[0].item() == tokenizer.bos_id
    assert np.array_equal(rebuilt.numpy(), stream[: loader.windows * 8])


def test_bad_states_and_data_are_clear_errors(data_dir, tmp_path):
    loader = ShardLoader(data_dir, "train", batch_size=4, seq_len=SEQ_LEN)
    other = ShardLoader(data_dir, "train", batch_size=4, seq_len=32)
    with pytest.raises(LoaderError, match="made with seq_len=32, this loader has seq_len=16"):
        loader.load_state_dict(other.state_dict())
    with pytest.raises(LoaderError, match="val split .* has 100 tokens: not enough for one window"):
        ShardLoader(data_dir, "val", batch_size=1, seq_len=200)
    with pytest.raises(ShardError, match=r"no test shards \(test_\*\.bin\)"):
        ShardLoader(data_dir, "test", batch_size=1, seq_len=8)
    write_shard(tmp_path / "mixed" / "train_000000.bin", np.arange(50), vocab_size=320)
    write_shard(tmp_path / "mixed" / "train_000001.bin", np.arange(50), vocab_size=4096)
    with pytest.raises(ShardError, match=r"different vocab sizes \(train_000000.bin: 320, train_000001.bin: 4096\)"):
        ShardLoader(tmp_path / "mixed", "train", batch_size=1, seq_len=8)
    assert loader.vocab_size == 65536
    shard = data_dir / "train_000002.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(ShardError, match=r"train_000002\.bin' is truncated"):
        ShardLoader(data_dir, "train", batch_size=1, seq_len=8)
