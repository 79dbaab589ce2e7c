"""The paged KV cache: one preallocated pool of slots per layer, addressed through block tables.

Each step the engine flattens every scheduled token into one row (1, N) -- prefill chunks and decode
tokens together, no padding in the matmuls -- and hands the cache a `StepLayout`: where each new
token's k, v go (`slot_mapping`), and attention groups. Decode tokens form one batched group (one
query each, keys gathered from their block tables, a length mask); each prefill chunk is its own
group, so no query is padded to another sequence's length. When one group holds the whole step (every
decode step, or a lone prefill) its queries and outputs need no gather or scatter, and under torch.compile
it is one custom op, so a whole decode step compiles into one graph (see `whole_step_attention_op`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class AttentionGroup:
    """G sequences with Tq new tokens each, attending over L keys each."""
    query_rows: torch.Tensor | None  # (G * Tq,) rows of the flat step that are this group's queries; None = all, in order
    key_slots: torch.Tensor  # (G * L,) cache slots of the keys each sequence sees (padded with slot 0)
    mask: torch.Tensor | None  # (G, 1, Tq, L) bool, True = may attend; None = one sequence that sees all its keys
    # (Tq == 1, a decode) or a plain causal prefill from position 0 (Tq == L)

    def shape(self) -> tuple[int, int, int]:
        """(G, Tq, L) of a group with its query rows listed."""
        if self.mask is None:
            return 1, self.query_rows.size(0), self.key_slots.size(0)
        G, _, T, L = self.mask.shape
        return G, T, L


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

    @staticmethod
    def bytes_per_block(n_layer: int, block_size: int, n_kv_head: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layer * block_size * n_kv_head * head_dim * torch.finfo(dtype).bits // 8

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, H, N, D), k and v (1, K, N, D) for the N flat tokens of this step -> (1, H, N, D)."""
        layout = self.layout
        if len(layout.groups) == 1 and layout.groups[0].query_rows is None:
            # One group holding every row (all decodes, or one prefill): no query gather, no output scatter.
            # Under torch.compile it is one opaque op that writes the pool in place, so the whole decode step
            # compiles to one graph; traced, the pool write became a copy of the whole pool per step.
            group = layout.groups[0]
            attend_all = whole_step_attention_op if torch.compiler.is_compiling() else whole_step_attention
            return attend_all(q, k, v, self.k[layer_idx], self.v[layer_idx], layout.slot_mapping, group.key_slots,
                              group.mask)
        return self._attend_groups(layer_idx, q, k, v)

    @torch.compiler.disable
    def _attend_groups(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A step of several groups (prefill chunks beside decodes): gather each group's queries, scatter back."""
        layout = self.layout
        k_layer, v_layer = self.k[layer_idx], self.v[layer_idx]
        write_pool(k_layer, v_layer, layout.slot_mapping, k, v)
        queries_flat = q[0].transpose(0, 1)  # (N, H, D)
        out = torch.empty_like(queries_flat)
        for group in layout.groups:
            # index_select on flat indices: advanced indexing with a 2-D index is ~10x slower on CPU.
            G, T, L = group.shape()
            queries = queries_flat.index_select(0, group.query_rows).view(G, T, *queries_flat.shape[1:])
            y = group_attention(queries.transpose(1, 2), k_layer, v_layer, group.key_slots, group.mask)
            out.index_copy_(0, group.query_rows, y.transpose(1, 2).flatten(0, 1))
        return out.transpose(0, 1).unsqueeze(0)


def write_pool(k_layer: torch.Tensor, v_layer: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> None:
    """Store the step's k, v (1, K, N, D) at their slots of one layer's pool (slots, K, D)."""
    k_layer.index_copy_(0, slot_mapping, k[0].transpose(0, 1))
    v_layer.index_copy_(0, slot_mapping, v[0].transpose(0, 1))


def group_attention(queries: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor, key_slots: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """queries (G, H, T, D) over the G * L keys at `key_slots` -> (G, H, T, D). mask: see AttentionGroup."""
    G = queries.size(0)
    L = key_slots.size(0) // G
    keys = k_layer.index_select(0, key_slots).view(G, L, *k_layer.shape[1:])
    values = v_layer.index_select(0, key_slots).view(G, L, *v_layer.shape[1:])
    causal = mask is None and queries.size(2) > 1
    return F.scaled_dot_product_attention(queries, keys.transpose(1, 2), values.transpose(1, 2),
                                          attn_mask=mask, is_causal=causal, enable_gqa=True)


def whole_step_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_layer: torch.Tensor,
                         v_layer: torch.Tensor, slot_mapping: torch.Tensor, key_slots: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
    """Write the step's k, v, then attend all N rows as one group of G sequences with N / G queries each."""
    write_pool(k_layer, v_layer, slot_mapping, k, v)
    G = 1 if mask is None else mask.size(0)
    y = group_attention(q[0].unflatten(1, (G, q.size(2) // G)).transpose(0, 1), k_layer, v_layer, key_slots, mask)
    return y.transpose(0, 1).flatten(1, 2).unsqueeze(0).contiguous()


@torch.library.custom_op("lmstack::whole_step_attention", mutates_args=("k_layer", "v_layer"))
def whole_step_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_layer: torch.Tensor,
                            v_layer: torch.Tensor, slot_mapping: torch.Tensor, key_slots: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
    return whole_step_attention(q, k, v, k_layer, v_layer, slot_mapping, key_slots, mask)


@whole_step_attention_op.register_fake
def _(q, k, v, k_layer, v_layer, slot_mapping, key_slots, mask):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def slots_of(block_table: list[int], positions: range, block_size: int) -> list[int]:
    return [block_table[p // block_size] * block_size + p % block_size for p in positions]


def context_slots(block_tables: list[list[int]], length: int, block_size: int, device: torch.device) -> torch.Tensor:
    """(G * length,) cache slots of positions 0 .. length-1 of each sequence (block tables padded with block 0)."""
    width = -(-length // block_size)
    padded = torch.tensor([t[:width] + [0] * (width - len(t[:width])) for t in block_tables], device=device)
    slots = padded.unsqueeze(2) * block_size + torch.arange(block_size, device=device)
    return slots.flatten(1)[:, :length].flatten()


def build_layout(chunks: list[tuple[list[int], int, int]], block_size: int, device: torch.device) -> StepLayout:
    """chunks: (block_table, start, length) per scheduled sequence, in flat order; tokens start .. start+length-1
    are new. Decode chunks (length 1) share one group; every longer chunk gets its own."""
    slot_mapping: list[int] = []
    decode_rows: list[int] = []
    decode_tables: list[list[int]] = []
    decode_lengths: list[int] = []
    groups: list[AttentionGroup] = []
    row = 0
    for block_table, start, length in chunks:
        end = start + length
        slot_mapping += slots_of(block_table, range(start, end), block_size)
        if length == 1:
            decode_rows.append(row)
            decode_tables.append(block_table)
            decode_lengths.append(end)
        else:
            mask = None
            if start > 0:  # query i sits at position start + i and sees keys 0 .. start + i
                mask = torch.arange(end, device=device) <= torch.arange(start, end, device=device).unsqueeze(1)
                mask = mask.view(1, 1, length, end)
            groups.append(AttentionGroup(torch.arange(row, row + length, device=device),
                                         context_slots([block_table], end, block_size, device), mask))
        row += length
    if decode_rows:
        longest = max(decode_lengths)
        mask = None  # a single decode sees all its keys
        if len(decode_rows) > 1:
            lengths = torch.tensor(decode_lengths, device=device)
            mask = (torch.arange(longest, device=device) < lengths.unsqueeze(1)).view(len(decode_rows), 1, 1, longest)
        groups.append(AttentionGroup(torch.tensor(decode_rows, device=device),
                                     context_slots(decode_tables, longest, block_size, device), mask))
    if len(groups) == 1:
        groups[0].query_rows = None  # it holds every row of the step, in order
    return StepLayout(torch.tensor(slot_mapping, device=device), groups)
