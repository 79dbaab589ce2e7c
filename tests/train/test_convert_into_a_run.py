"""`lmstack export` and `lmstack import` aimed at a training run: the run dir has a config.json at its top, so it
passed for an earlier output and was deleted whole, and so was a run that held the model being exported. Each is
refused now before any work, and every byte of the run stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_testing import one_line_error
from train_helpers import make_data, tiny_overrides

from lmstack.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run dir written by the real trainer: checkpoints/, best -> checkpoints/step_000002, metrics.jsonl, ..."""
    root = tmp_path_factory.mktemp("convert")
    overrides = tiny_overrides(make_data(root / "data"), root / "run", max_steps=2, eval_every=0, checkpoint_every=1)
    assert main(["train", *[arg for override in overrides for arg in ("--set", override)]]) == 0
    return root / "run"


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every file's bytes, link's target and folder under `directory`, by relative path (links not followed)."""
    found: dict[str, bytes | str] = {}
    for parent, folders, files in os.walk(directory):
        for name in folders + files:
            path = Path(parent, name)
            key = str(path.relative_to(directory))
            found[key] = ("link to " + os.readlink(path) if path.is_symlink() else
                          "folder" if path.is_dir() else path.read_bytes())
    return found


def refusal(cli, command: str, *args) -> str:
    return one_line_error(cli(command, *args), command)


def converted(cli, *args) -> None:
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_run_dir_survives_an_export_or_import_into_it_or_its_checkpoints(cli, run, tmp_path):
    hf = tmp_path / "hf"
    converted(cli, "export", "--format", "hf", str(run / "best"), str(hf))
    before = snapshot(run)
    assert {"best", "best.json", "config.json", "metrics.jsonl", "run.log"} <= before.keys()

    unexpected = [key for key in before if "/" not in key and key != "config.json"]  # an export writes config.json
    says = (f"output '{run}' holds 'best', 'best.json' and {len(unexpected) - 2} more, which import or export never "
            "writes; choose a new or empty directory (the output is replaced as a whole)")
    assert refusal(cli, "import", "--from", "hf", hf, run).endswith(says)
    converted(cli, "import", "--from", "hf", str(hf), str(tmp_path / "imported"))
    assert refusal(cli, "export", "--format", "hf", tmp_path / "imported", run).endswith(says)

    checkpoint = run / "checkpoints" / "step_000002"
    refused = refusal(cli, "import", "--from", "hf", hf, checkpoint)
    assert "holds 'train_state.pt', which import or export never writes" in refused
    model_of_the_run = ("is a model of the training run '{}'; choose a new or empty directory (the output is replaced "
                        "as a whole)").format(run)
    assert refusal(cli, "import", "--from", "hf", hf, run / "best").endswith(
        f"output '{run / 'best'}' {model_of_the_run}")
    assert snapshot(run) == before
    # A fine-tuned `final` holds only model files, as an earlier output does; a new dir in a run is fine, but once
    # there, it is the run's.
    converted(cli, "import", "--from", "hf", str(hf), str(run / "final"))
    final = snapshot(run / "final")
    assert refusal(cli, "import", "--from", "hf", hf, run / "final").endswith(
        f"output '{run / 'final'}' {model_of_the_run}")
    assert snapshot(run / "final") == final


def test_the_model_being_converted_is_neither_inside_the_output_nor_holding_it(cli, run, tmp_path):
    before = snapshot(run)
    assert refusal(cli, "export", "--format", "hf", run / "best", run).endswith(
        f"output '{run}' holds the model being converted ('{run / 'best'}'); choose a new or empty directory "
        "outside it")
    inside = run / "best" / "hf"
    assert refusal(cli, "export", "--format", "hf", run / "best", inside).endswith(
        f"output '{inside}' is inside the model being converted ('{run / 'best'}'); choose a new or empty directory "
        "outside it")
    assert snapshot(run) == before

    for _ in range(2):  # an earlier export is what may be replaced, and an earlier import
        converted(cli, "export", "--format", "hf", str(run / "best"), str(tmp_path / "hf"))
        converted(cli, "import", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert snapshot(run) == before
