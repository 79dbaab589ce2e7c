"""Optional TensorBoard and Weights & Biases writers, used when enabled in the config and installed."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from lmstack.errors import LmstackError

WRITER_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}


def import_writer(name: str) -> ModuleType:
    """The module of writer `name` ('tensorboard' or 'wandb'), or the error naming its setting and the fix."""
    try:
        return importlib.import_module(WRITER_MODULES[name])
    except ImportError:
        raise LmstackError(f"{name}=true but the {name} package is not installed; `pip install {name}` or "
                           f"--set {name}=false") from None


def check_writers_installed(tensorboard: bool, wandb: bool) -> None:
    """Refuse a writer whose package is missing before the run dir is made, not after the model is built."""
    for name, enabled in (("tensorboard", tensorboard), ("wandb", wandb)):
        if enabled:
            import_writer(name)


class ScalarWriters:
    """Fans scalar records out to whichever of TensorBoard / W&B the config turned on."""

    def __init__(self, run_dir: Path, tensorboard: bool, wandb: bool, project: str, name: str,
                 config: dict[str, Any]):
        self.tb = None
        self.wandb = start_wandb(run_dir, project, name, config) if wandb else None
        if tensorboard:  # after W&B, the writer that may fail: a failed start then leaves no event file behind
            self.tb = import_writer("tensorboard").SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(run_dir: Path, project: str, name: str, config: dict[str, Any]):
    """A W&B run, or one line for what stopped wandb.init: no API key, mostly, which it raises as a UsageError; its
    other errors (the server unreachable) are its own wandb.errors.Error too, while a setting it refuses (from a
    WANDB_* variable) is pydantic's ValidationError, a ValueError. A failure that came after
    wandb wrote its folder (a network error) takes that folder away when this start made it, so that a failed
    start's run dir is left empty and removed."""
    wandb = import_writer("wandb")
    wandb_dir = run_dir / "wandb"
    existed = wandb_dir.exists()
    try:
        return wandb.init(project=project, name=name, config=config, dir=str(run_dir), resume="allow")
    except wandb.errors.Error as err:
        if not existed:
            shutil.rmtree(wandb_dir, ignore_errors=True)
        if "API key" in str(err):
            raise LmstackError("wandb=true but wandb has no API key: run `wandb login`, or set WANDB_MODE=offline, "
                               "or --set wandb=false") from None
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise LmstackError(f"wandb=true but wandb.init failed ({reason}); fix that, or set WANDB_MODE=offline, or "
                           "--set wandb=false") from None
    except ValueError as err:  # pydantic's ValidationError: a setting wandb refuses (WANDB_MODE=bogus)
        if not existed:
            shutil.rmtree(wandb_dir, ignore_errors=True)
        problems = ("; ".join(f"{'.'.join(map(str, e['loc']))} {e['input']!r}: {e['msg']}" for e in err.errors())
                    if callable(getattr(err, "errors", None)) else (str(err).splitlines() or [type(err).__name__])[0])
        raise LmstackError(f"wandb=true but wandb refuses its settings ({problems}); fix the WANDB_* environment "
                           "variable that sets it (WANDB_MODE=offline logs without a server), or --set wandb=false") \
            from None
