"""Which tokens run in the next step: continuous batching under a token budget.

Each step first serves the running sequences, oldest first (one token for those decoding, the next
chunk for those still prefilling), then admits waiting sequences while the token budget, the sequence
limit and the block pool allow. When a decoding sequence needs a new block and the pool is empty, the
most recently admitted sequence is preempted: its blocks are freed and it waits at the front of the
queue, to be recomputed later (its generated tokens are kept). Nothing crashes for lack of memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lmstack.infer.block_manager import BlockManager
from lmstack.infer.sequence import Sequence, Status


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int  # first position computed in this step
    length: int
    samples: bool  # the chunk reaches the sequence's last token, so its logits give the next token


def _chunk(seq: Sequence, budget: int) -> ScheduledChunk:
    """The sequence's next tokens to compute, at most `budget` of them."""
    num_tokens, start = seq.num_tokens, seq.num_computed_tokens
    take = min(num_tokens - start, budget)
    return ScheduledChunk(seq, start, take, start + take == num_tokens)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_batched_tokens
        chunks: list[ScheduledChunk] = []
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            if not self._make_room(seq):
                continue
            chunks.append(chunk := _chunk(seq, budget))
            budget -= chunk.length
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            chunks.append(chunk := _chunk(seq, budget))
            budget -= chunk.length
        return chunks

    def _make_room(self, seq: Sequence) -> bool:
        """Ensure a block for the sequence's newest token, preempting the newest others; False if `seq` itself was."""
        while not self.block_manager.append_slot(seq):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
