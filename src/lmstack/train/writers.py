"""Optional TensorBoard and Weights & Biases writers, used when enabled in the config and installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmstack.errors import LmstackError


class ScalarWriters:
    """Fans scalar records out to whichever of TensorBoard / W&B the config turned on."""

    def __init__(self, run_dir: Path, tensorboard: bool, wandb: bool, project: str, name: str,
                 config: dict[str, Any]):
        self.tb = None
        self.wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LmstackError("tensorboard=true but the tensorboard package is not installed; "
                                   "`pip install tensorboard` or --set tensorboard=false") from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise LmstackError("wandb=true but the wandb package is not installed; "
                                   "`pip install wandb` or --set wandb=false") from None
            self.wandb = wandb_module.init(project=project, name=name, config=config, dir=str(run_dir),
                                           resume="allow")

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
