"""`TrainConfig`: every setting of a pretraining run, with defaults that train a small model on a laptop.

Loaded with `lmstack.config.load_config` (defaults <- TOML <- `--set`), printed at start, and saved in
every checkpoint's config.json. `--depth N` is the one-number dial: it sets the model's shape (see
`config_from_depth`) before the file and the overrides are applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from lmstack.config import ConfigError
from lmstack.model.config import ModelConfig, require_finite


@dataclass
class GuardConfig:
    """What to do when a step's loss is not finite or spikes (see train/guards.py)."""

    action: Literal["skip", "rollback"] = "skip"  # skip the step, or reload the last checkpoint
    spike_factor: float = 4.0  # a loss above this times the recent median is a spike; 0 disables
    window: int = 50  # how many recent accepted losses the median is taken over
    min_history: int = 20  # no spike check until this many losses were seen (early loss falls fast)
    max_bad_steps: int = 20  # this many bad steps in a row stop the run: the problem is not one batch

    def validate(self) -> None:
        require_finite(self, "guard.")
        if self.spike_factor < 0:
            raise ConfigError(f"guard.spike_factor must be >= 0 (0 disables), got {self.spike_factor}")
        if self.window < 1 or self.min_history < 1 or self.max_bad_steps < 1:
            raise ConfigError("guard.window, guard.min_history and guard.max_bad_steps must be at least 1")


@dataclass
class TrainConfig:
    # ---- where ----
    run_name: str = "default"
    run_dir: Optional[str] = None  # default: runs/<run_name>
    data_dir: str = "data"  # shards written by `lmstack prepare`
    tokenizer: Optional[str] = None  # tokenizer.json; default: <data_dir>/tokenizer.json
    # ---- what ----
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast; auto = bf16 on GPUs, fp32 on CPU
    compile: bool = False  # torch.compile the model (needs a C++ compiler on CPU)
    # ---- how much ----
    batch_size: int = 8  # sequences per micro-batch per process
    seq_len: int = 256
    tokens_per_step: int = 0  # global batch in tokens; 0 = batch_size * seq_len * processes (no accumulation)
    max_steps: int = 1000
    # ---- optimizer ----
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon on 2-D hidden weights, AdamW on the rest
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    # ---- schedule ----
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to min_lr
    # ---- evaluation, samples, checkpoints ----
    eval_every: int = 100  # steps; 0 = only at the end
    eval_batches: int = 8
    sample_prompts: list[str] = field(default_factory=lambda: ["def", "import", "class"])
    sample_tokens: int = 48
    sample_temperature: float = 0.8
    sample_top_k: int = 40
    checkpoint_every: int = 200  # steps; the last step is always saved
    keep_last: int = 2  # checkpoints kept besides the best one
    log_x: bool = False  # loss.png with a log-scale step axis
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "lmstack"
    # ---- robustness ----
    guard: GuardConfig = field(default_factory=GuardConfig)
    debug_nan_at_step: int = -1  # test hook: make this step's loss NaN (once per process)
    debug_checkpoint_delay: float = 0.0  # test hook: seconds to pause inside a checkpoint write

    def validate(self) -> None:
        require_finite(self)  # every float, a subclass's too (dpo's beta, grpo's kl_coef)
        if self.seed < 0:  # numpy's and the loader's generators take no negative seed
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for name in ("batch_size", "seq_len", "max_steps", "eval_batches", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len > self.model.block_size:
            raise ConfigError(f"seq_len={self.seq_len} is longer than model.block_size={self.model.block_size}; "
                              f"lower seq_len or raise model.block_size")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("lr must be > 0 and min_lr_ratio between 0 and 1")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("warmup_steps, eval_every and checkpoint_every must be >= 0")

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.run_name

    def other_run_dir_option(self) -> str:
        """How the user names another run dir, for messages: the option they chose theirs with."""
        return "--set run_dir=PATH" if self.run_dir else "--set run_name=NAME"

    @property
    def tokenizer_path(self) -> Path:
        return Path(self.tokenizer) if self.tokenizer else Path(self.data_dir) / "tokenizer.json"

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-batches per process per step, so the global batch is `tokens_per_step` whatever the world size."""
        per_micro = self.batch_size * self.seq_len * world_size
        if self.tokens_per_step == 0:
            return 1
        if self.tokens_per_step % per_micro:
            raise ConfigError(
                f"tokens_per_step={self.tokens_per_step} is not a multiple of batch_size * seq_len * processes "
                f"= {self.batch_size} * {self.seq_len} * {world_size} = {per_micro}; "
                f"set tokens_per_step to a multiple of {per_micro}")
        return self.tokens_per_step // per_micro
