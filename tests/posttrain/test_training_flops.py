"""The model FLOPs behind MFU, checked against PyTorch's own count of the matmuls a step runs.

`torch.utils.flop_counter` counts every matmul autograd executes, so a LoRA step's missing weight gradients
show in it. It does not count CPU attention kernels, so the comparison is of the linear layers' share; the
attention term is PaLM's formula either way. oneDNN is switched off so the linears run as countable `mm`s."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.train.dpo import DPOObjective
from lmstack.train.grpo import GRPOObjective, Rollouts
from lmstack.train.lora import apply_lora
from lmstack.train.flops import pass_flops_per_token, scored_rows_flops

LINEAR_OPS = {"mm", "addmm"}


def linear_flops(run) -> int:
    """Matmul FLOPs of the linear layers that `run()` executes, forward and backward, as PyTorch counts them."""
    torch.backends.mkldnn.enabled = False
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        torch.backends.mkldnn.enabled = True
    return sum(n for op, n in counter.get_flop_counts()["Global"].items() if op.__name__ in LINEAR_OPS)


def model(arch: str, lora: bool):
    cfg = ModelConfig(arch=arch, vocab_size=320, block_size=64, n_layer=4, n_head=4, n_embd=128)
    built = build_model(cfg, seed=0).train()
    if lora:
        apply_lora(built, rank=4)
    return built


def attention_per_token(built, seq_len: int) -> int:
    cfg = built.cfg
    return 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len  # PaLM App. B, forward and backward


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("lora", [False, True])
def test_a_training_pass_counts_the_matmuls_autograd_runs(arch, lora):
    """With LoRA the frozen weights get no gradient: 6N per token overcounted by half as much again."""
    built, rows, length = model(arch, lora), 2, 64
    idx = torch.randint(0, 320, (rows, length + 1), generator=torch.Generator().manual_seed(0))
    measured = linear_flops(lambda: built(idx[:, :-1], idx[:, 1:])[1].backward())
    counted = rows * length * (pass_flops_per_token(built, length) - attention_per_token(built, length))
    # What is left over: the first layer's input gradient, which no weight needs under LoRA (2-4% here).
    assert measured == pytest.approx(counted, rel=0.05)
    forward = linear_flops(lambda: built(idx[:, :-1]))
    assert forward == pytest.approx(rows * length * (pass_flops_per_token(built, length, backward=False)
                                                     - attention_per_token(built, length) / 3), rel=0.01)


def test_a_dpo_step_counts_its_padded_rows_and_the_reference_forward():
    """The trainer counted batch_size * seq_len tokens at 6N: half the rows (a pair is two), no reference pass,
    and the full context however short the padded pairs were."""
    built, rows, length = model("llama", lora=True), 4, 40
    inputs = torch.randint(0, 320, (rows, length), generator=torch.Generator().manual_seed(1))
    targets = inputs.roll(-1, dims=1)
    targets[:, :10] = -1  # the prompt is not scored
    objective = DPOObjective(reference=None, beta=0.1)  # LoRA: the reference is the model with adapters off
    measured = linear_flops(lambda: objective(built, (inputs, targets))[0].backward())
    attention = attention_per_token(built, length) * (1 + 1 / 3)  # the policy's pass and the reference forward
    counted = scored_rows_flops(built, inputs, reference_pass=True) - rows * length * attention
    assert measured == pytest.approx(counted, rel=0.05)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_a_grpo_step_counts_the_reference_forward_only_with_a_kl_penalty(kl_coef):
    built, rows, length = model("llama", lora=True), 4, 30
    inputs = torch.randint(0, 320, (rows, length), generator=torch.Generator().manual_seed(2))
    targets = inputs.roll(-1, dims=1)
    targets[:, :12] = -1  # the prompt; the completion is scored
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.0]])  # one group of four samples
    rollouts = Rollouts(inputs, targets, rewards, [length - 12] * rows, rewards)
    objective = GRPOObjective(reference=None, kl_coef=kl_coef)
    measured = linear_flops(lambda: objective(built, rollouts)[0].backward())
    attention = attention_per_token(built, length) * (1 + (1 / 3 if kl_coef else 0))
    counted = scored_rows_flops(built, inputs, reference_pass=objective.uses_reference) - rows * length * attention
    assert measured == pytest.approx(counted, rel=0.05)

