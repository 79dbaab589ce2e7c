"""What marks a training run dir (`runs/NAME/`): the files the trainer writes at its top, and the test for one.

Here, beneath every layer, because more than the trainer needs to know a run dir when it sees one: the
dashboard lists them, and `import` / `export` must never replace one (or a model inside one) with their output.
"""

from __future__ import annotations

import re
from pathlib import Path

RUN_LOG = "run.log"  # started before the first step
RUN_CONFIG = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"  # step_NNNNNN/ checkpoints, beside the run's `best` (and a post-training's `final`)
STEP_DIR = re.compile(r"^step_(\d+)$")


def is_run_dir(path: Path) -> bool:
    """A run dir has metrics, or the log the trainer starts before its first step. Not a config.json alone: a model
    dir has one too (an HF export or an import put under the runs root is not a run)."""
    return path.is_dir() and ((path / METRICS_FILE).is_file() or (path / RUN_LOG).is_file())


def checkpoints_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIR


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's step_NNNNNN dirs by their names, oldest first (the trainer keeps those its checkpoints complete)."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    return sorted((int(match.group(1)), path) for path in root.iterdir() if (match := STEP_DIR.match(path.name)))
