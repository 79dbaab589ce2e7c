"""Mixed precision on CPU: bf16 autocast trains; fp16 goes through the loss scaler, whose state is checkpointed."""

from __future__ import annotations

import math

import pytest

from lmstack.config import load_config
from lmstack.train.checkpoint import load_train_state
from lmstack.train.config import TrainConfig
from lmstack.train.loop import train
from lmstack.train.metrics import read_metrics
from train_helpers import make_data, tiny_overrides


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("precision") / "data")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_dtypes_train(data_dir, tmp_path, dtype):
    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, overrides=tiny_overrides(data_dir, run_dir, max_steps=15, eval_every=0,
                                                            checkpoint_every=0, dtype=dtype))
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 15 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    scaler = load_train_state(result.last_checkpoint)["scaler"]
    assert bool(scaler) == (dtype == "float16")  # the fp16 loss scale resumes where it was
