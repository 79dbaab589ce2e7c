"""Guards: a NaN step is skipped (or rolled back) and the run goes on; spikes are judged against the median;
an unwritable run dir fails before any training."""

from __future__ import annotations

import math
import time

import pytest
import torch

from lmstack.config import load_config
from lmstack.model.checkpoint import load_model_dir
from lmstack.train.config import GuardConfig, TrainConfig
from lmstack.train.guards import LossGuard, TrainingDiverged
from lmstack.train.loop import train
from lmstack.train.metrics import read_metrics
from train_helpers import make_data, tiny_overrides


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("guards") / "data")


def events(run_dir, name):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == name]


@pytest.mark.parametrize("action", ["skip", "rollback"])
def test_planted_nan_step_is_skipped_and_training_continues(data_dir, tmp_path, action):
    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, overrides=tiny_overrides(
        data_dir, run_dir, max_steps=20, debug_nan_at_step=12, **{"guard.action": action}))
    result = train(cfg)
    assert result.step == 20
    [bad] = events(run_dir, action)
    assert bad["step"] == (10 if action == "rollback" else 12) and "nan" in bad["reason"]
    if action == "rollback":
        assert bad["bad_step"] == 12 and bad["to"].endswith("step_000010")
    model, _, _ = load_model_dir(result.last_checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_spike_over_the_median_is_flagged_and_normal_losses_pass():
    guard = LossGuard(GuardConfig(spike_factor=3.0, window=10, min_history=5))
    for loss in [5.0, 4.0, 3.0, 2.9, 2.8]:
        assert guard.check(loss, 1.0) is None
        guard.accept(loss)
    assert guard.check(2.7, 1.0) is None
    assert "median 3.0000" in guard.check(9.5, 1.0)  # median of the last five is 3.0; 9.5 > 3 x 3.0
    assert "gradient norm" in guard.check(2.5, float("inf"))


def test_too_many_bad_steps_in_a_row_stop_the_run():
    guard = LossGuard(GuardConfig(max_bad_steps=3))
    guard.reject(1, "loss is nan")
    guard.reject(2, "loss is nan")
    with pytest.raises(TrainingDiverged, match="3 bad steps in a row"):
        guard.reject(3, "loss is nan")


def test_unwritable_run_dir_fails_at_start_with_a_clear_error(cli, data_dir, tmp_path):
    # Tests run as root, and root ignores permission bits, so chmod cannot make a dir unwritable here.
    # A path *under a regular file* can be created by nobody, root included: the OS says ENOTDIR.
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    run_dir = blocker / "run"
    start = time.monotonic()
    result = cli("train", *[a for o in tiny_overrides(data_dir, run_dir, max_steps=100_000) for a in ("--set", o)])
    assert result.returncode == 2
    assert f"run dir '{run_dir}' is not writable" in result.stderr and "--set run_dir=" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - start < 60  # it failed at start, not after 100,000 steps
