"""The paged KV cache: one preallocated pool of slots per layer, addressed through block tables.

Each step the engine flattens every scheduled token into one row (1, N) -- prefill chunks and decode
tokens together, no padding in the matmuls -- and hands the cache a `StepLayout`: where each new
token's k, v go (`slot_mapping`), and attention groups. Decode tokens form one batched group (one
query each, keys gathered from their block tables, a length mask); prefill chunks form a group per
(start, length), so no query is padded to another sequence's length, and a batch of equal prompts is one
attention call per layer. When one group holds the whole step (every decode step, or prefills of one
shape) its queries and outputs need no gather or scatter, and a lone decode needs no mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class AttentionGroup:
    """G sequences with Tq new tokens each, attending over L keys each."""
    query_rows: torch.Tensor | None  # (G * Tq,) the flat step's rows that are this group's queries; None = all
    key_slots: torch.Tensor  # (G * L,) cache slots of the keys each sequence sees (padded with slot 0)
    # bool, True = may attend: (G, 1, 1, L) for a batch of decodes (each sees its own length), (1, 1, Tq, L) for prefill
    # chunks that all start at L - Tq; None = one decode that sees all its keys, or causal prefills from 0 (Tq == L)
    mask: torch.Tensor | None
    num_seqs: int  # G


@dataclass(slots=True)
class StepLayout:
    slot_mapping: torch.Tensor  # (N,) cache slot of each new token
    groups: list[AttentionGroup]


class PagedKVCache:
    def __init__(self, n_layer: int, num_blocks: int, block_size: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layer, num_blocks * block_size, n_kv_head, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.layout: StepLayout | None = None
        self.workspace = DecodeWorkspace() if self.k.device.type == "cpu" else None

    @staticmethod
    def bytes_per_block(n_layer: int, block_size: int, n_kv_head: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layer * block_size * n_kv_head * head_dim * torch.finfo(dtype).bits // 8

    # Kept out of torch.compile: a compiled in-place write into the pool copied the whole pool each step
    # (measured: 440 ms/step for a 270 MB pool). Compiled decode steps use infer/compiled_decode.py instead,
    # which only reads the pool and leaves the writes to the engine.
    @torch.compiler.disable
    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, H, N, D), k and v (1, K, N, D) for the N flat tokens of this step -> (1, H, N, D)."""
        layout = self.layout
        k_layer, v_layer = self.k[layer_idx], self.v[layer_idx]
        k_layer.index_copy_(0, layout.slot_mapping, k[0].transpose(0, 1))
        v_layer.index_copy_(0, layout.slot_mapping, v[0].transpose(0, 1))
        if len(layout.groups) == 1 and layout.groups[0].query_rows is None:
            # One group holding every row (all decodes, or prefill chunks of one shape): no query gather or scatter.
            group = layout.groups[0]
            queries = q[0].unflatten(1, (group.num_seqs, -1)).transpose(0, 1)  # (G, H, T, D)
            y = group_attention(queries, k_layer, v_layer, group.key_slots, group.mask, self.workspace)
            return y.transpose(0, 1).flatten(1, 2).unsqueeze(0)
        queries_flat = q[0].transpose(0, 1)  # (N, H, D)
        out = torch.empty_like(queries_flat)
        for group in layout.groups:
            # index_select on flat indices: advanced indexing with a 2-D index is ~10x slower on CPU.
            queries = queries_flat.index_select(0, group.query_rows).view(group.num_seqs, -1, *queries_flat.shape[1:])
            y = group_attention(queries.transpose(1, 2), k_layer, v_layer, group.key_slots, group.mask,
                                self.workspace)
            out.index_copy_(0, group.query_rows, y.transpose(1, 2).flatten(0, 1))
        return out.transpose(0, 1).unsqueeze(0)


def group_attention(queries: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor, key_slots: torch.Tensor,
                    mask: torch.Tensor | None, workspace: DecodeWorkspace | None) -> torch.Tensor:
    """queries (G, H, T, D) over the G * L keys at `key_slots` -> (G, H, T, D). mask: see AttentionGroup.
    Decode groups (T == 1) take `decode_attention` when there is a workspace (a CPU cache has one)."""
    if workspace is not None and queries.size(2) == 1:
        return decode_attention(queries, k_layer, v_layer, key_slots, mask, workspace)
    G = queries.size(0)
    L = key_slots.size(0) // G
    keys = k_layer.index_select(0, key_slots).view(G, L, *k_layer.shape[1:])
    values = v_layer.index_select(0, key_slots).view(G, L, *v_layer.shape[1:])
    causal = mask is None and queries.size(2) > 1
    return F.scaled_dot_product_attention(queries, keys.transpose(1, 2), values.transpose(1, 2),
                                          attn_mask=mask, is_causal=causal, enable_gqa=True)


# Decode attention's gathered keys and their fp32 copy stay under this: larger batches go in chunks of sequences,
# so what one matmul reads is still in cache (32 sequences x 300 keys x 12 heads: 9.2 ms in one piece, 4.3 in
# chunks of 8 MB; 16 MB and up lose it again).
WORKSPACE_BYTES = 8 << 20


class DecodeWorkspace:
    """Buffers that CPU decode attention reuses from step to step, grown by doubling.

    Fresh fp32 copies of a batch's keys and values are megabytes each step; glibc hands blocks that large back
    to the OS when freed, so every step page-faulted them in again, which cost more than SDPA (32 sequences x
    80 keys x 12 heads: 2.7 ms vs 2.6). Reused, the same arithmetic is 1.2-5.7x faster (decode_attention).
    """

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}
        self._shapes: tuple | None = None
        self._views: tuple[torch.Tensor, ...] = ()

    def views(self, G: int, K: int, rows: int, L: int, D: int, kv_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(gathered (G * L, K, D) in kv_dtype; keys_or_values (G, K, L, D), scores, probs (G, K, rows, L), out
        (G, K, rows, D) in fp32). Every layer of a step asks for the same shapes: those get the same views back,
        no lookups (a lone sequence's decode is short enough for them to count)."""
        shapes = (G, K, rows, L, D, kv_dtype)
        if shapes != self._shapes:
            f32 = torch.float32
            self._views = (self._buffer("gathered", (G * L, K, D), kv_dtype),
                           self._buffer("keys_or_values", (G, K, L, D), f32),
                           self._buffer("scores", (G, K, rows, L), f32), self._buffer("probs", (G, K, rows, L), f32),
                           self._buffer("out", (G, K, rows, D), f32))
            self._shapes = shapes
        return self._views

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size:  # a name keeps its dtype: the cache's, or fp32
            capacity = size if buffer is None else max(size, 2 * buffer.numel())
            buffer = self.buffers[name] = torch.empty(capacity, dtype=dtype)
        return buffer[:size].view(shape)


def decode_attention(queries: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor, key_slots: torch.Tensor,
                     mask: torch.Tensor | None, workspace: DecodeWorkspace) -> torch.Tensor:
    """G sequences' decode step on the CPU as two fp32 matmuls and a softmax in reused buffers: queries
    (G, H, 1, D) over the G * L keys at `key_slots` -> (G, H, 1, D); mask (G, 1, 1, L) or None (all keys).

    On CPU, SDPA's flash kernel is built for many queries; for one per sequence it was 1.2-5.7x slower than this
    (1 thread, bf16, microseconds, SDPA / this: 1 sequence of 4 heads x 80 keys 37 / 31, 1 of 12 heads x 500 keys
    676 / 178; 32 sequences of 4 heads x 80 keys 907 / 304, of 12 x 80 2,965 / 1,067, of 12 x 300 24,775 / 4,318).
    fp32 throughout keeps it as exact as SDPA's fp32 accumulation. Sequences go in chunks whose gathered keys
    and fp32 copy fit in WORKSPACE_BYTES (the buffers, grown by doubling, may hold up to twice that).
    """
    G = queries.size(0)
    L = key_slots.size(0) // G
    bytes_per_sequence = L * k_layer[0].numel() * (4 + k_layer.element_size())  # gathered, and its fp32 copy
    chunk = max(1, WORKSPACE_BYTES // bytes_per_sequence)
    if chunk >= G:  # a copy: the fp32 result is in the buffer the next layer reuses
        return _decode_chunk(queries, k_layer, v_layer, key_slots, mask, workspace).to(queries.dtype, copy=True)
    out = torch.empty_like(queries)
    for start in range(0, G, chunk):
        end = min(G, start + chunk)
        out[start:end] = _decode_chunk(queries[start:end], k_layer, v_layer, key_slots[start * L:end * L],
                                       None if mask is None else mask[start:end], workspace)
    return out


def _decode_chunk(queries: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor, key_slots: torch.Tensor,
                  mask: torch.Tensor | None, workspace: DecodeWorkspace) -> torch.Tensor:
    """The attention of G sequences -> (G, H, 1, D) in fp32, a view of the workspace's reused output buffer."""
    G, H, _, D = queries.shape
    L = key_slots.size(0) // G
    K = k_layer.size(1)
    # Grouped-query heads: the H // K query heads of one kv head are one matmul's rows.
    q = queries.float().reshape(G, K, H // K, D) * D ** -0.5
    gathered, keys_or_values, scores, probs, y = workspace.views(G, K, H // K, L, D, k_layer.dtype)
    # Keys, then values, through one buffer: each is read by its matmul right after it is written, in cache
    # (32 sequences x 80 keys x 12 heads: 1.5 ms with a buffer each, 1.0 with one).
    torch.index_select(k_layer, 0, key_slots, out=gathered)
    keys_or_values.copy_(gathered.view(G, L, K, D).transpose(1, 2))
    torch.matmul(q, keys_or_values.transpose(2, 3), out=scores)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    torch.softmax(scores, -1, out=probs)
    torch.index_select(v_layer, 0, key_slots, out=gathered)
    keys_or_values.copy_(gathered.view(G, L, K, D).transpose(1, 2))
    torch.matmul(probs, keys_or_values, out=y)
    return y.view(G, H, 1, D)


def slot_of(block_table: list[int], position: int, block_size: int) -> int:
    return block_table[position // block_size] * block_size + position % block_size


def decode_slots(block_tables: list[list[int]], positions: list[int], block_size: int) -> list[int]:
    """The slot of each decoding sequence's new token: sequence b's at positions[b]."""
    return [slot_of(t, p, block_size) for t, p in zip(block_tables, positions)]


def slots_of(block_table: list[int], positions: range, block_size: int) -> list[int]:
    return [slot_of(block_table, p, block_size) for p in positions]


def padded_block_tables(block_tables: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    """(G, width): the first `width` blocks of each table, padded with block 0 (whose slots the caller masks). Built
    from one flat list: torch.tensor on nested lists took 21 us for 32 tables, 14 flat (every decode step pays it)."""
    flat: list[int] = []
    for table in block_tables:
        row = table[:width]
        flat += row
        if len(row) < width:
            flat += [0] * (width - len(row))
    return torch.tensor(flat, dtype=torch.long, device=device).view(len(block_tables), width)


def context_slots(block_tables: list[list[int]], length: int, block_size: int, device: torch.device) -> torch.Tensor:
    """(G * length,) cache slots of positions 0 .. length-1 of each sequence (block tables padded with block 0)."""
    padded = padded_block_tables(block_tables, -(-length // block_size), device)
    return table_slots(padded, length, block_size).flatten()


def table_slots(tables: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """(G, length) cache slots of positions 0 .. length-1 of each sequence, from its row of `tables` (G, W), at least
    length / block_size blocks wide."""
    # Indexed by position, not sliced from all the blocks' slots: in a compiled decode step `length` is a symbol,
    # and the slice made dynamo guard on it, so the next step's length compiled again.
    positions = torch.arange(length, device=tables.device)
    return tables[:, positions // block_size] * block_size + positions % block_size


def build_layout(chunks: list[tuple[list[int], int, int]], block_size: int, device: torch.device) -> StepLayout:
    """chunks: (block_table, start, length) per scheduled sequence, in flat order; tokens start .. start+length-1
    are new. Decode chunks (length 1) share one group; longer chunks share one per (start, length): 32 prompts
    of 16 tokens (depth-4 llama, bf16, 2 threads) took 11.3 ms to prefill with a group each, 8.0 ms grouped."""
    slot_mapping: list[int] = []
    decode_rows: list[int] = []
    decode_tables: list[list[int]] = []
    decode_lengths: list[int] = []
    prefills: dict[tuple[int, int], tuple[list[int], list[list[int]]]] = {}  # (start, length) -> rows, tables
    row = 0
    for block_table, start, length in chunks:
        end = start + length
        slot_mapping += slots_of(block_table, range(start, end), block_size)
        if length == 1:
            decode_rows.append(row)
            decode_tables.append(block_table)
            decode_lengths.append(end)
        else:
            rows, tables = prefills.setdefault((start, length), ([], []))
            rows += range(row, row + length)
            tables.append(block_table)
        row += length
    # One group holding every row of the step, in order (all decodes, or chunks of one shape), needs no query rows.
    single_group = len(prefills) + bool(decode_rows) == 1
    groups: list[AttentionGroup] = []
    for (start, length), (rows, tables) in prefills.items():
        end = start + length
        mask = None
        if start > 0:  # query i sits at position start + i and sees keys 0 .. start + i
            mask = torch.arange(end, device=device) <= torch.arange(start, end, device=device).unsqueeze(1)
            mask = mask.view(1, 1, length, end)
        groups.append(AttentionGroup(None if single_group else torch.tensor(rows, device=device),
                                     context_slots(tables, end, block_size, device), mask, len(tables)))
    if decode_rows:
        longest = max(decode_lengths)
        mask = None  # a single decode sees all its keys
        if len(decode_rows) > 1:
            lengths = torch.tensor(decode_lengths, device=device)
            mask = (torch.arange(longest, device=device) < lengths.unsqueeze(1)).view(len(decode_rows), 1, 1, longest)
        groups.append(AttentionGroup(None if single_group else torch.tensor(decode_rows, device=device),
                                     context_slots(decode_tables, longest, block_size, device), mask,
                                     len(decode_rows)))
    return StepLayout(torch.tensor(slot_mapping, device=device), groups)
