"""The run dir: checked to be new, empty or a run (never another tool's folder) and writable before any work,
removed again if the start fails and leaves it empty, and `run.log` with what produced the run at its top."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

from lmstack.atomic import atomic_write_text
from lmstack.errors import LmstackError, quoted_few
from lmstack.run_layout import RUN_CONFIG, RUN_LOG, is_run_dir
from lmstack.train.rundir_lock import LOCK_FILE

WRITE_PROBE = ".write_probe."


class RunDirError(LmstackError):
    """The run dir cannot be created or written; the message names it and the fix."""


def refuse_foreign_dir(run_dir: Path, other: str, inputs: tuple[Path, ...] = ()) -> None:
    """A run writes config.json, checkpoints/ and more into its dir: an existing folder that holds anything and is
    no run dir (an HF export, the checkpoint being fine-tuned, a folder of yours) would have its files overwritten
    and mixed with the run's. New and empty dirs, and runs to resume, pass; so does a dir holding only what a
    start killed before its first log line leaves (its lock file, a write probe), and the run's own `inputs` (the
    quickstart prepares its data in runs/quickstart/data before it trains there). `other` names the option to use."""
    if not run_dir.is_dir() or is_run_dir(run_dir):
        return
    mine = [path.resolve() for path in inputs]
    held = sorted(child.name for child in run_dir.iterdir()
                  if child.name != LOCK_FILE and not child.name.startswith(WRITE_PROBE)
                  and not any(path == child.resolve() or child.resolve() in path.parents for path in mine))
    if held:
        raise RunDirError(f"run dir '{run_dir}' already holds {quoted_few(held)} and is not a training run dir (no "
                          f"metrics.jsonl or run.log), so the run would overwrite what is there; choose a new or "
                          f"empty dir with {other}")


def ensure_writable(run_dir: Path, other: str) -> None:
    """Create `run_dir` and prove it writable with a real write (a permission check is not enough:
    root passes every permission check, yet a read-only mount or a full disk still refuses)."""
    fix = f"choose another with {other}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f"{WRITE_PROBE}{uuid.uuid4().hex}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run dir '{run_dir}' is not writable ({err.strerror or err}); {fix}") from None


@contextlib.contextmanager
def removed_if_left_empty(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """If the body fails, remove the dirs it created for `run_dir` (it and any missing parents) while they are
    still empty. What existed before is never touched, and rmdir refuses a dir that holds anything."""
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()] if enabled else []  # deepest first
    try:
        yield
    except BaseException:
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def write_run_header(run_dir: Path, header: dict[str, Any], config: dict[str, Any]) -> None:
    """Append the code version, environment and config of this (re)start to run.log; the config also
    goes to the run dir's config.json."""
    config_text = json.dumps(config, indent=2)
    with open(run_dir / RUN_LOG, "a") as log:
        log.write(f"==== start {json.dumps(header)}\n{config_text}\n")
    atomic_write_text(run_dir / RUN_CONFIG, config_text)


def append_log(run_dir: Path, line: str) -> None:
    with open(run_dir / RUN_LOG, "a") as log:
        log.write(line + "\n")
