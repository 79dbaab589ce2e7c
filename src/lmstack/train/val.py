"""The validation batches of one eval: the first `max_batches` of this rank's val windows, always the same."""

from __future__ import annotations

import itertools
from typing import Iterator

import torch

from lmstack.data.loader import ShardLoader
from lmstack.train.batches import to_device


def val_batches(data_dir: str, batch_size: int, seq_len: int, rank: int, world_size: int, max_batches: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = ShardLoader(data_dir, "val", batch_size, seq_len, rank=rank, world_size=world_size, shuffle=False)
    for x, y in itertools.islice(loader.iter_epoch(), max_batches):
        yield to_device(x, device), to_device(y, device)
