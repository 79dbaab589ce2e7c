"""toolcall_accuracy (the bench's, GRPO's eval's and the demo's score) against an independent re-scoring: the same
prompts answered by the simple dense-cache sampler, each answer scored by the checker, aggregated by hand."""

import pytest

from lmstack.data.toolcalls import generate
from lmstack.infer.simple import generate as generate_ids
from lmstack.train.toolcall_rewards import sampled_rewards, toolcall_accuracy, toolcall_prompts, toolcall_reward


def test_toolcall_accuracy_matches_rescoring_each_prompt(chat_tokenizer, make_model):
    model = make_model(chat_tokenizer, seed=3, block_size=512).eval()
    max_new = 12
    prompts = toolcall_prompts(generate(6, seed=5, split="test"), chat_tokenizer, 512 - max_new)
    assert len(prompts) >= 8 and any("call" in p.target for p in prompts) and any("answer" in p.target for p in prompts)
    result = toolcall_accuracy(model, chat_tokenizer, prompts, max_new)

    scores = []
    for prompt in prompts:
        # stop ids are kept by the engine's completions; the checker scores text before the stop token either way
        completion = generate_ids(model, prompt.ids, max_new, temperature=0.0, stop_ids=chat_tokenizer.stop_ids)
        scores.append(toolcall_reward(chat_tokenizer, prompt.target, completion))
    assert result["rewards"] == pytest.approx([reward for reward, _ in scores])
    assert result["mean_reward"] == pytest.approx(sum(r for r, _ in scores) / len(scores))
    calls = [score for _, score in scores if score["expects_call"]]
    answers = [score for _, score in scores if not score["expects_call"]]
    assert (result["call_turns"], result["answer_turns"]) == (len(calls), len(answers))
    assert result["call_parsed"] == pytest.approx(sum(s["parsed"] for s in calls) / len(calls))
    assert result["answer_no_call"] == pytest.approx(sum(s["right_tool"] for s in answers) / len(answers))


def test_sampled_rewards_are_seeded_and_reduce_to_greedy_at_low_temperature(chat_tokenizer, make_model):
    model = make_model(chat_tokenizer, seed=3, block_size=512).eval()
    max_new = 12
    prompts = toolcall_prompts(generate(3, seed=6, split="test"), chat_tokenizer, 512 - max_new)
    greedy = toolcall_accuracy(model, chat_tokenizer, prompts, max_new)["rewards"]
    # near-zero temperature: every sample is the argmax, so each prompt's mean over samples is its greedy reward
    assert sampled_rewards(model, chat_tokenizer, prompts, 2, 1e-5, 0, max_new) == pytest.approx(greedy)
    hot = [sampled_rewards(model, chat_tokenizer, prompts, 3, 1.5, 7, max_new) for _ in range(2)]
    assert hot[0] == hot[1]  # the same seeds before and after a change: the bench's paired comparison
    assert all(0.0 <= r <= 1.0 for r in hot[0])
