"""Resume is exact: a run killed with SIGKILL (between steps or inside a checkpoint write) and re-run ends
with weights bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmstack.model.checkpoint import load_model_dir
from lmstack.train.checkpoint import latest_checkpoint

from train_helpers import REPO, lmstack_command, make_data, run_lmstack, subprocess_env, tiny_overrides

STEPS = 40


def train_args(data_dir: Path, run_dir: Path) -> list[str]:
    # The pause inside each checkpoint write gives SIGKILL a window to land in mid-write.
    overrides = tiny_overrides(data_dir, run_dir, max_steps=STEPS, debug_checkpoint_delay=0.15)
    return ["train"] + [arg for o in overrides for arg in ("--set", o)]


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def writing_checkpoint(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(p.name.endswith(".tmp") for p in root.iterdir())


def kill_when(args: list[str], condition, timeout: float = 60) -> bool:
    """Start `lmstack train`, SIGKILL it once `condition()` holds; False if it finished first."""
    process = subprocess.Popen(lmstack_command(*args), env=subprocess_env(), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if condition():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{STEPS:06d}" / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("resume")
    data_dir = make_data(root / "data")
    run_lmstack(*train_args(data_dir, root / "straight"))
    return data_dir, final_weights(root / "straight")


def kill_and_resume(data_dir: Path, run_dir: Path, condition) -> None:
    args = train_args(data_dir, run_dir)
    assert kill_when(args, condition), "the run finished before it could be killed"
    assert last_step(run_dir) < STEPS
    run_lmstack(*args)  # the same command again: resumes from the last checkpoint


def test_resume_after_sigkill_mid_run_is_bit_identical(reference, tmp_path):
    data_dir, expected = reference
    run_dir = tmp_path / "killed"
    kill_and_resume(data_dir, run_dir, lambda: last_step(run_dir) >= 13)
    assert_bit_identical(final_weights(run_dir), expected)
    log = (run_dir / "run.log").read_text()
    assert "resuming from" in log and "git_sha" in log


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_resume_after_sigkill_at_random_points(reference, tmp_path, trial):
    data_dir, expected = reference
    run_dir = tmp_path / "killed"
    rng = random.Random(trial)
    kill_at = rng.randrange(2, STEPS - 2)
    if trial % 2:  # odd trials: kill inside the first checkpoint write at or after kill_at
        kill_and_resume(data_dir, run_dir, lambda: last_step(run_dir) >= kill_at and writing_checkpoint(run_dir))
    else:
        kill_and_resume(data_dir, run_dir, lambda: last_step(run_dir) >= kill_at)
    # A second kill of the resumed run, then a third start, must still land on the same weights.
    args = train_args(data_dir, run_dir)
    second = min(STEPS - 1, kill_at + rng.randrange(1, 10))
    if kill_when(args, lambda: last_step(run_dir) >= second):
        run_lmstack(*args)
    assert_bit_identical(final_weights(run_dir), expected)


def test_kill_inside_checkpoint_write_keeps_previous_checkpoint(reference, tmp_path):
    data_dir, expected = reference
    run_dir = tmp_path / "killed"
    args = train_args(data_dir, run_dir)
    assert kill_when(args, lambda: last_step(run_dir) >= 12 and writing_checkpoint(run_dir))
    assert writing_checkpoint(run_dir), "the kill should have landed inside a checkpoint write"
    previous = latest_checkpoint(run_dir)
    assert previous is not None and previous.name == "step_000010"
    load_model_dir(previous)  # the previous checkpoint is whole and loads
    run_lmstack(*args)
    assert_bit_identical(final_weights(run_dir), expected)
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"half-written checkpoint dirs left behind: {leftovers}"
