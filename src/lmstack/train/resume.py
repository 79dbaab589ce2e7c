"""Whether a run dir's last checkpoint can be continued under the current config.

Settings that change what the saved state means (the model's shape, the batch layout, the seed that
fixes the data order, the optimizer whose state is saved) must match; the rest (max_steps, lr,
eval cadence, ...) may change between a run and its resumption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmstack.errors import LmstackError

# The rest are fine-tuning's (absent from a pretraining config): a LoRA run's checkpoints hold the adapters, and a run
# resumed from another starting model or on other data would be recorded as what it is not.
MUST_MATCH = ("model", "batch_size", "seq_len", "tokens_per_step", "seed", "optimizer", "lora_rank", "lora_alpha",
              "lora_targets", "init_from", "train_file")
PATH_KEYS = ("init_from", "train_file")


def check_resumable(checkpoint: Path, saved: dict[str, Any], config: dict[str, Any],
                    other_run_dir: str = "--set run_name=NAME") -> None:
    """Refuse to continue `checkpoint`, whose config.json holds `saved`, under `config` if they differ in MUST_MATCH;
    `other_run_dir` is the option that names a new run dir."""
    for key in MUST_MATCH:
        if key not in saved or key not in config or same_setting(key, saved[key], config[key]):
            continue
        if isinstance(config[key], dict):
            differing = [k for k in config[key] if saved[key].get(k) != config[key][k]]
            detail = ", ".join(f"{key}.{k}: saved {saved[key].get(k)!r}, now {config[key][k]!r}" for k in differing)
        else:
            detail = f"{key}: saved {saved[key]!r}, now {config[key]!r}"
        run_dir = checkpoint.parent.parent
        raise LmstackError(
            f"the run dir '{run_dir}' has a checkpoint from a different config ({detail}); it cannot be resumed "
            f"with these settings. Use another {other_run_dir} for a new run, or delete '{run_dir}'")


def same_setting(key: str, saved: Any, now: Any) -> bool:
    """Paths name the same file whether given relative or absolute (from the same directory)."""
    if key in PATH_KEYS and isinstance(saved, str) and isinstance(now, str):
        return Path(saved).resolve() == Path(now).resolve()
    return saved == now
