"""The validation batches of one eval: the first `max_batches` of this rank's val windows, always the same."""

from __future__ import annotations

import itertools
from typing import Iterator

import torch

from lmstack.data.loader import ShardLoader
from lmstack.train.batches import to_device


def val_batches(loader: ShardLoader, max_batches: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `max_batches` of the val loader's windows for this rank (iter_epoch restarts every time)."""
    for x, y in itertools.islice(loader.iter_epoch(), max_batches):
        yield to_device(x, device), to_device(y, device)
