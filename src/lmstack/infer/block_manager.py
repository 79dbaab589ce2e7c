"""The KV block pool: fixed-size blocks, a block table per sequence, prefix caching by hash.

A full block is identified by the hash of (hash of the block before it, its token ids), so equal
prompt prefixes map to the same blocks and a shared system prompt is computed once. A block is
registered under its hash only after its k, v are computed. Freed blocks that hold a registered prefix
stay findable until the pool needs them again (oldest first); freed blocks without one are reused first.
"""

from __future__ import annotations

from collections import deque

from lmstack.infer.sequence import Sequence


def chain_hash(previous: int | None, tokens: list[int]) -> int:
    return hash((previous, tuple(tokens)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.hash_of_block: list[int | None] = [None] * num_blocks
        self.block_of_hash: dict[int, int] = {}
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        return self.blocks_needed(seq.num_tokens) <= self.num_free_blocks + self._cached_free_prefix(seq)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks."""
        assert not seq.block_table
        for block in self._prefix_blocks(seq):
            if self.ref_counts[block] == 0:
                self.free_blocks.remove(block)
            self.ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(self.hash_of_block[block])
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        while len(seq.block_table) < self.blocks_needed(seq.num_tokens):
            seq.block_table.append(self._take_free_block())

    def append_slot(self, seq: Sequence) -> bool:
        """Make room for the sequence's newest token; False when the pool is empty (preempt someone)."""
        if len(seq.block_table) * self.block_size >= seq.num_tokens:
            return True
        if not self.free_blocks:
            return False
        seq.block_table.append(self._take_free_block())
        return True

    def register_computed(self, seq: Sequence) -> None:
        """Record the hashes of blocks that became full and computed, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        while (len(seq.block_hashes) + 1) * self.block_size <= seq.num_computed_tokens:
            i = len(seq.block_hashes)
            previous = seq.block_hashes[-1] if seq.block_hashes else None
            h = chain_hash(previous, seq.tokens(i * self.block_size, (i + 1) * self.block_size))
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.block_of_hash and self.hash_of_block[block] is None:
                self.block_of_hash[h] = block
                self.hash_of_block[block] = h

    def free(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.hash_of_block[block] is None:
                    self.free_blocks.appendleft(block)
                else:
                    self.free_blocks.append(block)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

    def _take_free_block(self) -> int:
        block = self.free_blocks.popleft()
        h = self.hash_of_block[block]
        if h is not None:  # evict the prefix it held
            del self.block_of_hash[h]
            self.hash_of_block[block] = None
        self.ref_counts[block] = 1
        return block

    def _prefix_blocks(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the sequence's leading full blocks. The last token is always left to
        compute (its logits give the next token), and prompt logprobs need every prompt position."""
        if not self.enable_prefix_caching or seq.wants_prompt_logprobs:
            return []
        tokens = seq.token_ids
        blocks, previous = [], None
        for i in range((len(tokens) - 1) // self.block_size):
            previous = chain_hash(previous, tokens[i * self.block_size:(i + 1) * self.block_size])
            block = self.block_of_hash.get(previous)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def _cached_free_prefix(self, seq: Sequence) -> int:
        """Prefix blocks that are in use by others, so allocating them costs no free block."""
        return sum(1 for b in self._prefix_blocks(seq) if self.ref_counts[b] > 0)
