"""The TensorBoard and W&B writers are refused in one line, with no run dir left for the dashboard to list, when
their package is missing or, for W&B, when wandb.init fails (no API key: nobody can log in here). The W&B cases run
where wandb is importable (e.g. `pip install --target DIR wandb` and PYTHONPATH=DIR), and skip elsewhere."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from cli_testing import one_line_error

from train_helpers import REPO, lmstack_command, make_data, subprocess_env, tiny_overrides

WANDB_INSTALLED = importlib.util.find_spec("wandb") is not None
needs_wandb = pytest.mark.skipif(not WANDB_INSTALLED, reason="wandb is not installed")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("writers") / "data", train_tokens=5_000)


def train_args(data_dir, run_dir, writer: str) -> list[str]:
    overrides = tiny_overrides(data_dir, run_dir, max_steps=2, eval_every=0, **{writer: True})
    return ["train", *[a for o in overrides for a in ("--set", o)]]


def train(data_dir, run_dir, writer: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A new process for each W&B case: wandb keeps process-wide state (the settings of its first setup, read from
    the environment, and its service process), so each case's environment needs a process of its own."""
    return subprocess.run(lmstack_command(*train_args(data_dir, run_dir, writer)), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("writer", ["tensorboard", "wandb"])
def test_a_writer_whose_package_is_missing_is_refused_before_the_run_dir_is_made(cli, data_dir, tmp_path, writer):
    if importlib.util.find_spec(writer) is not None:
        pytest.skip(f"{writer} is installed")
    refused = cli(*train_args(data_dir, tmp_path / "runs" / "x", writer))
    assert one_line_error(refused, "train").endswith(f"{writer}=true but the {writer} package is not installed; "
                                                     f"`pip install {writer}` or --set {writer}=false")
    assert not (tmp_path / "runs").exists()


def logged_out_env(tmp_path, **extra: str) -> dict[str, str]:
    """No API key anywhere wandb looks (the environment, ~/.netrc, its settings), and no WANDB_MODE to bypass it."""
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(tmp_path / "home"), **extra}


@needs_wandb
def test_wandb_without_an_api_key_is_refused_in_one_line_and_its_fix_works(data_dir, tmp_path):
    refused = train(data_dir, tmp_path / "runs" / "x", "wandb", logged_out_env(tmp_path))
    assert one_line_error(refused, "train").endswith(
        "wandb=true but wandb has no API key: run `wandb login`, or set WANDB_MODE=offline, or --set wandb=false")
    assert not (tmp_path / "runs").exists()

    offline = train(data_dir, tmp_path / "runs" / "x", "wandb", logged_out_env(tmp_path, WANDB_MODE="offline"))
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert list((tmp_path / "runs" / "x" / "wandb").glob("offline-run-*"))


@needs_wandb
def test_wandb_that_cannot_reach_its_server_is_refused_and_takes_its_folder_away(data_dir, tmp_path):
    # wandb writes its run folder before it finds the server unreachable; port 9 (discard) has no listener here
    env = logged_out_env(tmp_path, WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="5")
    refused = train(data_dir, tmp_path / "runs" / "x", "wandb", env)
    line = one_line_error(refused, "train", alone=False)
    assert "wandb=true but wandb.init failed (" in line and line.endswith("; fix that, or set WANDB_MODE=offline, "
                                                                          "or --set wandb=false")
    assert not (tmp_path / "runs").exists()


@needs_wandb
def test_a_wandb_setting_that_wandb_refuses_is_one_line_naming_it(data_dir, tmp_path):
    """WANDB_MODE=bogus was pydantic's ValidationError, a traceback of 40 lines."""
    refused = train(data_dir, tmp_path / "runs" / "x", "wandb", logged_out_env(tmp_path, WANDB_MODE="bogus"))
    line = one_line_error(refused, "train")
    assert line.startswith("lmstack train: error: wandb=true but wandb refuses its settings (mode 'bogus': Input "
                           "should be ")
    assert line.endswith("; fix the WANDB_* environment variable that sets it (WANDB_MODE=offline logs without a "
                         "server), or --set wandb=false")
    assert not (tmp_path / "runs").exists()
