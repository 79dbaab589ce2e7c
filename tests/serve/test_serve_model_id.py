"""The model id `lmstack serve` gives a checkpoint without --model-name: the dir's name as the user typed it."""

from __future__ import annotations

import httpx
from serve_helpers import make_checkpoint, serve_here

from lmstack.serve.commands import served_name


def test_the_model_id_is_the_name_given_not_the_symlinks_target(tmp_path, monkeypatch):
    # A run's `best` is a symlink to its best checkpoint: serving `runs/x/best` served `step_000200`, an id that
    # changed with every new best and was not the one README's commands use.
    run_dir = tmp_path / "run"
    make_checkpoint(run_dir / "checkpoints" / "step_000200")
    (run_dir / "best").symlink_to("checkpoints/step_000200")
    with serve_here(run_dir / "best", "--set", "engine.dtype=float32") as base:
        assert [model["id"] for model in httpx.get(f"{base}/v1/models").json()["data"]] == ["best"]

    # A path with no name of its own is served under the real dir's
    monkeypatch.chdir(run_dir / "checkpoints" / "step_000200")
    assert served_name(".") == "step_000200" and served_name("../..") == "run"
