"""Direct Preference Optimization (Rafailov et al. 2023) from (prompt, chosen, rejected) JSONL.

loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

The reference is the starting model, frozen: with LoRA it is the same model with the adapters switched
off (no second copy in memory), otherwise a frozen copy. Logged per step: the implicit rewards
beta * (log pi - log ref) of chosen and rejected, their margin, and the accuracy (margin > 0).

A record is {"prompt": str | messages, "chosen": str | message, "rejected": str | message, "tools"?}. Lines
that cannot be used, including a chosen equal to its rejected (no preference), are skipped and named.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmstack.config import ConfigError
from lmstack.model.gpt import GPT
from lmstack.tokenizer import Tokenizer, TokenizerError
from lmstack.train.chat_data import LONGER_THAN_CONTEXT, ChatDataError, LoadReport, read_jsonl
from lmstack.train.distributed import sum_across_ranks
from lmstack.train.logprobs import token_logprobs
from lmstack.train.lora import lora_disabled, lora_layers
from lmstack.train.flops import scored_rows_flops
from lmstack.train.metrics import read_metrics
from lmstack.train.plots import plot_losses
from lmstack.train.sft import FineTuner, FineTuneResult, MicroBatches, SFTConfig, run_finetune

PREFERENCE_LINES = 'one {"prompt": ..., "chosen": ..., "rejected": ...} object per line'


def preference_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            return f"no '{key}'"
    if not isinstance(record["prompt"], (str, list)):
        return "'prompt' must be a string or a messages list"
    for key in ("chosen", "rejected"):
        if not isinstance(record[key], (str, dict)):
            return f"'{key}' must be a string or an assistant message"
    if _reply(record["chosen"]) == _reply(record["rejected"]):
        return "'chosen' equals 'rejected'"  # no preference to learn: its DPO gradient is zero
    return None


def _messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _reply(answer: str | dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": answer} if isinstance(answer, str) else {**answer, "role": "assistant"}


def render_response(tokenizer: Tokenizer, prompt: Any, answer: Any, tools: Any) -> tuple[list[int], list[int]]:
    """ids of prompt + answer, and the mask of the answer's tokens only (earlier assistant turns are context)."""
    rendered = tokenizer.render(_messages(prompt) + [_reply(answer)], tools)
    start = rendered.spans[-1][1]
    return rendered.ids, [0] * start + rendered.loss_mask[start:]


@dataclass
class PreferencePair:
    chosen: tuple[list[int], list[int]]
    rejected: tuple[list[int], list[int]]


def load_preferences(path: str | Path, tokenizer: Tokenizer, seq_len: int) -> tuple[list[PreferencePair], LoadReport]:
    report = LoadReport()
    pairs = []
    for where, record in read_jsonl(path, report, check=preference_problem, lines=PREFERENCE_LINES):
        try:
            chosen = render_response(tokenizer, record["prompt"], record["chosen"], record.get("tools"))
            rejected = render_response(tokenizer, record["prompt"], record["rejected"], record.get("tools"))
        except TokenizerError as err:
            report.drop("cannot render", f"{where} ({err})")
            continue
        if max(len(chosen[0]), len(rejected[0])) > seq_len + 1:
            report.drop(LONGER_THAN_CONTEXT, where)  # cutting a reply would change what is preferred
            continue
        pairs.append(PreferencePair(chosen, rejected))
    if not pairs:
        raise ChatDataError(f"'{path}' has no usable preference pairs ({report.summary()}); "
                            + report.fix("'prompt', 'chosen' and 'rejected', with a 'chosen' that differs from its "
                                         "'rejected'"))
    return pairs, report


def collate_pairs(pairs: list[PreferencePair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (2B, T): the chosen replies in rows 0..B-1, the rejected in B..2B-1."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    T = max(len(ids) for ids, _ in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        ids_t = torch.tensor(ids)
        inputs[r, :len(ids) - 1] = ids_t[:-1]
        targets[r, :len(ids) - 1] = torch.where(torch.tensor(mask[1:], dtype=torch.bool), ids_t[1:], -1)
    return inputs, targets


def sequence_logprobs(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows,) summed log-probability of each row's scored tokens."""
    return token_logprobs(model, inputs, targets).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    reward_chosen = beta * (policy_chosen - ref_chosen)
    reward_rejected = beta * (policy_rejected - ref_rejected)
    margin = reward_chosen - reward_rejected
    loss = -F.logsigmoid(margin).mean()
    metrics = {"reward_chosen": reward_chosen.mean().item(), "reward_rejected": reward_rejected.mean().item(),
               "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item()}
    return loss, metrics


class DPOObjective:
    """loss(model, (inputs, targets)) against `reference` (frozen), or, when it is None, against `model`
    itself with its LoRA adapters switched off."""

    def __init__(self, reference: GPT | None, beta: float = 0.1):
        self.reference, self.beta = reference, beta

    @torch.no_grad()
    def reference_logprobs(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.reference is not None:
            return sequence_logprobs(self.reference, inputs, targets)
        if not any(True for _ in lora_layers(model)):
            raise ValueError("DPO without a reference model needs LoRA adapters to switch off")
        was_training = model.training
        model.eval()  # no adapter dropout in the reference
        with lora_disabled(model):
            out = sequence_logprobs(model, inputs, targets)
        model.train(was_training)
        return out

    def __call__(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, targets = batch
        policy = sequence_logprobs(model, inputs, targets)
        reference = self.reference_logprobs(model, inputs, targets)
        half = inputs.size(0) // 2
        return dpo_loss(policy[:half], policy[half:], reference[:half], reference[half:], self.beta)


class PreferenceLoader:
    """Endless shuffled batches of preference pairs, sharded by rank, resumable."""

    def __init__(self, pairs: list[PreferencePair], batch_size: int, pad_id: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        self.pairs, self.batch_size, self.pad_id = pairs, batch_size, pad_id
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.draws = 0
        self._orders: dict[int, list[int]] = {}

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        per_epoch = len(self.pairs)
        chosen = []
        for k in range(self.batch_size):
            draw = self.draws + self.rank * self.batch_size + k
            chosen.append(self.pairs[self._order(draw // per_epoch)[draw % per_epoch]])
        self.draws += self.batch_size * self.world_size
        return collate_pairs(chosen, self.pad_id)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.pairs)))
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
            self._orders = {epoch: order}  # batches span at most two epochs; keep only the newest
        return self._orders[epoch]

    def state_dict(self) -> dict[str, int]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.draws = state["draws"]


# ---- the `lmstack dpo` trainer: the fine-tuning loop with preference batches and the DPO loss ----
@dataclass
class DPOConfig(SFTConfig):
    beta: float = 0.1
    run_name: str = "dpo"
    lr: float = 1e-4

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        super().validate()


class DPOTrainer(FineTuner):
    cfg: DPOConfig

    def build_loader(self) -> MicroBatches:
        cfg = self.cfg
        pairs, report = load_preferences(cfg.train_file, self.tokenizer, cfg.seq_len)
        val_report = LoadReport()
        if cfg.val_file:
            self.val_pairs, val_report = load_preferences(cfg.val_file, self.tokenizer, cfg.seq_len)
        else:
            n_val = max(1, int(len(pairs) * cfg.val_fraction)) if len(pairs) > 1 else 0
            pairs, self.val_pairs = pairs[:len(pairs) - n_val], pairs[len(pairs) - n_val:] or pairs
        self.say(f"preference data: {report.summary()}; {len(pairs)} train, {len(self.val_pairs)} val pairs")
        self.say_skipped(report)
        self.say_skipped(val_report)
        self.objective = DPOObjective(self.reference_model(), cfg.beta)
        pad_id = self.tokenizer.special["<|pad|>"]
        return MicroBatches(lambda rank, ways: PreferenceLoader(pairs, cfg.batch_size, pad_id, rank, ways, cfg.seed),
                            self.dist.rank, self.dist.world_size, self.grad_accum, self.device)

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss, self.step_metrics = self.objective(self.forward_model, batch)
        return loss

    def batch_flops(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        return scored_rows_flops(self.model, batch[0], reference_pass=True)  # both replies, padded to the longest

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].numel()  # the rows batch_flops counts: both replies of each pair, padded to the longest

    def step_batch(self) -> str:
        return f"{self.rows_per_step:,} preference pairs (2 rows each, padded to their micro-batch's longest)"

    @torch.no_grad()
    def run_eval(self) -> None:
        """DPO loss, reward margin and accuracy over the val pairs (each rank its share, summed)."""
        was_training = self.model.training
        self.model.eval()
        pad_id = self.tokenizer.special["<|pad|>"]
        mine = self.val_pairs[self.dist.rank::self.dist.world_size]
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, margin, correct, pairs
        for start in range(0, len(mine), self.cfg.batch_size):
            chunk = mine[start:start + self.cfg.batch_size]
            inputs, targets = (t.to(self.device) for t in collate_pairs(chunk, pad_id))
            loss, metrics = self.objective(self.model, (inputs, targets))
            n = len(chunk)
            totals += torch.tensor([loss.item() * n, metrics["reward_margin"] * n, metrics["reward_accuracy"] * n, n],
                                   dtype=torch.float64, device=self.device)
        self.model.train(was_training)
        loss, margin, correct, n = sum_across_ranks(totals).tolist()
        self.last_val = loss / max(n, 1)
        if not self.is_main:
            return
        result = {"val_loss": self.last_val, "val_reward_margin": margin / max(n, 1), "val_reward_accuracy": correct / max(n, 1)}
        self.metrics.write({"step": self.step, **result})
        self.writers.write(self.step, result)
        self.say(f"step {self.step}: val DPO loss {result['val_loss']:.4f}, reward margin "
                 f"{result['val_reward_margin']:.4f}, accuracy {result['val_reward_accuracy']:.1%}")
        plot_losses(read_metrics(self.metrics.path), self.run_dir / "loss.png", self.cfg.log_x, title=self.cfg.run_name)


def dpo(cfg: DPOConfig, resume: str = "auto") -> FineTuneResult:
    if not cfg.train_file:
        raise ChatDataError("no preference data: pass --data FILE.jsonl with prompt/chosen/rejected lines")
    return run_finetune(DPOTrainer, cfg, resume)
