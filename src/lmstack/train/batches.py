"""The global batch, the same whatever the number of processes.

A step's global batch is `world_size * grad_accum` micro-batches. Each one comes from its own
*virtual rank* v = rank * grad_accum + micro of a loader split `world_size * grad_accum` ways, so
2 processes x 1 micro-batch read exactly the sequences that 1 process x 2 micro-batches reads: the
loss curves match, and a run may move to more GPUs with the same global batch.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from lmstack.data.loader import ShardLoader


class GlobalBatchLoader:
    def __init__(self, data_dir: str, batch_size: int, seq_len: int, rank: int, world_size: int,
                 grad_accum: int, seed: int, device: torch.device):
        self.device = device
        ways = world_size * grad_accum
        self.loaders = [ShardLoader(data_dir, "train", batch_size, seq_len, rank=rank * grad_accum + micro,
                                    world_size=ways, seed=seed) for micro in range(grad_accum)]

    def micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's `grad_accum` micro-batches of the next step, on the device."""
        for loader in self.loaders:
            x, y = loader.next_batch()
            yield to_device(x, self.device), to_device(y, self.device)

    def state_dict(self) -> list[dict[str, Any]]:
        return [loader.state_dict() for loader in self.loaders]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        assert len(states) == len(self.loaders), "loader states saved with a different gradient accumulation"
        for loader, state in zip(self.loaders, states):
            loader.load_state_dict(state)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t).long()
    # Pinned memory lets the copy to a GPU overlap compute; on CPU there is nothing to copy.
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
