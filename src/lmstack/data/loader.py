"""`ShardLoader`: (x, y) batches from a split's shards, split across DDP ranks, resumable.

The split's shards are read by memmap and treated as one token stream. Window i is the span
stream[i*T : i*T + T + 1] (x = its first T tokens, y = its last T), so every token is a target once
per epoch; windows cross document (bos) and shard boundaries freely, as in nanoGPT.

Each epoch the window order is a permutation fixed by (seed, epoch) (or the identity with
shuffle=False); position j of that order belongs to rank j % world_size, and the tail that would
give ranks unequal counts is left out, so ranks never share a window and stay in lockstep.
The position is counted in windows and is the same on every rank at the same step: one rank's
`state_dict()` restores all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lmstack.data.prepare import prepared_without_val
from lmstack.data.shards import ShardError, read_header, read_shard
from lmstack.errors import LmstackError

STATE_VERSION = 1


class LoaderError(LmstackError):
    """A loader setting that the data can't satisfy, or a saved position from a different setup."""


class ShardLoader:
    def __init__(self, data_dir: str | Path, split: str = "train", batch_size: int = 8, seq_len: int = 256,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool | None = None):
        if batch_size < 1 or seq_len < 1:
            raise LoaderError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be at least 1")
        if not 0 <= rank < world_size:
            raise LoaderError(f"rank {rank} is not in [0, world_size={world_size})")
        self.data_dir, self.split = Path(data_dir), split
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = split == "train" if shuffle is None else shuffle
        paths = self._shard_paths()
        self.vocab_size = _common_vocab_size(paths)  # for the trainer to check against its model
        self.shards = [read_shard(p) for p in paths]
        sizes = [len(s) for s in self.shards]
        self.shard_starts = np.cumsum([0] + sizes)  # where each shard begins in the stream
        self.tokens = int(self.shard_starts[-1])
        self.windows = max(0, self.tokens - 1) // seq_len
        self.windows_per_rank = self.windows // world_size
        if self.windows_per_rank == 0:
            raise LoaderError(
                f"the {split} split in '{self.data_dir}' has {self.tokens} tokens: not enough for one window of "
                f"seq_len+1={seq_len + 1} tokens per rank ({world_size} rank(s)); lower seq_len or prepare more data")
        self.epoch = 0
        self.position = 0  # windows of this epoch's order already taken (by this rank)
        self._cached_order: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def _shard_paths(self) -> list[Path]:
        create = f"`lmstack prepare --tokenizer DIR --out {self.data_dir}`"
        if not self.data_dir.is_dir():
            raise ShardError(f"data dir '{self.data_dir}' does not exist; create it with {create}")
        paths = sorted(self.data_dir.glob(f"{self.split}_*.bin"))
        if not paths:
            # A val split prepare left empty comes back empty from the same command: say what to change.
            why = prepared_without_val(self.data_dir) if self.split == "val" else None
            raise ShardError(f"no {self.split} shards ({self.split}_*.bin) in '{self.data_dir}': "
                             f"{why or f'create them with {create}'}")
        return paths

    # ---- window order -------------------------------------------------------------------------
    def rank_windows(self, epoch: int) -> np.ndarray:
        """The window indices this rank takes in `epoch`, in order."""
        if self._cached_order[0] != epoch:
            self._cached_order = (epoch, self._order(epoch))
        return self._cached_order[1]

    def _order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
        else:
            order = np.arange(self.windows)
        return order[: self.windows_per_rank * self.world_size][self.rank :: self.world_size]

    def window(self, index: int) -> np.ndarray:
        """Tokens [index*T, index*T + T + 1) of the stream, as int64, read across shards."""
        start, end = index * self.seq_len, index * self.seq_len + self.seq_len + 1
        shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        pieces = []
        while start < end:
            offset = start - int(self.shard_starts[shard])
            piece = self.shards[shard][offset : offset + end - start]
            pieces.append(piece)
            start += len(piece)
            shard += 1
        return np.concatenate(pieces).astype(np.int64)

    def _batch(self, indices: list[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.stack([self.window(int(i)) for i in indices]))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    # ---- training: an endless, resumable stream ------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), each a (batch_size, seq_len) LongTensor; epochs roll over seamlessly."""
        indices = []
        for _ in range(self.batch_size):
            if self.position == self.windows_per_rank:
                self.epoch, self.position = self.epoch + 1, 0
            indices.append(self.rank_windows(self.epoch)[self.position])
            self.position += 1
        return self._batch(indices)

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "split": self.split, "epoch": self.epoch, "position": self.position,
                "seed": self.seed, "shuffle": self.shuffle, "world_size": self.world_size,
                "seq_len": self.seq_len, "windows": self.windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` left off (batch_size may change; the data layout may not)."""
        for key in ("version", "split", "seed", "shuffle", "world_size", "seq_len", "windows"):
            mine = STATE_VERSION if key == "version" else getattr(self, key)
            if state.get(key) != mine:
                raise LoaderError(
                    f"the saved data position was made with {key}={state.get(key)!r}, this loader has "
                    f"{key}={mine!r}; resume with the same data dir and settings, or start a fresh run")
        if not 0 <= state["position"] <= self.windows_per_rank:
            raise LoaderError(f"the saved data position {state['position']} is past this split's "
                              f"{self.windows_per_rank} windows per rank; the state does not belong to this data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ---- evaluation: each window once ----------------------------------------------------------
    def iter_epoch(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over this rank's windows of epoch 0 (the last batch may be smaller).

        Independent of `next_batch`'s position, so evaluation never disturbs training.
        """
        windows = self.rank_windows(0)
        step = batch_size or self.batch_size
        for first in range(0, len(windows), step):
            yield self._batch(windows[first : first + step])


def _common_vocab_size(paths: list[Path]) -> int:
    sizes = {path: read_header(path).vocab_size for path in paths}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{path.name}: {size}" for path, size in sizes.items())
        raise ShardError(f"the shards in '{paths[0].parent}' were written by tokenizers of different vocab sizes "
                         f"({listing}); re-run `lmstack prepare` into an empty --out")
    return next(iter(sizes.values()))
