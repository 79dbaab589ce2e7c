"""What a start refuses before it makes or touches its run dir: a folder that is no run (an HF export), and config
values out of range (nan, inf, a negative seed, a dropout over 1)."""

from __future__ import annotations

import math

import pytest
from cli_testing import one_line_error

from lmstack.config import ConfigError, load_config
from lmstack.train.config import TrainConfig
from lmstack.train.rundir import RunDirError, refuse_foreign_dir


def test_a_folder_that_is_no_run_dir_is_refused_and_left_as_it_was(cli, tmp_path):
    """`--set run_dir=` an HF export wrote the run's config.json over the model's and nested checkpoints/ in it."""
    export = tmp_path / "hf"
    export.mkdir()
    files = {"config.json": '{"architectures": ["LlamaForCausalLM"]}', "model.safetensors": "weights",
             "tokenizer.json": "{}"}
    for name, text in files.items():
        (export / name).write_text(text)
    message = one_line_error(cli("train", "--set", f"run_dir={export}", "--set", f"data_dir={tmp_path}/none"),
                             "train")
    assert message.endswith(f"run dir '{export}' already holds 'config.json', 'model.safetensors', 'tokenizer.json' "
                            "and is not a training run dir (no metrics.jsonl or run.log), so the run would overwrite "
                            "what is there; choose a new or empty dir with --set run_dir=PATH")
    assert {p.name: p.read_text() for p in export.iterdir()} == files


def test_the_runs_own_data_inside_its_dir_is_not_foreign(tmp_path):
    """The quickstart prepares runs/quickstart/data (without LMSTACK_HOME) and then trains in runs/quickstart: the
    first version of this check refused `make demo`'s own first run."""
    run_dir, data = tmp_path / "quickstart", tmp_path / "quickstart" / "data"
    data.mkdir(parents=True)
    (data / "tokenizer.json").write_text("{}")
    refuse_foreign_dir(run_dir, "--set run_dir=PATH", (data, data / "tokenizer.json"))  # nothing else: fine
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already holds 'notes.txt' and is not a training run dir"):
        refuse_foreign_dir(run_dir, "--set run_dir=PATH", (data, data / "tokenizer.json"))


def test_a_negative_seed_is_refused_before_the_run_dir_is_made(cli, tmp_path):
    """It was the loader's ValueError, after config.json, metrics.jsonl and run.log had been written."""
    message = one_line_error(cli("train", "--set", f"run_dir={tmp_path / 'run'}", "--set", "seed=-1"), "train")
    assert message.endswith("seed must be >= 0, got -1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, message", [
    ("model.dropout=1.5", "model.dropout must be in [0, 1), got 1.5"),
    ("model.norm_eps=-1", "model.rope_theta and model.norm_eps must be > 0, got 10000.0 and -1.0"),
    ("model.rope_theta=0", "model.rope_theta and model.norm_eps must be > 0, got 0.0 and 1e-05"),
    ("lr=inf", "lr must be a finite number, got inf"),
    ("lr=nan", "lr must be a finite number, got nan"),  # nan passed `lr <= 0`: comparisons with nan are false
    ("guard.spike_factor=nan", "guard.spike_factor must be a finite number, got nan"),
])
def test_config_values_out_of_range_are_refused(setting, message):
    """Each built a model or a run that failed later: nn.Dropout's ValueError, inf/nan in the samples."""
    with pytest.raises(ConfigError) as refused:
        load_config(TrainConfig, None, [setting])
    assert str(refused.value) == message


def test_finite_values_in_range_still_load():
    cfg = load_config(TrainConfig, None, ["model.dropout=0.1", "seed=0", "lr=1e-3", "model.norm_eps=1e-6"])
    assert math.isclose(cfg.model.dropout, 0.1) and cfg.seed == 0
