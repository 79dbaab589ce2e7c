"""Readers for training run dirs (`runs/NAME/`): the list under a root, one run's config and samples,
and its metrics read incrementally so a page can follow a run while it trains.

The trainer writes `metrics.jsonl` (one record a line), `config.json` and `run.log` (which carries the
samples drawn at each eval); nothing here writes to a run dir.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from lmstack.errors import LmstackError
from lmstack.run_layout import METRICS_FILE, RUN_CONFIG, RUN_LOG, is_run_dir, step_dirs

# A run whose metrics changed this recently is shown as live (the trainer writes every step).
LIVE_WINDOW_S = 30.0
EVAL_LINE = re.compile(r"^step (\d+): val loss")
SAMPLE_LINE = re.compile(r"^  sample: (.*)$")


class TrainingRunNotFound(LmstackError):
    """A run name that is not a run dir under the dashboard's runs root."""


def is_nested_run_dir(path: Path) -> bool:
    """A run inside a run dir (post-training's `--run-dir`, e.g. the demo's runs/quickstart/sft): it has metrics.
    A config.json alone is not enough there: every checkpoint dir has one."""
    return path.is_dir() and (path / METRICS_FILE).is_file()


# Plain folders under the root that group runs (runs/ablations/lr-3e-4), searched this many levels down: deeper, the
# walk of a root with a data dir or a home dir in it would take long, for runs nobody keeps there.
GROUP_DEPTH = 3


def is_group_dir(path: Path) -> bool:
    """A folder that may hold runs: not a run, not hidden, not a link (a link round to a folder above it would be
    walked round and round)."""
    return path.is_dir() and not path.is_symlink() and not path.name.startswith(".") and not is_run_dir(path)


def resolve_run(root: Path, name: str) -> Path:
    """The run dir `root/name` (name "RUN", "GROUP/RUN", "RUN/NESTED", "RUN/NESTED/NESTED", ...), refusing names
    that would leave the root or name a dir `list_runs` does not list."""
    root = root.resolve()
    path = (root / name).resolve()
    parts = path.relative_to(root).parts if path.is_relative_to(root) else ()
    dirs = [root.joinpath(*parts[:depth]) for depth in range(1, len(parts) + 1)]
    first_run = next((index for index, folder in enumerate(dirs) if is_run_dir(folder)), None)
    if first_run is None or first_run > GROUP_DEPTH or not all(map(is_group_dir, dirs[:first_run])) \
            or not all(is_nested_run_dir(nested) for nested in dirs[first_run + 1:]):
        raise TrainingRunNotFound(f"no training run '{name}' under '{root}'; start the dashboard with "
                                  f"--runs-root pointing at the folder that holds your run dirs")
    return path


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run dir under `root` (directly, or in plain folders that group runs, down to GROUP_DEPTH of them), and
    the runs nested inside those at any depth, most recently updated first; a run is named by its path from the
    root ("RUN", "GROUP/RUN", "RUN/NESTED")."""
    if not root.is_dir():
        return []
    paths, groups, unsearched = [], [(root, 0)], []
    while groups:
        group, depth = groups.pop()
        for child in group.iterdir():
            if is_run_dir(child):
                unsearched.append(child)
            elif depth < GROUP_DEPTH and is_group_dir(child):
                groups.append((child, depth + 1))
    while unsearched:
        path = unsearched.pop()
        paths.append(path)
        # Only real dirs: a link back to a run above it would be walked round and round.
        unsearched += [child for child in path.iterdir() if is_nested_run_dir(child) and not child.is_symlink()]
    runs = [run_summary(path, path.relative_to(root).as_posix()) for path in paths]
    return sorted(runs, key=lambda r: r["updated_at"], reverse=True)


def run_summary(path: Path, name: str) -> dict[str, Any]:
    metrics = path / METRICS_FILE
    updated = max((p.stat().st_mtime for p in (metrics, path / RUN_CONFIG) if p.is_file()), default=0.0)
    last = _last_train_record(metrics)
    return {"name": name, "updated_at": updated, "live": time.time() - updated < LIVE_WINDOW_S,
            "step": last.get("step"), "loss": last.get("loss")}


def _last_train_record(metrics: Path, tail_bytes: int = 8192) -> dict[str, Any]:
    """The last training-step record, read from the file's tail (metrics files grow without bound)."""
    if not metrics.is_file():
        return {}
    with open(metrics, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - tail_bytes))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "loss" in record and "event" not in record:
            return record
    return {}


def run_detail(root: Path, name: str) -> dict[str, Any]:
    path = resolve_run(root, name)
    config_file = path / RUN_CONFIG
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    return {**run_summary(path, name), "path": str(path), "config": config, "samples": read_samples(path / RUN_LOG),
            "checkpoints": model_dirs(path)}


def model_dirs(run_dir: Path) -> list[str]:
    """The run's models: its step checkpoints, then `best` and a post-training's merged `final` (not every folder:
    a nested run, say)."""
    named = [name for name in ("best", "final") if (run_dir / name / RUN_CONFIG).is_file()]
    return [p.name for _, p in step_dirs(run_dir)] + named


def read_samples(run_log: Path) -> list[dict[str, Any]]:
    """[{step, text}] for every sample the trainer logged after an eval (newest last)."""
    if not run_log.is_file():
        return []
    samples, step = [], None
    for line in run_log.read_text(errors="replace").splitlines():
        if match := EVAL_LINE.match(line):
            step = int(match.group(1))
        elif (match := SAMPLE_LINE.match(line)) and step is not None:
            try:
                text = ast.literal_eval(match.group(1))  # the trainer logs repr(text)
            except (ValueError, SyntaxError):
                continue
            samples.append({"step": step, "text": str(text)})
    return samples


def read_metrics_from(root: Path, name: str, offset: int, file: str | None = None,
                      max_bytes: int = 4 << 20) -> dict[str, Any]:
    """Whole metric records from byte `offset` on, the offset to ask from next time, and the file's
    identity (`file`: device and inode) to pass back with it.

    A line still being written has no newline yet: it is left for the next call. When the file is no
    longer the one `offset` was read from (the trainer replaces metrics.jsonl atomically on resume),
    or it was truncated below `offset`, the reader starts again from 0 (`reset`).
    """
    metrics = resolve_run(root, name) / METRICS_FILE
    if not metrics.is_file():
        return {"records": [], "offset": 0, "file": None, "reset": offset != 0}
    with open(metrics, "rb") as f:
        st = os.fstat(f.fileno())  # of the file actually read, even if it is replaced meanwhile
        identity = f"{st.st_dev}:{st.st_ino}"
        reset = offset > st.st_size or (offset > 0 and file is not None and file != identity)
        start = 0 if reset else offset
        f.seek(start)
        chunk = f.read(max_bytes)
    whole = chunk[: chunk.rfind(b"\n") + 1]
    records = []
    for line in whole.decode("utf-8", "replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return {"records": records, "offset": start + len(whole), "file": identity, "reset": reset}
