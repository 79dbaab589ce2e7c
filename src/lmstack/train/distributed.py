"""The few collectives the loop needs, written so a single process (no process group) just passes through."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks (SUM then divide: gloo has no AVG)."""
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (e.g. one rank caught SIGTERM)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Run the body, then destroy the process group. After a body that finished, the ranks first wait for each
    other: once, under load, a 2-process gloo run that had finished every step aborted both ranks at exit
    (SIGABRT, 'terminate called without an active exception') while one rank was still writing its last files
    and the other had torn down. After a failure there is no barrier: the other ranks may never arrive."""
    try:
        yield
        barrier()
    finally:
        if is_distributed():
            dist.destroy_process_group()
