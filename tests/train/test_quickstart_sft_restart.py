"""A quickstart re-run with more --steps fine-tunes a later pretraining checkpoint: SFT refuses to resume a run from
another start, so the demo's own SFT run is set aside (kept) and a new one starts, instead of the demo stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmstack.errors import LmstackError
from lmstack.train.rundir_lock import RunDirLock
from lmstack.train.sft_stage import set_aside_if_from_another_start


def write_sft_run(sft_dir, init_from):
    sft_dir.mkdir(parents=True)
    (sft_dir / "config.json").write_text(json.dumps({"init_from": str(init_from)}))
    (sft_dir / "metrics.jsonl").write_text("{}\n")


def test_an_sft_run_from_an_earlier_checkpoint_is_kept_aside_and_one_from_the_same_is_resumed(tmp_path):
    checkpoints = tmp_path / "quickstart" / "checkpoints"
    sft = tmp_path / "quickstart" / "sft"
    write_sft_run(sft, checkpoints / "step_000050")
    assert set_aside_if_from_another_start(sft, checkpoints / "step_000050") is None  # the same start: resumed
    assert sft.is_dir()
    aside = set_aside_if_from_another_start(sft, checkpoints / "step_000360")
    assert aside == tmp_path / "quickstart" / "sft-from-step_000050" and not sft.exists()
    assert (aside / "metrics.jsonl").read_text() == "{}\n"  # kept whole
    write_sft_run(sft, checkpoints / "step_000050")  # a name already taken gets a number
    assert set_aside_if_from_another_start(sft, checkpoints / "step_000360").name == "sft-from-step_000050-2"
    assert set_aside_if_from_another_start(tmp_path / "none", checkpoints / "step_000360") is None


def test_the_run_is_set_aside_under_its_lock_which_leaves_with_it(tmp_path, monkeypatch):
    """A quickstart starting while the run is moved must be refused: it would train in the dir being moved."""
    checkpoints, sft = tmp_path / "checkpoints", tmp_path / "sft"
    write_sft_run(sft, checkpoints / "step_000050")
    refused_during_rename = []
    rename = Path.rename

    def rename_while_another_starts(path, target):
        with pytest.raises(LmstackError) as refused:
            RunDirLock(sft).acquire()
        refused_during_rename.append(refused)
        return rename(path, target)

    monkeypatch.setattr(Path, "rename", rename_while_another_starts)
    aside = set_aside_if_from_another_start(sft, checkpoints / "step_000360")
    assert refused_during_rename and sorted(p.name for p in aside.iterdir()) == ["config.json", "metrics.jsonl"]
