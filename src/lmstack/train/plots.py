"""Training plots, rewritten at each eval: `loss.png` (train raw and smoothed, val) and GRPO's `reward.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from lmstack.atomic import atomic_write  # noqa: E402


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so the curve starts at the first value."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_losses(records: list[dict[str, Any]], path: Path, log_x: bool = False, title: str = "") -> None:
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "event" not in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    _, ax = plt.subplots(figsize=(8, 5))
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train")
        ax.plot(steps, smooth(list(losses)), color="tab:blue", linewidth=1.6, label="train (smoothed)")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", linewidth=1.6, label="val")
    if log_x:
        ax.set_xscale("symlog", linthresh=1)  # symlog: step 0 stays on the plot
    save_figure(ax, path, title, "loss (nats/token)")


def plot_rewards(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """reward.png: mean sampled reward per step (with its group std) and the held-out greedy reward."""
    train = [(r["step"], r["reward_mean"], r["reward_std"]) for r in records if "reward_mean" in r]
    val = [(r["step"], r["val_reward"]) for r in records if "val_reward" in r]
    _, ax = plt.subplots(figsize=(8, 5))
    if train:
        steps, means, stds = zip(*train)
        ax.plot(steps, means, color="tab:blue", label="train: mean reward of samples")
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color="tab:blue", alpha=0.15, label="within-group std")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="held-out: greedy reward")
    save_figure(ax, path, title, "reward")


def save_figure(ax, path: Path, title: str, ylabel: str) -> None:
    """Label, lay out and write the axes' figure atomically (a reader never sees half a PNG)."""
    fig = ax.figure
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
