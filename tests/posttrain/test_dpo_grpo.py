"""DPO and GRPO maths: hand-computed losses, a toy preference set learned, zero-mean group advantages."""

import copy
import json
import math

import pytest
import torch

from lmstack.train.chat_data import ChatDataError
from lmstack.train.config import GuardConfig
from lmstack.train.dpo import DPOObjective, PreferenceLoader, dpo_loss, load_preferences
from lmstack.train.grpo import (GRPOConfig, GRPOObjective, build_rollouts, grpo_loss, group_advantages,
                                informative_groups, kl_k3)
from lmstack.train.guards import LossGuard
from lmstack.train.lora import apply_lora


def test_dpo_loss_matches_hand_computation():
    loss, metrics = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]),
                             torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]), beta=0.5)
    margins = [0.5 * ((-1 + 2) - (-3 + 2)), 0.5 * ((-2 + 2) - (-1 + 2))]  # 1.0 and -0.5
    want = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert metrics["reward_accuracy"] == 0.5
    assert metrics["reward_margin"] == pytest.approx(sum(margins) / 2)


def write_toy_preferences(path, n=12):
    """Answer with the colour named in the prompt (chosen) rather than another one (rejected)."""
    colours = ["red", "blue", "green", "white"]
    with open(path, "w") as f:
        for i in range(n):
            right, wrong = colours[i % 4], colours[(i + 1) % 4]
            f.write(json.dumps({"prompt": f"Say {right}.", "chosen": right, "rejected": wrong}) + "\n")
    f = open(path, "a")
    f.write('{"prompt": "no answers"}\n')  # skipped, counted
    f.close()


def test_a_pair_whose_chosen_equals_its_rejected_is_skipped_and_named(chat_tokenizer, tmp_path):
    # No preference to learn (the DPO gradient is zero); a string and the same text as a message are equal.
    lines = [{"prompt": "Say red.", "chosen": "red", "rejected": "blue"},
             {"prompt": "Say red.", "chosen": "red", "rejected": "red"},
             {"prompt": "Say red.", "chosen": {"role": "assistant", "content": "red"}, "rejected": "red"}]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    pairs, report = load_preferences(tmp_path / "prefs.jsonl", chat_tokenizer, seq_len=64)
    assert len(pairs) == 1 and report.skipped == {"'chosen' equals 'rejected'": 2}
    assert report.warnings == ["prefs.jsonl line 2: skipped ('chosen' equals 'rejected')",
                               "prefs.jsonl line 3: skipped ('chosen' equals 'rejected')"]
    (tmp_path / "same.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[1:]))
    with pytest.raises(ChatDataError, match="same.jsonl' has no usable preference pairs .*2 'chosen' equals"):
        load_preferences(tmp_path / "same.jsonl", chat_tokenizer, seq_len=64)


@pytest.mark.parametrize("use_lora", [False, True])
def test_dpo_raises_preference_accuracy_on_a_toy_set(chat_tokenizer, make_model, tmp_path, use_lora):
    write_toy_preferences(tmp_path / "prefs.jsonl")
    pairs, report = load_preferences(tmp_path / "prefs.jsonl", chat_tokenizer, seq_len=64)
    assert report.skipped == {"no 'chosen'": 1}
    torch.manual_seed(0)
    model = make_model(chat_tokenizer, seed=1).train()
    if use_lora:
        apply_lora(model, rank=8, alpha=16)
    reference = None if use_lora else copy.deepcopy(model).requires_grad_(False)
    objective = DPOObjective(reference, beta=0.5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2 if use_lora else 3e-3)
    loader = PreferenceLoader(pairs, batch_size=len(pairs), pad_id=0)
    batch = loader.next_batch()
    _, first = objective(model, batch)
    for _ in range(30):
        loss, metrics = objective(model, loader.next_batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        _, final = objective(model, batch)
    assert first["reward_accuracy"] < 0.9 < final["reward_accuracy"]
    assert final["reward_margin"] > first["reward_margin"]


def test_group_advantages_are_zero_mean_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2], [0.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.equal(adv[1], torch.zeros(4))  # equal rewards: no signal
    std0 = math.sqrt(((1 - 0.5) ** 2 + 0.5 ** 2) / 4)
    assert adv[0, 0].item() == pytest.approx(0.5 / (std0 + 1e-4), rel=1e-5)
    assert (adv[2, 0] < 0) and (adv[2, 1:] > 0).all()


def test_grpo_loss_gradient_is_advantage_weighted_logprob_gradient():
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -1.0])
    loss, _ = grpo_loss(logprobs, advantages, mask)
    loss.backward()
    # d/dlogp of mean_i( -A_i * mean_t logp_it ) = -A_i / (2 * len_i) on unmasked tokens
    want = torch.tensor([[-1 / 4, -1 / 4, 0.0], [1 / 6, 1 / 6, 1 / 6]])
    torch.testing.assert_close(logprobs.grad, want)
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-2.0])).item() > 0


def test_a_grpo_step_makes_the_rewarded_completion_likelier(chat_tokenizer, make_model):
    model = make_model(chat_tokenizer, seed=2).train()
    prompt = chat_tokenizer.render([{"role": "user", "content": "Say yes."}], add_generation_prompt=True).ids
    good, bad = chat_tokenizer.encode("yes"), chat_tokenizer.encode("no")
    rollouts = build_rollouts([prompt], [[good, bad]], [[1.0, 0.0]], pad_id=0)
    assert rollouts.targets[0, len(prompt) - 1].item() == good[0]  # first completion token is trained
    assert (rollouts.targets[0, :len(prompt) - 1] == -1).all()  # the prompt never is
    objective = GRPOObjective(copy.deepcopy(model).requires_grad_(False), kl_coef=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def good_minus_bad():
        from lmstack.train.logprobs import token_logprobs
        with torch.no_grad():
            lp = token_logprobs(model, rollouts.inputs, rollouts.targets).sum(dim=1)
        return (lp[0] - lp[1]).item()

    before = good_minus_bad()
    loss, metrics = objective(model, rollouts)
    loss.backward()
    optimizer.step()
    assert good_minus_bad() > before
    assert metrics["reward_mean"] == 0.5 and metrics["kl"] == pytest.approx(0.0, abs=1e-6)


def test_grpo_guard_passes_signed_near_zero_losses_but_not_nan():
    """GRPO's loss hovers around 0 with either sign, so a spike rule (x times the median) would skip healthy
    steps; the GRPO default guards non-finite losses only. Losses from a real run that the spike rule skipped."""
    losses = [1e-4, -1e-4, 0.0, 5e-5, 1e-4] * 5 + [3e-4, 5e-4]
    spiky, grpo_guard = LossGuard(GuardConfig()), LossGuard(GRPOConfig().guard)
    reasons = []
    for loss in losses:
        reasons.append(spiky.check(loss, 1.0))
        spiky.accept(loss)
        assert grpo_guard.check(loss, 1.0) is None
        grpo_guard.accept(loss)
    assert reasons[-1] is not None  # the pretraining default would have skipped it
    assert grpo_guard.check(float("nan"), 1.0) is not None


def test_dropping_uniform_groups_keeps_the_policy_gradient_direction(chat_tokenizer, make_model):
    """Without a KL penalty, groups that all scored alike have zero advantage: training on the informative
    groups alone (the loss rescaled by the share of samples kept) gives the same gradient."""
    model = make_model(chat_tokenizer, seed=3).train()
    prompts = [chat_tokenizer.render([{"role": "user", "content": q}], add_generation_prompt=True).ids
               for q in ("Say yes.", "Say no.", "Count.")]
    groups = [[chat_tokenizer.encode(a) for a in answers]
              for answers in (["yes", "no"], ["no", "no!"], ["1 2", "3"])]
    rewards = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    kept = informative_groups(rewards)
    assert kept == [0, 2]

    def gradient(rollouts):
        model.zero_grad()
        loss, metrics = GRPOObjective(None, kl_coef=0.0)(model, rollouts)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), metrics

    everything, _ = gradient(build_rollouts(prompts, groups, rewards, pad_id=0))
    filtered, metrics = gradient(build_rollouts(prompts, groups, rewards, pad_id=0, keep=kept))
    torch.testing.assert_close(filtered, everything, rtol=1e-4, atol=1e-7)
    assert metrics["reward_mean"] == pytest.approx(0.5) and metrics["informative_groups"] == pytest.approx(2 / 3)
    # what a step of all-alike groups keeps: one of them
    uniform = build_rollouts([prompts[1]] * 3, [groups[1]] * 3, [rewards[1]] * 3, pad_id=0, keep=[0])
    assert gradient(uniform)[1]["informative_groups"] == 0.0
