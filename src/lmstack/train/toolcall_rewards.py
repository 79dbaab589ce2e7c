"""The synthetic tool-use task as prompts and rewards for GRPO, evals and the benchmark.

Prompts are the decision points of `lmstack.data.toolcalls` samples (every assistant turn, with the
conversation before it); the reward is that module's checker applied to the generated turn. Sampling
and greedy scoring go through the inference engine, batched over all prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmstack.data.toolcalls import decision_points, score_turn, turn_reward
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.model.gpt import GPT
from lmstack.tokenizer import Tokenizer
from lmstack.train.chat_data import ChatDataError, LoadReport, conversation_problem, read_jsonl


@dataclass
class ToolcallPrompt:
    ids: list[int]          # the conversation so far, rendered with the generation prompt
    target: dict[str, Any]  # what the next assistant turn should do (see toolcalls.decision_points)


def toolcall_prompts(samples: list[dict[str, Any]], tokenizer: Tokenizer, max_prompt_tokens: int) -> list[ToolcallPrompt]:
    """Every decision point of the synthetic samples that leaves room to answer within the context."""
    prompts = []
    for sample in samples:
        for messages, target in decision_points(sample):
            ids = tokenizer.render(messages, sample["tools"], add_generation_prompt=True).ids
            if len(ids) <= max_prompt_tokens:
                prompts.append(ToolcallPrompt(ids, target))
    return prompts


def toolcall_reward(tokenizer: Tokenizer, target: dict[str, Any], completion: list[int]) -> tuple[float, dict[str, bool]]:
    """The checker's reward for generated ids (the stop token included or not) and the score behind it."""
    content, calls = tokenizer.parse_assistant(tokenizer.decode(completion))
    score = score_turn(content, calls, target)
    return turn_reward(score), score


@torch.no_grad()
def sample_completions(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]], n: int, max_new_tokens: int,
                       temperature: float, seed: int | None = None) -> list[list[list[int]]]:
    """n completions per prompt from the engine (continuous batching over all of them); stop tokens kept.

    A fresh engine each call: a prefix cache kept across optimizer steps would serve stale keys and values.
    """
    was_training = model.training
    engine = Engine(model, tokenizer, EngineConfig(max_num_seqs=len(prompts) * n))  # all of them in one wave
    params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, n=n,
                             seed=None if seed is None else seed + 1000 * i) for i in range(len(prompts))]
    outputs = engine.generate(prompts, params)
    model.train(was_training)
    return [[list(o.token_ids) for o in out.outputs] for out in outputs]


def toolcall_accuracy(model: GPT, tokenizer: Tokenizer, prompts: list[ToolcallPrompt],
                      max_new_tokens: int = 64) -> dict[str, Any]:
    """Greedy answers at every decision point, scored: how often calls parse, name the right tool,
    carry the right arguments; how often answer turns call nothing and contain the answer; the mean
    reward, and each prompt's reward (`rewards`, for paired comparisons of two checkpoints)."""
    completions = sample_completions(model, tokenizer, [p.ids for p in prompts], 1, max_new_tokens, temperature=0.0)
    calls = {"parsed": 0, "right_tool": 0, "right_args": 0}
    answers = {"no_call": 0, "correct": 0}
    n_calls = n_answers = 0
    rewards = []
    for prompt, (completion,) in zip(prompts, completions):
        reward, score = toolcall_reward(tokenizer, prompt.target, completion)
        rewards.append(reward)
        if score["expects_call"]:
            n_calls += 1
            for key in calls:
                calls[key] += score[key]
        else:
            n_answers += 1
            answers["no_call"] += score["right_tool"]
            answers["correct"] += score["correct"]
    return {"call_turns": n_calls, "answer_turns": n_answers,
            **{f"call_{k}": v / max(n_calls, 1) for k, v in calls.items()},
            **{f"answer_{k}": v / max(n_answers, 1) for k, v in answers.items()},
            "mean_reward": sum(rewards) / max(len(rewards), 1), "rewards": rewards}


def sample_and_score(model: GPT, tokenizer: Tokenizer, prompts: list[ToolcallPrompt], n: int, max_new_tokens: int,
                     temperature: float, seed: int | None) -> tuple[list[list[list[int]]], list[list[float]]]:
    """n seeded completions per prompt and the checker's reward of each (GRPO's groups)."""
    completions = sample_completions(model, tokenizer, [p.ids for p in prompts], n, max_new_tokens, temperature, seed)
    rewards = [[toolcall_reward(tokenizer, p.target, c)[0] for c in group] for p, group in zip(prompts, completions)]
    return completions, rewards


def sampled_rewards(model: GPT, tokenizer: Tokenizer, prompts: list[ToolcallPrompt], n: int, temperature: float,
                    seed: int, max_new_tokens: int = 64) -> list[float]:
    """Each prompt's mean reward over n seeded samples at `temperature`: the quantity GRPO maximises (its
    samples are drawn this way), where greedy scoring only sees the mode of the policy."""
    return [sum(group) / n for group in sample_and_score(model, tokenizer, prompts, n, max_new_tokens, temperature,
                                                           seed)[1]]


def load_toolcall_samples(path: str | Path) -> tuple[list[dict[str, Any]], LoadReport]:
    """The usable samples of a `lmstack data toolcalls` file, and the report of the lines skipped."""
    report = LoadReport()
    lines = "a synthetic tool-use sample per line (from `lmstack data toolcalls`)"
    samples = [record for _, record in read_jsonl(path, report, check=_toolcall_problem, lines=lines)]
    if not samples:
        raise ChatDataError(f"'{path}' has no synthetic tool-use samples ({report.summary()}); "
                            "write some with `lmstack data toolcalls --out DIR`")
    return samples, report


def _toolcall_problem(record: Any) -> str | None:
    problem = conversation_problem(record)
    if problem is None and not isinstance(record.get("expected"), dict):
        return "no 'expected' (GRPO needs the checker's targets: use `lmstack data toolcalls` output)"
    return problem
