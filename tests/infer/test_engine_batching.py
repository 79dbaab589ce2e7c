"""Batch invariance, sampling settings, n samples, stop strings, aborts, the memory budget, prefix caching."""

import dataclasses
import threading

import pytest
import torch
from infer_helpers import recompute_greedy, tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingError, SamplingParams


def mixed_requests() -> list[tuple[list[int], SamplingParams]]:
    requests = []
    for i in range(15):
        prompt = [(7 * i + j) % 300 + 1 for j in range(3 + 3 * i)]
        params = SamplingParams(max_tokens=8 + 2 * i, temperature=0.0 if i % 3 == 0 else 1.0, top_p=0.9, seed=i,
                                presence_penalty=0.5 if i % 4 == 0 else 0.0)
        requests.append((prompt, params))
    return requests


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=30, temperature=0),
                                    SamplingParams(max_tokens=30, temperature=1.0, top_k=50, seed=1234)])
def test_same_tokens_alone_and_inside_a_batch_of_16(params):
    model = tiny_model("llama")
    prompt = [11, 22, 33, 44, 55]
    config = EngineConfig(block_size=4, num_blocks=400, max_batched_tokens=64)
    alone = Engine(model, None, config).generate([prompt], params)[0].token_ids
    others = mixed_requests()
    batch = Engine(model, None, config).generate([p for p, _ in others[:7]] + [prompt] + [p for p, _ in others[7:]],
                                                 [sp for _, sp in others[:7]] + [params] + [sp for _, sp in others[7:]])
    assert batch[7].token_ids == alone
    if params.temperature == 0:
        assert alone == recompute_greedy(model, prompt, 30)


def test_top_k_1_equals_greedy_and_n_samples_differ():
    model = tiny_model("gpt2")
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=64))
    greedy = engine.generate([[3, 1, 4]], SamplingParams(max_tokens=20, temperature=0))[0]
    top1 = engine.generate([[3, 1, 4]], SamplingParams(max_tokens=20, temperature=1.5, top_k=1, seed=5))[0]
    assert top1.token_ids == greedy.token_ids
    # Temperature 5 flattens the sharpened tiny model enough that three samples differ.
    many = engine.generate([[3, 1, 4]], SamplingParams(max_tokens=20, temperature=5.0, n=3, seed=5))[0]
    assert [o.index for o in many.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in many.outputs}) == 3


def test_stop_string_spanning_tokens_stops_and_is_not_emitted(tokenizer):
    model = tiny_model("llama", vocab_size=tokenizer.vocab_size)
    engine = Engine(model, tokenizer, EngineConfig(block_size=8, num_blocks=64))
    # Bias the random model towards multi-letter tokens, so its text has token boundaries inside words.
    wordy = {t: 50.0 for t in range(tokenizer.vocab_size) if len(tokenizer.token_str(t).strip()) >= 3
             and tokenizer.token_str(t).strip().isalpha() and t not in tokenizer.special.values()}
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, logit_bias=wordy)
    ids = engine.generate(["Hello"], params)[0].token_ids
    pieces = [tokenizer.decode(ids[:k]) for k in range(len(ids) + 1)]
    k = 4  # the stop string: the last 2 characters of token k-1's text and the first 2 of token k's
    stop = pieces[k][-2:] + pieces[k + 1][len(pieces[k]):len(pieces[k]) + 2]
    where = pieces[k + 1].find(stop)
    streamed = []
    rid = engine.add_request("Hello", SamplingParams(max_tokens=30, temperature=0, ignore_eos=True,
                                                     logit_bias=wordy, stop=["zzzz", stop]))
    while engine.has_unfinished():
        streamed += [e for e in engine.step() if e.request_id == rid]
    assert "".join(e.text for e in streamed) == pieces[k + 1][:where]
    assert len(streamed) <= k + 1 and streamed[-1].finish_reason == "stop" and streamed[-1].finished
    assert engine.num_free_blocks == engine.num_total_blocks
    # A plain str is one stop string, as in vLLM (it used to stop at any of its characters).
    alone = engine.generate(["Hello"], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, logit_bias=wordy,
                                                      stop=stop))[0].outputs[0]
    assert alone.text == pieces[k + 1][:where] and alone.finish_reason == "stop"
    kept = engine.generate(["Hello"], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, logit_bias=wordy,
                                                     stop=stop, include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == pieces[k + 1][:where + len(stop)] and kept.token_ids == alone.token_ids


def test_request_larger_than_the_cache_is_refused_clearly():
    engine = Engine(tiny_model("gpt2"), None, EngineConfig(block_size=4, num_blocks=8))
    with pytest.raises(SamplingError, match="cache holds 32"):
        engine.add_request(list(range(1, 21)), SamplingParams(max_tokens=20))
    with pytest.raises(SamplingError, match="context of 320"):
        engine.add_request([1, 2], SamplingParams(max_tokens=400))
    with pytest.raises(SamplingError, match="top_p"):
        engine.add_request([1, 2], SamplingParams(top_p=0))
    with pytest.raises(SamplingError, match="seed must be an integer or None, got '1'"):
        engine.add_request([1, 2], SamplingParams(seed="1"))


def test_prompts_of_integer_ids_of_any_kind_run_and_other_values_are_refused():
    engine = Engine(tiny_model("gpt2"), None, EngineConfig(block_size=4, num_blocks=32))
    params = SamplingParams(max_tokens=5, temperature=0)
    reference = engine.generate([[5, 6, 7]], params)[0].token_ids
    for prompt in ([5, 6, 7], (5, 6, 7), torch.tensor([5, 6, 7]), [torch.tensor(5), 6, 7]):
        assert engine.generate(prompt, params)[0].token_ids == reference
    for prompt in ([1.7, 2.2], [[1.5]], 5, [None]):  # floats used to be cut to ints, or crash with a TypeError
        with pytest.raises(SamplingError, match="a prompt is a text or a list of integer token ids"):
            engine.generate(prompt, params)
    assert engine.num_free_blocks == engine.num_total_blocks


def test_max_tokens_none_generates_to_the_end_of_the_context():
    model = tiny_model("llama", block_size=40)
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64, dtype="float32"))
    out = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 40 - 3 and out.finish_reason == "length"  # hand-computed: context - prompt
    same = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=37, temperature=0, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == same.token_ids
    with pytest.raises(SamplingError, match="fills the model's context of 40 tokens"):
        engine.add_request(list(range(1, 41)), SamplingParams(max_tokens=None))


def test_min_tokens_defers_stop_tokens_and_stop_strings(tokenizer):
    model = tiny_model("llama", vocab_size=tokenizer.vocab_size)
    engine = Engine(model, tokenizer, EngineConfig(block_size=8, num_blocks=64, dtype="float32"))
    free = engine.generate(["Hello"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].outputs[0]
    stop_id = free.token_ids[1]  # greedy would stop on its second token
    stopped = engine.generate(["Hello"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                        stop_token_ids=[stop_id]))[0].outputs[0]
    assert stopped.token_ids == free.token_ids[:2] and stopped.finish_reason == "stop"
    # Reference: the same greedy run with the stop id banned for its first 5 tokens.
    banned = engine.generate(["Hello"], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True,
                                                       logit_bias={stop_id: float("-inf")}))[0].outputs[0]
    late = engine.generate(["Hello"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                     stop_token_ids=[stop_id], min_tokens=5))[0].outputs[0]
    assert late.token_ids[:5] == banned.token_ids and stop_id not in late.token_ids[:5]
    assert len(late.token_ids) >= 5 and (late.finish_reason == "length" or late.token_ids[-1] == stop_id)
    # A stop string met in the first min_tokens tokens is emitted as text, not a stop. Word-like tokens (as in the
    # stop-string test above) give text that is whole characters from the first token on.
    wordy = {t: 50.0 for t in range(tokenizer.vocab_size) if len(tokenizer.token_str(t).strip()) >= 3
             and tokenizer.token_str(t).strip().isalpha() and t not in tokenizer.special.values()}
    words = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logit_bias=wordy)
    full = engine.generate(["Hello"], words)[0].outputs[0]
    first_word = tokenizer.decode(full.token_ids[:1])
    early = engine.generate(["Hello"], dataclasses.replace(words, stop=first_word))[0].outputs[0]
    late = engine.generate(["Hello"], dataclasses.replace(words, stop=first_word, min_tokens=4))[0].outputs[0]
    assert early.text == "" and early.finish_reason == "stop"
    assert late.text.startswith(first_word) and late.token_ids[:4] == full.token_ids[:4]
    with pytest.raises(SamplingError, match="min_tokens must be in"):
        engine.add_request("Hello", SamplingParams(max_tokens=3, min_tokens=4))


@pytest.mark.parametrize("setting", ["max_num_seqs", "max_batched_tokens", "block_size"])
def test_engine_settings_that_would_schedule_nothing_are_refused(setting):
    # Zero used to make generate() step forever without an error.
    with pytest.raises(SamplingError, match=f"engine {setting} must be at least 1, got 0"):
        Engine(tiny_model("gpt2"), None, EngineConfig(num_blocks=8, **{setting: 0}))


def test_a_kv_budget_below_one_block_names_the_smallest_that_works():
    model = tiny_model("llama")  # float32, 2 layers, 2 KV heads of 16 dims
    smallest = 2 * 2 * 16 * 2 * 16 * 4 / 2**20  # k and v, layers, tokens a block, KV heads, dims, bytes: 8 KiB
    with pytest.raises(SamplingError) as refused:
        Engine(model, None, EngineConfig(kv_memory_mb=0.005))
    assert str(refused.value) == ("engine kv_memory_mb=0.005 holds no KV block of this model: one block (16 tokens, "
                                  f"float32) takes {smallest} MiB; set kv_memory_mb to at least {smallest}, or set "
                                  "num_blocks")
    assert Engine(model, None, EngineConfig(kv_memory_mb=smallest)).num_total_blocks == 1


def test_abort_frees_blocks_from_another_thread():
    engine = Engine(tiny_model("llama"), None, EngineConfig(block_size=4, num_blocks=64))
    initial = engine.num_free_blocks
    rid = engine.add_request(list(range(1, 30)), SamplingParams(max_tokens=100))
    engine.step()
    engine.step()
    assert engine.num_free_blocks < initial and engine.num_running == 1
    caller = threading.Thread(target=engine.abort, args=(rid,))
    caller.start()
    caller.join()
    events = engine.step()
    assert [(e.request_id, e.finish_reason) for e in events] == [(rid, "abort")]
    assert engine.num_free_blocks == initial and not engine.has_unfinished()


def test_small_pool_queues_and_preempts_but_gives_the_same_tokens():
    model = tiny_model("gpt2")
    prompts = [[i + 1, i + 2, i + 3] for i in range(6)]
    params = SamplingParams(max_tokens=45, temperature=0.7, seed=3)
    ample = Engine(model, None, EngineConfig(block_size=4, num_blocks=200)).generate(prompts, params)
    tight_engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=24))
    tight = tight_engine.generate(prompts, params)
    assert tight_engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in tight] == [o.token_ids for o in ample]


def test_shared_system_prompt_is_computed_once():
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64))
    system = list(range(1, 33))  # 8 full blocks
    first = engine.generate([system + [40, 41]], SamplingParams(max_tokens=5, temperature=0))[0]
    rid = engine.add_request(system + [50, 51], SamplingParams(max_tokens=5, temperature=0))
    engine._apply_inbox()
    chunks = engine.scheduler.schedule()
    assert chunks[0].start == 32 and chunks[0].length == 2  # only the new tokens are computed
    engine.scheduler.remove(chunks[0].seq)
    engine.requests.pop(rid)
    second = engine.generate([system + [50, 51]], SamplingParams(max_tokens=5, temperature=0))[0]
    assert first.token_ids == recompute_greedy(model, system + [40, 41], 5)
    assert second.token_ids == recompute_greedy(model, system + [50, 51], 5)


def test_only_the_chunk_that_reaches_the_last_token_samples():
    # A budget of 5 tokens splits a 12-token prompt into chunks of 5, 5 and 2; the scheduler marks which chunk's
    # logits give the next token: the prompt's last chunk, then every decode step's.
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64, max_batched_tokens=5))
    scheduled, schedule = [], engine.scheduler.schedule

    def recording_schedule():
        chunks = schedule()
        scheduled.extend((c.start, c.length, c.samples) for c in chunks)
        return chunks

    engine.scheduler.schedule = recording_schedule
    prompt = list(range(1, 13))
    out = engine.generate([prompt], SamplingParams(max_tokens=3, temperature=0))[0]
    assert scheduled == [(0, 5, False), (5, 5, False), (10, 2, True), (12, 1, True), (13, 1, True)]
    assert out.token_ids == recompute_greedy(model, prompt, 3)


def test_penalties_and_logit_bias_change_the_choice_as_documented():
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=64))
    prompt = [5, 6, 7]
    greedy = engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0].token_ids[0]
    biased = engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0, logit_bias={17: 100.0}))[0]
    assert biased.token_ids == [17]
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt]))
    row = logits[0, -1].clone()
    row[prompt] = torch.where(row[prompt] > 0, row[prompt] / 1e6, row[prompt] * 1e6)
    repetition = engine.generate([prompt + [greedy]], SamplingParams(max_tokens=1, temperature=0,
                                                                     repetition_penalty=1e6))[0]
    assert repetition.token_ids[0] not in prompt + [greedy]


def test_a_stop_token_ends_the_sequence_and_is_marked_on_its_event():
    model = tiny_model("gpt2")
    free = recompute_greedy(model, [1, 2, 3], 12)
    stop = free[5]  # the greedy continuation's sixth token, given as a stop id
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=64))
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop]))
    events = []
    while engine.has_unfinished():
        events += [e for e in engine.step() if e.request_id == rid]
    first_stop = free.index(stop)
    assert [e.token_id for e in events] == free[:first_stop + 1]  # generated up to and including the stop id
    assert [e.stop_token for e in events] == [False] * first_stop + [True]
    assert events[-1].finished and events[-1].finish_reason == "stop"
