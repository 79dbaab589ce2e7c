"""The engine's Python API as a vLLM user calls it: batches of arrays, params checked by name, online requests
mixed with `generate`, and `generate` from several threads."""

import threading

import numpy as np
import pytest
import torch
from faults import MASK_MISMATCH, BrokenConstraint
from infer_helpers import recompute_greedy, tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingError, SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0)


def tiny_engine() -> tuple[torch.nn.Module, Engine]:
    model = tiny_model("llama")
    return model, Engine(model, None, EngineConfig(block_size=4, num_blocks=64, dtype="float32"))


@pytest.mark.parametrize("as_prompt", [np.array, torch.tensor])
def test_a_list_of_arrays_or_tensors_is_a_batch_of_prompts(as_prompt):
    model, engine = tiny_engine()
    prompts = [[1, 2, 3], [5, 6]]
    outputs = engine.generate([as_prompt(p) for p in prompts], GREEDY)
    assert [o.token_ids for o in outputs] == [recompute_greedy(model, p, 6) for p in prompts]


@pytest.mark.parametrize("params", [{"max_tokens": 3}, "greedy", 0.5])
def test_params_that_are_no_sampling_params_are_refused_by_name(params):
    _, engine = tiny_engine()
    with pytest.raises(SamplingError, match="^params must be a SamplingParams") as refused:
        engine.generate([1, 2, 3], params)
    assert refused.value.param == "params" and not engine.has_unfinished()


def test_a_tuple_of_params_is_one_per_prompt():
    model, engine = tiny_engine()
    short, long = SamplingParams(max_tokens=2, temperature=0), GREEDY
    outputs = engine.generate([[1, 2, 3], [5, 6]], (short, long))
    assert [o.token_ids for o in outputs] == [recompute_greedy(model, [1, 2, 3], 2), recompute_greedy(model, [5, 6], 6)]


def test_generate_keeps_the_events_of_online_requests_for_the_next_step():
    model, engine = tiny_engine()
    online = engine.add_request([7, 8, 9], SamplingParams(max_tokens=10, temperature=0))
    engine.generate([1, 2, 3], GREEDY)  # steps the online request too
    events = []
    while engine.has_unfinished():
        events += engine.step()
    assert [e.token_id for e in events if e.request_id == online] == recompute_greedy(model, [7, 8, 9], 10)
    assert events[-1].finished


def test_events_kept_from_generate_survive_a_step_that_fails():
    """A failed step dropped the events generate had kept for the next step, a finished event among them: the
    online request's reader would wait for it for ever."""
    model, engine = tiny_engine()
    online = engine.add_request([7, 8, 9], SamplingParams(max_tokens=3, temperature=0))
    engine.generate([1, 2, 3], GREEDY)  # runs the online request to its end: its events are kept
    engine.add_request([4, 5], SamplingParams(max_tokens=2, constraint=BrokenConstraint))
    with pytest.raises(RuntimeError, match=MASK_MISMATCH):
        engine.step()
    events = engine.step()
    assert [e.token_id for e in events if e.request_id == online] == recompute_greedy(model, [7, 8, 9], 3)
    assert events[-1].request_id == online and events[-1].finished


def test_generate_from_several_threads_at_once():
    model, engine = tiny_engine()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    expected = [recompute_greedy(model, p, 6) for p in prompts]
    results, errors = [], []

    def client():
        try:
            for _ in range(3):
                results.append([o.token_ids for o in engine.generate(prompts, GREEDY)])
        except Exception as err:  # before steps took turns: an IndexError deep in the KV cache
            errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [expected] * 9
    assert not engine.has_unfinished() and engine.num_free_blocks == engine.num_total_blocks
