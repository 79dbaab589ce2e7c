"""DDP: `torchrun --nproc_per_node=2` (gloo) follows the loss curve of 1 process with 2 micro-batches."""

from __future__ import annotations

import subprocess
import sys

from lmstack.train.metrics import read_metrics
from train_helpers import REPO, make_data, run_lmstack, subprocess_env, tiny_overrides

STEPS = 10


def train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "event" not in r]


def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path):
    data_dir = make_data(tmp_path / "data")
    # Same global batch either way: 2 x 4 sequences x 32 tokens.
    common = dict(max_steps=STEPS, eval_every=0, checkpoint_every=0, tokens_per_step=2 * 4 * 32)
    one = tiny_overrides(data_dir, tmp_path / "one", **common)
    run_lmstack("train", *[a for o in one for a in ("--set", o)])

    two = tiny_overrides(data_dir, tmp_path / "two", **common)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "lmstack.cli", "train", *[a for o in two for a in ("--set", o)]]
    result = subprocess.run(torchrun, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    single, ddp = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(single) == len(ddp) == STEPS
    for step, (a, b) in enumerate(zip(single, ddp), start=1):
        assert abs(a - b) < 1e-5, f"step {step}: 1 process {a} vs 2 processes {b}"
    # Only rank 0 writes: one start record, one checkpoint.
    starts = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == [f"step_{STEPS:06d}"]
