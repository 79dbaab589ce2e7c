"""Prefill chunks of one shape (start, length) share an attention group: the layout, and the engine against full
recomputation when prompts of equal length prefill together, from position 0 and after a cached prefix."""

import torch
from infer_helpers import recompute_greedy_batch, tiny_model

from lmstack.infer import engine as engine_module
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.infer.paged_cache import build_layout
from lmstack.infer.sequence import Sequence


def test_tokens_slice_equals_token_ids_slice():
    seq = Sequence("r", 0, [1, 2, 3, 4], SamplingParams(), None, None, frozenset(), output_ids=[5, 6, 7])
    for start in range(8):
        for end in range(start, 8):
            assert seq.tokens(start, end) == seq.token_ids[start:end], (start, end)


def test_layout_groups_prefill_chunks_by_start_and_length():
    tables = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    # flat rows: a 0..3 | decode 4 | b 5..8 | c 9..10 (after 2 cached) | d 11..12 (after 2 cached)
    chunks = [(tables[0], 0, 4), (tables[1], 5, 1), (tables[2], 0, 4), (tables[3], 2, 2), (tables[4], 2, 2)]
    layout = build_layout(chunks, block_size=4, device=torch.device("cpu"))
    from_zero, after_prefix, decode = layout.groups
    assert (from_zero.num_seqs, from_zero.mask) == (2, None)  # causal from position 0
    assert from_zero.query_rows.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert from_zero.key_slots.tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    assert after_prefix.num_seqs == 2 and after_prefix.query_rows.tolist() == [9, 10, 11, 12]
    assert after_prefix.key_slots.tolist() == [24, 25, 26, 27, 32, 33, 34, 35]
    # query i at position 2 + i sees keys 0 .. 2 + i, the same for both sequences
    assert after_prefix.mask.tolist() == [[[[True, True, True, False], [True, True, True, True]]]]
    assert decode.num_seqs == 1 and decode.query_rows.tolist() == [4]
    one_shape = build_layout([(tables[0], 0, 4), (tables[2], 0, 4)], block_size=4, device=torch.device("cpu"))
    assert len(one_shape.groups) == 1 and one_shape.groups[0].query_rows is None  # the whole step: no gather


def test_equal_prompts_prefilled_together_equal_full_recompute(arch, monkeypatch):
    layouts = []
    monkeypatch.setattr(engine_module, "build_layout", lambda *args: layouts.append(build_layout(*args)) or layouts[-1])
    model = tiny_model(arch)
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=128))
    params = SamplingParams(max_tokens=12, temperature=0)
    fresh = [[i + 1, i + 7, 3 * i + 2, 40 + i, 9, i + 20, 11] for i in range(5)]  # 7 tokens each, from position 0
    assert [o.token_ids for o in engine.generate(fresh, params)] == recompute_greedy_batch(model, fresh, 12)
    prefix = list(range(50, 58))  # two full blocks, cached by the first request
    engine.generate([prefix + [1, 2, 3]], params)
    # Equal suffixes after the cached prefix, one prompt of another length, one from position 0: three groups.
    after_prefix = [prefix + [i + 60, i + 61, i + 62] for i in range(4)] + [prefix + [5], [70, 71, 72]]
    layouts.clear()
    outputs = engine.generate(after_prefix, params)
    assert [o.token_ids for o in outputs] == recompute_greedy_batch(model, after_prefix, 12)
    shapes = [(g.num_seqs, None if g.mask is None else tuple(g.mask.shape)) for g in layouts[0].groups]
    assert shapes == [(4, (1, 1, 3, 11)), (1, None), (1, None)]  # grouped after the cache; fresh; the 1-token one
    assert engine.num_free_blocks == engine.num_total_blocks
