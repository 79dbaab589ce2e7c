"""Checkpoint writer: a really full disk (a tiny tmpfs) leaves the previous checkpoint whole and says so;
retention keeps the last K plus the best."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from lmstack.model.checkpoint import load_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.train import checkpoint as ckpt

TINY = ModelConfig(arch="llama", vocab_size=320, block_size=32, n_layer=2, n_head=2, n_embd=32)


def save(run_dir: Path, step: int, model) -> Path:
    state = {"step": step, "optimizer": {k: torch.randn_like(v) for k, v in model.state_dict().items()}}
    return ckpt.save_checkpoint(run_dir, step, model, None, {"run_name": "t"}, state)


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str):
    """A real filesystem of `size` bytes (tmpfs), so ENOSPC comes from the kernel, not from a mock."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Write zeros until the filesystem refuses."""
    with open(directory / "filler", "wb") as f:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())


def test_full_disk_while_saving_keeps_previous_checkpoint_and_says_so(tmp_path):
    model = build_model(TINY, seed=0)
    with tiny_filesystem(tmp_path / "disk", "4m") as disk:
        run_dir = disk / "run"
        first = save(run_dir, 10, model)
        fill(disk)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        with pytest.raises(ckpt.CheckpointSaveError) as caught:
            save(run_dir, 20, model)
        message = str(caught.value)
        assert "the disk is full" in message and f"the previous checkpoint '{first}' is intact" in message
        assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [10]
        assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
        loaded, _, _ = load_model_dir(first)
        reference = build_model(TINY, seed=0)
        for (name, a), b in zip(loaded.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(a, b), name
        assert ckpt.load_train_state(first)["step"] == 10


def test_retention_keeps_last_k_and_the_best(tmp_path):
    model = build_model(TINY, seed=0)
    run_dir = tmp_path / "run"
    for step in (1, 2, 3, 4, 5):
        path = save(run_dir, step, model)
        if step == 2:
            ckpt.mark_best(run_dir, path, step, val_loss=1.5)
        ckpt.prune_checkpoints(run_dir, keep_last=2)
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [2, 4, 5]
    assert ckpt.best_checkpoint(run_dir).resolve() == ckpt.step_dir(run_dir, 2).resolve()
    load_model_dir(run_dir / "best")  # the pointer is a usable checkpoint dir
    assert ckpt.latest_checkpoint(run_dir) == ckpt.step_dir(run_dir, 5)


def test_interrupted_swap_is_put_back(tmp_path):
    model = build_model(TINY, seed=0)
    run_dir = tmp_path / "run"
    path = save(run_dir, 3, model)
    os.replace(path, path.parent / f".{path.name}.old")  # a crash between atomic_directory's two renames
    ckpt.clean_interrupted_writes(run_dir)
    assert ckpt.latest_checkpoint(run_dir) == path
