"""Training checkpoints in a run dir: `checkpoints/step_000040/` (a checkpoint dir plus `train_state.pt`),
the last `keep_last` kept, and `best` -> the checkpoint with the lowest val loss.

A checkpoint is written into a temporary sibling and renamed into place (lmstack.atomic), so a crash
or a full disk at any instant leaves the previous checkpoint whole. Old checkpoints are renamed
aside before they are deleted, so a half-deleted one is never mistaken for a checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmstack.atomic import atomic_directory, atomic_write_text, fsync_dir, recover_directory
from lmstack.errors import LmstackError
from lmstack.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, check_model_dir, write_model_files
from lmstack.model.gpt import GPT
from lmstack.run_layout import checkpoints_root, step_dirs
from lmstack.tokenizer import Tokenizer

TRAIN_STATE_FILE = "train_state.pt"
BEST_LINK = "best"
BEST_INFO = "best.json"


class CheckpointSaveError(LmstackError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


def step_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_root(run_dir) / f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    return [(step, path) for step, path in step_dirs(run_dir)
            if all((path / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE, TRAIN_STATE_FILE))]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def clean_interrupted_writes(run_dir: Path) -> None:
    """Put back a checkpoint whose replacement was interrupted; drop half-written temporaries."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith(".") and path.name.endswith(".old"):
            recover_directory(root / path.name[1:-len(".old")])
    for path in root.iterdir():
        if path.name.startswith(".") and path.name.endswith((".tmp", ".deleting", ".old")):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, model: GPT, tokenizer: Tokenizer | None, config: dict[str, Any],
                    train_state: dict[str, Any], pause_s: float = 0.0) -> Path:
    """Write checkpoint `step` atomically; on failure raise CheckpointSaveError naming the intact one."""
    path = step_dir(run_dir, step)
    previous = latest_checkpoint(run_dir)
    try:
        with atomic_directory(path) as tmp:
            write_model_files(tmp, model, tokenizer, config)
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
            if pause_s:
                time.sleep(pause_s)  # test hook: widen the window a SIGKILL can land in
    except OSError as err:
        # strerror, not str(err): an OutputWriteError's text names the checkpoint again
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror or str(err)
        kept = f"the previous checkpoint '{previous}' is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointSaveError(
            f"could not save checkpoint '{path}': {reason}; {kept}. Free space in '{run_dir}' "
            f"(or point run_dir elsewhere) and re-run the same command to resume") from err
    return path


def load_train_state(path: Path) -> dict[str, Any]:
    # Our own file, holding numpy and Python RNG states that the weights-only unpickler refuses.
    try:
        return torch.load(path / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise LmstackError(f"'{path / TRAIN_STATE_FILE}' cannot be read ({reason}): the checkpoint is damaged; "
                           f"{delete_to_resume(path)}") from None


def delete_to_resume(path: Path) -> str:
    """The fix for a damaged checkpoint of a run: without it, the run resumes from the one before."""
    return f"delete '{path}' to resume from the checkpoint before it (or start over in a new run dir)"


def check_resume_point(path: Path) -> dict[str, Any]:
    """The checkpoint's config dict; a damaged checkpoint is refused before the run builds on it, saying how to
    resume from the one before."""
    try:
        return check_model_dir(path, check_names=False).config  # a LoRA run's weights hold its adapters too
    except CheckpointError as err:
        raise CheckpointError(f"{err}. This is the run's last checkpoint: {delete_to_resume(path)}") from None


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, never the best one."""
    best = best_checkpoint(run_dir)
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        if best is not None and path.resolve() == best.resolve():
            continue
        doomed = path.parent / f".{path.name}.deleting"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def best_checkpoint(run_dir: Path) -> Path | None:
    link = run_dir / BEST_LINK
    return link if link.is_dir() else None


def mark_best(run_dir: Path, checkpoint: Path, step: int, val_loss: float) -> None:
    """Point `run_dir/best` at `checkpoint` (a relative symlink, swapped in one rename)."""
    link = run_dir / BEST_LINK
    tmp_link = run_dir / f".{BEST_LINK}.tmp"
    tmp_link.unlink(missing_ok=True)
    os.symlink(checkpoint.relative_to(run_dir), tmp_link)
    os.replace(tmp_link, link)
    fsync_dir(run_dir)
    atomic_write_text(run_dir / BEST_INFO, json.dumps({"step": step, "val_loss": val_loss,
                                                       "checkpoint": str(checkpoint.relative_to(run_dir))}))
