"""CUDA graphs for decode steps on NVIDIA: one captured forward per padded batch size.

A decode step is dozens of small kernels; replaying a captured graph launches them all at once.
Graphs need fixed shapes and addresses, so every input lives in a static buffer sized for the
largest batch, each sequence attends over the model's whole context (`max_context` keys, masked
by length), and padded rows write their k, v into a spare block of the pool that no sequence owns.
"""

from __future__ import annotations

import torch

from lmstack.infer.paged_cache import AttentionGroup, PagedKVCache, StepLayout, context_slots, decode_slots


class CudaGraphDecoder:
    def __init__(self, model, cache: PagedKVCache, max_batch: int, max_context: int, spare_block: int):
        self.model, self.cache = model, cache
        self.block_size = cache.block_size
        self.max_context = -(-max_context // self.block_size) * self.block_size
        self.spare_slot = spare_block * self.block_size
        device = cache.k.device
        self.batch_sizes = sorted({min(b, max_batch) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)} | {max_batch})
        self.ids = torch.zeros(1, max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, max_batch, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_batch,), self.spare_slot, dtype=torch.long, device=device)
        self.key_slots = torch.full((max_batch * self.max_context,), self.spare_slot, dtype=torch.long, device=device)
        self.mask = torch.zeros(max_batch, 1, 1, self.max_context, dtype=torch.bool, device=device)
        self.mask[..., 0] = True  # padded rows attend to one key, so their softmax stays finite
        self.rows = torch.arange(max_batch, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def _layout(self, batch: int) -> StepLayout:
        # One group holding every row in order: no query gather or output scatter (see PagedKVCache.attend).
        group = AttentionGroup(None, self.key_slots[:batch * self.max_context], self.mask[:batch], batch)
        return StepLayout(self.slot_mapping[:batch], [group])

    def _forward(self, batch: int) -> torch.Tensor:
        self.cache.layout = self._layout(batch)
        logits, _ = self.model(self.ids[:, :batch], positions=self.positions[:, :batch], kv_cache=self.cache,
                               logits_at=self.rows[:batch])
        return logits

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every batch size, largest first, sharing one memory pool."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph: lazy inits must not happen during capture
                self._forward(self.batch_sizes[-1])
        torch.cuda.current_stream().wait_stream(stream)
        for batch in reversed(self.batch_sizes):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[batch] = self._forward(batch)
            pool = graph.pool()
            self.graphs[batch] = graph
        self.cache.layout = None

    def run(self, tokens: list[int], positions: list[int], block_tables: list[list[int]]) -> torch.Tensor:
        """One decode step for len(tokens) sequences -> logits (B, V), valid until the next run."""
        batch = len(tokens)
        padded = next(b for b in self.batch_sizes if b >= batch)
        device = self.ids.device
        self.ids[0, :batch].copy_(torch.tensor(tokens), non_blocking=True)
        self.positions[0, :batch].copy_(torch.tensor(positions), non_blocking=True)
        new_slots = decode_slots(block_tables, positions, self.block_size)
        self.slot_mapping[:batch].copy_(torch.tensor(new_slots), non_blocking=True)
        self.slot_mapping[batch:padded].fill_(self.spare_slot)
        self.key_slots[:batch * self.max_context].copy_(
            context_slots(block_tables, self.max_context, self.block_size, device))
        lengths = torch.tensor([p + 1 for p in positions], device=device)
        self.mask[:batch, 0, 0].copy_(torch.arange(self.max_context, device=device) < lengths.unsqueeze(1))
        self.mask[batch:padded, 0, 0].zero_()
        self.mask[batch:padded, 0, 0, 0] = True
        self.graphs[padded].replay()
        return self.logits[padded][:batch]
