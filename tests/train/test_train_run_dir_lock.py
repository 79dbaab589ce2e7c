"""One writer per run dir: a second `lmstack train` of a run that a live process still trains is refused, naming that
process, and leaves the run as it was; once the first is gone (even by SIGKILL, which no cleanup survives) the same
command resumes. Under torchrun the process that counts is rank 0, the one that writes: the workers of a torchrun
whose launcher was SIGKILLed train on, and hold the run, until they end."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_testing import one_line_error

from lmstack.config import load_config
from lmstack.errors import LmstackError
from lmstack.run_owner import Owner
from lmstack.train.checkpoint import latest_checkpoint
from lmstack.train.config import TrainConfig
from lmstack.train.loop import train
from lmstack.train.metrics import read_metrics
from lmstack.train.rundir_lock import LOCK_FILE, RunDirLock
from train_helpers import REPO, lmstack_command, make_data, run_lmstack, subprocess_env, tiny_overrides

LONG = 100_000  # steps: a run that trains until the test ends it


def train_args(data_dir: Path, run_dir: Path, max_steps: int) -> list[str]:
    overrides = tiny_overrides(data_dir, run_dir, max_steps=max_steps, eval_every=0, checkpoint_every=5)
    return ["train", *[a for o in overrides for a in ("--set", o)]]


@contextlib.contextmanager
def started(command: list[str], run_dir: Path):
    """`command` running, once it has saved a checkpoint (which a second writer would resume from); SIGKILLed after."""
    process = subprocess.Popen(command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(run_dir) is None:
            assert process.poll() is None and time.monotonic() < deadline, "the first run saved no checkpoint"
            time.sleep(0.1)
        yield process
    finally:
        process.kill()
        process.wait()


def next_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step_")) + 1


def starts(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "start"]


def refusal(pid: int) -> str:
    return f"is being executed by process {pid}; wait for it to finish, or stop it (kill {pid}) and resume again"


def test_a_second_trainer_is_refused_until_the_first_is_gone(tmp_path):
    data_dir, run_dir = make_data(tmp_path / "data"), tmp_path / "run"
    with started(lmstack_command(*train_args(data_dir, run_dir, LONG)), run_dir) as first:
        second = run_lmstack(*train_args(data_dir, run_dir, LONG), check=False)
        assert one_line_error(second, "train").endswith(f"run dir '{run_dir}' {refusal(first.pid)}")
        assert len(starts(run_dir)) == 1  # the refused start wrote nothing
    # SIGKILLed: the kernel dropped its lock; the same command resumes from its last checkpoint
    resume_from = latest_checkpoint(run_dir)
    run_lmstack(*train_args(data_dir, run_dir, next_step(resume_from)))
    assert starts(run_dir)[-1]["resumed_from"] == str(resume_from)


def test_a_run_that_ended_lets_go_of_its_run_dir(tmp_path):
    """In one process too, where no process exit drops the lock: a notebook training the same run twice."""
    data_dir, run_dir = make_data(tmp_path / "data"), tmp_path / "run"
    for steps in (2, 3):
        cfg = load_config(TrainConfig, None, tiny_overrides(data_dir, run_dir, max_steps=steps, eval_every=0))
        assert train(cfg).step == steps
    assert not (run_dir / ".lock").exists()  # nor does it leave its lock file behind


def children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent_of(p) == pid]


def parent_of(proc: Path) -> int | None:
    with contextlib.suppress(OSError):
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def rank_of(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.removeprefix(b"RANK=").decode() for v in environ if v.startswith(b"RANK="))


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmstack.cli",
            *args]


@pytest.mark.slow  # 2 processes under torchrun, ~13 s; the lock itself is checked by the test above
def test_the_workers_of_a_killed_torchrun_hold_the_run_until_they_end(tmp_path):
    data_dir, run_dir = make_data(tmp_path / "data"), tmp_path / "run"
    command = torchrun(*train_args(data_dir, run_dir, LONG))
    with started(command, run_dir) as launcher:
        workers = {rank_of(pid): pid for pid in children(launcher.pid)}
        launcher.kill()  # the workers are orphaned, and train on
        launcher.wait()
        try:
            rerun = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
                                   timeout=300)
        finally:
            for pid in workers.values():
                os.kill(pid, signal.SIGKILL)
    assert rerun.returncode == 1 and f"run dir '{run_dir}' {refusal(workers['0'])}" in rerun.stderr, rerun.stderr
    resume_from = latest_checkpoint(run_dir)
    rerun = subprocess.run(torchrun(*train_args(data_dir, run_dir, next_step(resume_from))), env=subprocess_env(),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert starts(run_dir)[-1]["resumed_from"] == str(resume_from)


def test_a_holder_on_another_host_is_named_with_its_host_and_no_kill(tmp_path):
    """A run dir on a file system that hosts share: the pid alone named a process that is not on this machine."""
    holder = Owner(4242, "other-host", "boot:123")
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps(dataclasses.asdict(holder)))
    with open(lock_file) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the other host's trainer holds it
        with pytest.raises(LmstackError) as refused:
            RunDirLock(tmp_path).acquire()
    assert str(refused.value) == (f"run dir '{tmp_path}' is being executed by process 4242 on host 'other-host'; "
                                  "wait for it to finish, or stop it there and resume again")
