"""CPU decode attention over the paged pool, in reused buffers: against float64 SDPA, chunked, and not aliased."""

import pytest
import torch
import torch.nn.functional as F

from lmstack.infer import paged_cache
from lmstack.infer.paged_cache import DecodeWorkspace, decode_attention

H, D, POOL = 4, 16, 256


def batch(kv_heads: int, lengths: list[int], dtype=torch.float32, seed: int = 0):
    """A pool, each sequence's keys at scattered slots (padded to the longest), its mask, and its queries as the
    cache hands them over (a transposed, non-contiguous view)."""
    gen = torch.Generator().manual_seed(seed)
    k_pool, v_pool = (torch.randn(POOL, kv_heads, D, generator=gen).to(dtype) for _ in range(2))
    longest = max(lengths)
    slots = torch.stack([torch.randperm(POOL, generator=gen)[:longest] for _ in lengths])
    mask = (torch.arange(longest) < torch.tensor(lengths).unsqueeze(1)).view(len(lengths), 1, 1, longest)
    queries = torch.randn(H, len(lengths), D, generator=gen).to(dtype).unsqueeze(2).transpose(0, 1)  # (G, H, 1, D)
    return queries, k_pool, v_pool, slots.flatten(), mask


def float64_sdpa(queries, k_pool, v_pool, slots, mask):
    G, L = mask.size(0), mask.size(-1)
    keys, values = (pool.double()[slots].view(G, L, *pool.shape[1:]).transpose(1, 2) for pool in (k_pool, v_pool))
    return F.scaled_dot_product_attention(queries.double(), keys, values, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("lengths", [[37], [5, 37, 1, 20]])
def test_equals_float64_sdpa_with_grouped_heads_and_masks(kv_heads, lengths):
    queries, k_pool, v_pool, slots, mask = batch(kv_heads, lengths)
    want = float64_sdpa(queries, k_pool, v_pool, slots, mask)
    one_sequence_mask = None if len(lengths) == 1 else mask  # a lone decode sees all its keys: no mask
    got = decode_attention(queries, k_pool, v_pool, slots, one_sequence_mask, DecodeWorkspace())
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    bf16 = decode_attention(*batch(kv_heads, lengths, torch.bfloat16)[:4], one_sequence_mask, DecodeWorkspace())
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.double(), want, atol=2e-2, rtol=2e-2)  # bf16 inputs, fp32 inside


def test_chunks_of_sequences_under_the_workspace_cap_give_the_same_result(monkeypatch):
    queries, k_pool, v_pool, slots, mask = batch(2, [9, 30, 17, 30, 2])
    whole = decode_attention(queries, k_pool, v_pool, slots, mask, DecodeWorkspace())
    bytes_per_sequence = 30 * 2 * D * (4 + 4)  # gathered fp32 keys and their fp32 copy
    monkeypatch.setattr(paged_cache, "WORKSPACE_BYTES", 2 * bytes_per_sequence)  # chunks of 2, 2 and 1 sequences
    workspace = DecodeWorkspace()
    chunked = decode_attention(queries, k_pool, v_pool, slots, mask, workspace)
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)
    assert workspace.buffers["keys_or_values"].numel() * 4 <= bytes_per_sequence * 2


def test_results_do_not_alias_the_reused_buffers_and_buffers_grow_by_doubling():
    workspace = DecodeWorkspace()
    queries, k_pool, v_pool, slots, mask = batch(4, [10, 12])
    first = decode_attention(queries, k_pool, v_pool, slots, mask, workspace)
    kept = first.clone()
    keys_buffer = workspace.buffers["keys_or_values"]
    other = batch(4, [11, 13], seed=1)  # one key longer, as the next step is
    decode_attention(*other[:4], other[4], workspace)
    torch.testing.assert_close(first, kept, atol=0, rtol=0)  # fp32: a result that aliased "out" would have changed
    # grown once, with room for later steps
    assert workspace.buffers["keys_or_values"].numel() == 2 * keys_buffer.numel()
    again = batch(4, [12, 14], seed=2)
    decode_attention(*again[:4], again[4], workspace)
    assert workspace.buffers["keys_or_values"].numel() == 2 * keys_buffer.numel()
