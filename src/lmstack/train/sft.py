"""`lmstack sft`: supervised fine-tuning of a checkpoint on chat JSONL, fully or with LoRA.

It is the pretraining loop (`lmstack.train.loop.Trainer`: DDP, checkpoints, resume, guards, metrics,
progress, plots) with four parts swapped: the model starts from `init_from` (plus LoRA adapters when
`lora_rank` > 0), batches are packed conversations with document masking, the loss is taken on
assistant tokens only, and evals report the held-out chat loss and a few chat samples. At the end the
model is written to `<run dir>/final` as a plain checkpoint dir (adapters merged in), which every
other command loads. `FineTuner` is also the base of the DPO and GRPO trainers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lmstack.config import ConfigError, from_dict, load_config
from lmstack.errors import LmstackError
from lmstack.infer.simple import generate
from lmstack.model.checkpoint import (WEIGHTS_FILE, load_model_dir, load_weights_into, read_config, read_weights,
                                      save_model_dir)
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import GPT
from lmstack.train.chat_data import LoadReport, PackedBatch, PackedChatLoader, load_chat_examples
from lmstack.train.config import TrainConfig
from lmstack.train.distributed import process_group_scope, sum_across_ranks
from lmstack.train.loop import Trainer, TrainResult
from lmstack.train.lora import DEFAULT_TARGETS, apply_lora, merge_lora
from lmstack.train.metrics import read_metrics
from lmstack.train.plots import plot_losses

FINAL_DIR = "final"


@dataclass
class SFTConfig(TrainConfig):
    """Fine-tuning settings on top of the pretraining ones; `model` is taken from `init_from`."""
    init_from: str = ""  # checkpoint dir to start from
    train_file: str = ""  # chat JSONL: {"messages": [...], "tools": [...]?} per line
    val_file: Optional[str] = None  # held-out chat JSONL; None = the last val_fraction of train_file
    val_fraction: float = 0.05
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: Optional[float] = None  # None = 2 * rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    sample_count: int = 2  # held-out conversations answered at each eval
    # Fine-tuning defaults differ from pretraining's: fewer steps, a smaller lr, no decay of what was learned.
    run_name: str = "sft"
    max_steps: int = 200
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 100
    sample_tokens: int = 64

    def validate(self) -> None:
        if not self.init_from:
            raise ConfigError("init_from is not set: pass the checkpoint dir to fine-tune (--init-from DIR)")
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")
        # The adapters' scale is alpha / rank: at 0 they train nothing, below 0 the sign flips.
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha must be > 0, got {self.lora_alpha}; leave it out for 2 * rank "
                              "(--lora-alpha N)")
        # Without a rank there are no adapters, so these would be ignored and the run a full fine-tune.
        lora_only = [flag for flag, unset in (("--lora-alpha", self.lora_alpha is None),
                                              ("--lora-dropout", self.lora_dropout == 0),
                                              ("--lora-targets", self.lora_targets == list(DEFAULT_TARGETS)))
                     if not unset]
        if lora_only and not self.lora_rank:
            raise ConfigError(f"{', '.join(lora_only)} set LoRA adapters, but no --lora-rank N asks for them; add "
                              "--lora-rank N (e.g. 8) for LoRA, or drop them to fine-tune all weights")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        super().validate()

    def other_run_dir_option(self) -> str:
        return "--run-dir DIR"  # every post-training command has it


def load_finetune_config(cls: type, init_from: str, config_file: str | None, overrides: list[str],
                         **settings: Any):
    """Defaults <- the checkpoint's model and tokenizer <- `settings` (CLI flags) <- TOML <- --set."""
    saved = read_config(init_from)
    model = from_dict(ModelConfig, saved["model"], prefix="model.")
    # Saved absolute, as the agent saves its paths: a resume from another directory names the same files.
    start = Path(init_from).resolve()
    base = {"init_from": str(start), "model": saved["model"],
            "tokenizer": str(start / "tokenizer.json"), "seq_len": min(512, model.block_size),
            **{k: v for k, v in settings.items() if v is not None}}
    if base.get("train_file"):
        base["train_file"] = str(Path(base["train_file"]).resolve())
    cfg = load_config(cls, config_file, overrides, base=base)
    if cfg.model != model:
        raise ConfigError("model.* settings cannot change in fine-tuning: the shape comes from init_from "
                          f"'{init_from}'; drop the model.* overrides")
    return cfg


class FineTuner(Trainer):
    """The pretraining Trainer, starting from a checkpoint, optionally with LoRA; SFT on packed chats."""

    cfg: SFTConfig

    # ---- the model -----------------------------------------------------------------------------
    def build_model(self, checkpoint: Path | None) -> GPT:
        """init_from (+ fresh adapters), or a checkpoint of this run (which holds the adapters too)."""
        cfg = self.cfg
        if not cfg.lora_rank:
            return load_model_dir(checkpoint or cfg.init_from, self.device, load_tokenizer=False)[0]
        model = load_model_dir(cfg.init_from, self.device, load_tokenizer=False)[0]
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        if checkpoint is not None:
            weights = Path(checkpoint) / WEIGHTS_FILE
            load_weights_into(model, read_weights(weights, self.device), weights)
        return model

    def reference_model(self) -> GPT | None:
        """The frozen starting point for DPO / GRPO; None with LoRA, whose adapters switch off instead."""
        if self.cfg.lora_rank:
            return None
        return load_model_dir(self.cfg.init_from, self.device, load_tokenizer=False)[0].requires_grad_(False)

    # ---- data ----------------------------------------------------------------------------------
    def open_val_split(self) -> None:
        """No shards to open: fine-tuning reads its val data with its train data, in build_loader."""

    def chat_splits(self):
        """(train examples, val examples) with the sizes printed."""
        cfg = self.cfg
        quiet = not self.is_main
        train, report = load_chat_examples(cfg.train_file, self.tokenizer, cfg.seq_len, quiet=quiet)
        if cfg.val_file:
            val, _ = load_chat_examples(cfg.val_file, self.tokenizer, cfg.seq_len, quiet=quiet)
        else:
            n_val = max(1, int(len(train) * cfg.val_fraction)) if len(train) > 1 else 0
            train, val = train[:len(train) - n_val], train[len(train) - n_val:] or train
        self.say(f"chat data: {report.summary()}; {len(train)} train, {len(val)} val conversations")
        return train, val

    def say_skipped(self, report: LoadReport) -> None:
        """Name the first skipped records (in run.log too): a bad line must not thin the data unnoticed."""
        for warning in report.warning_lines():
            self.say(f"warning: {warning}")

    def build_loader(self):
        train, self.val_examples = self.chat_splits()
        cfg, pad_id = self.cfg, self.tokenizer.special["<|pad|>"]
        loader = MicroBatches(lambda rank, ways: PackedChatLoader(train, cfg.batch_size, cfg.seq_len, pad_id, rank, ways, cfg.seed),
                              self.dist.rank, self.dist.world_size, self.grad_accum, self.device)
        self.say(f"packed into {len(loader.loaders[0].windows)} windows of {cfg.seq_len} tokens "
                 f"({loader.loaders[0].fill:.0%} filled)")
        return loader

    def compute_loss(self, batch: PackedBatch) -> torch.Tensor:
        _, loss = self.forward_model(batch.inputs, batch.targets, positions=batch.positions, attn_mask=batch.attn_mask)
        return loss

    # ---- evals ---------------------------------------------------------------------------------
    @torch.no_grad()
    def val_loss(self) -> float:
        """Mean loss per trained token over the first eval_batches windows of this rank's val split."""
        cfg = self.cfg
        loader = PackedChatLoader(self.val_examples, cfg.batch_size, cfg.seq_len, self.tokenizer.special["<|pad|>"],
                                  self.dist.rank, self.dist.world_size, seed=0)
        was_training = self.model.training
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for _ in range(min(cfg.eval_batches, max(1, len(loader.windows) // cfg.batch_size))):
            batch = loader.next_batch().to(self.device)
            with self.autocast():
                _, loss = self.model(batch.inputs, batch.targets, positions=batch.positions,
                                     attn_mask=batch.attn_mask, loss_reduction="sum")
            totals += torch.stack([loss.double(), (batch.targets >= 0).sum().double()])
        self.model.train(was_training)
        nats, tokens = sum_across_ranks(totals).tolist()
        return nats / max(tokens, 1)

    @torch.no_grad()
    def chat_samples(self) -> list[str]:
        """Greedy answers to the first user turn of a few held-out conversations (special tokens shown)."""
        was_training = self.model.training
        self.model.eval()
        texts = []
        for example in self.val_examples[:self.cfg.sample_count]:
            assistant = self.tokenizer.special["<|assistant|>"]
            prompt = example.ids[:example.ids.index(assistant) + 1]
            new = generate(self.model, prompt, self.cfg.sample_tokens, temperature=0.0,
                           stop_ids=self.tokenizer.stop_ids)
            texts.append(self.tokenizer.decode(prompt[-24:]) + " -> " + self.tokenizer.decode(new))
        self.model.train(was_training)
        return texts

    def run_eval(self) -> None:
        self.last_val = self.val_loss()
        if not self.is_main:
            return
        result = {"val_loss": self.last_val}
        self.metrics.write({"step": self.step, **result})
        self.writers.write(self.step, result)
        self.samples = self.chat_samples()
        self.say(f"step {self.step}: val loss {self.last_val:.4f} (assistant tokens)")
        for text in self.samples:
            self.say("  sample: " + repr(text))
        plot_losses(read_metrics(self.metrics.path), self.run_dir / "loss.png", self.cfg.log_x, title=self.cfg.run_name)

    # ---- the result ----------------------------------------------------------------------------
    def export(self) -> Path:
        """The trained model as a plain checkpoint dir (adapters merged into a copy) at <run dir>/final."""
        model = merge_lora(copy.deepcopy(self.model)) if self.cfg.lora_rank else self.model
        path = save_model_dir(self.run_dir / FINAL_DIR, model, self.tokenizer,
                              {**self.config_dict, "finetuned_step": self.step})
        self.say(f"final model (a plain checkpoint dir{', LoRA merged' if self.cfg.lora_rank else ''}): {path}")
        return path


class MicroBatches:
    """One loader per virtual rank (as in `GlobalBatchLoader`), so the global batch is the same whatever
    the number of processes. `make_loader(rank, world_size)` builds any loader with next_batch /
    state_dict / load_state_dict whose batches are a tensor tuple or have `.to(device)`."""

    def __init__(self, make_loader: Callable[[int, int], Any], rank: int, world_size: int, grad_accum: int,
                 device: torch.device):
        ways = world_size * grad_accum
        self.device = device
        self.loaders = [make_loader(rank * grad_accum + micro, ways) for micro in range(grad_accum)]

    def micro_batches(self):
        for loader in self.loaders:
            batch = loader.next_batch()
            yield batch.to(self.device) if hasattr(batch, "to") else tuple(t.to(self.device) for t in batch)

    def state_dict(self) -> list[dict[str, int]]:
        return [loader.state_dict() for loader in self.loaders]

    def load_state_dict(self, states: list[dict[str, int]]) -> None:
        assert len(states) == len(self.loaders), "loader states saved with a different gradient accumulation"
        for loader, state in zip(self.loaders, states):
            loader.load_state_dict(state)


@dataclass
class FineTuneResult:
    train: TrainResult
    final: Path | None  # None when a signal stopped the run before the end


def run_finetune(trainer_cls: type[FineTuner], cfg: SFTConfig, resume: str = "auto") -> FineTuneResult:
    """Train (or resume) with `trainer_cls`, then export the final model (rank 0) unless interrupted."""
    with process_group_scope(), trainer_cls(cfg, resume) as trainer:  # the run dir stays locked until export is done
        result = trainer.run()
        final = None
        if result.interrupted_by is None and trainer.is_main:
            final = trainer.export()
        return FineTuneResult(result, final)


def sft(cfg: SFTConfig, resume: str = "auto") -> FineTuneResult:
    if not cfg.train_file:
        raise LmstackError("no training data: pass --data FILE.jsonl (chat JSONL, e.g. from `lmstack data toolcalls`)")
    return run_finetune(FineTuner, cfg, resume)
