"""What a start decides before training: the vocab size an unset model.vocab_size takes (the data's, or a
resumed run's own), and that a start which fails its checks leaves no empty run dir behind."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_testing import one_line_error

from lmstack.cli import main
from lmstack.config import load_config
from lmstack.errors import LmstackError
from lmstack.model.checkpoint import read_config
from lmstack.tokenizer import Tokenizer
from lmstack.train.config import TrainConfig
from lmstack.train.loop import Trainer
from lmstack.train.metrics import read_metrics
from lmstack.train.resume import check_resumable
from train_helpers import make_data, tiny_overrides


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data dir written by the real `lmstack prepare` (it has meta.json), from make_data's tokenizer."""
    root = tmp_path_factory.mktemp("start")
    make_data(root / "tok")
    assert main(["prepare", "--source", "stdlib", "--limit", "20", "--tokenizer", str(root / "tok"),
                 "--out", str(root / "data")]) == 0
    return root / "data"


def train_args(data_dir, run_dir, **extra) -> list[str]:
    """tiny_overrides without model.vocab_size unless `extra` sets it."""
    overrides = [o for o in tiny_overrides(data_dir, run_dir, **{"max_steps": 2, "eval_every": 0, **extra})
                 if "model.vocab_size" in extra or not o.startswith("model.vocab_size=")]
    return ["train", *[a for o in overrides for a in ("--set", o)]]


def succeeded(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def trained_vocab_size(run_dir) -> int:
    return read_config(run_dir / "checkpoints" / "step_000002")["model"]["vocab_size"]


def test_unset_vocab_size_is_the_datas_and_a_set_one_wins(cli, prepared, tmp_path):
    meta_vocab = json.loads((prepared / "meta.json").read_text())["vocab_size"]
    assert meta_vocab == Tokenizer.load(prepared / "tokenizer.json").vocab_size != 8192
    result = succeeded(cli(*train_args(prepared, tmp_path / "auto")))
    assert f'"vocab_size": {meta_vocab},' in result.stdout  # the config printed at start shows the number chosen
    assert "tokens/step (1 micro-batch per process)" in result.stdout  # it said "1 micro-batches"
    assert trained_vocab_size(tmp_path / "auto") == meta_vocab

    succeeded(cli(*train_args(prepared, tmp_path / "set", **{"model.vocab_size": 512})))
    assert trained_vocab_size(tmp_path / "set") == 512
    too_small = cli(*train_args(prepared, tmp_path / "small", **{"model.vocab_size": 100}))
    assert too_small.returncode == 2
    assert f"has {meta_vocab} tokens but model.vocab_size=100" in too_small.stderr


def test_resume_keeps_the_vocab_size_the_run_was_saved_with(cli, prepared, tmp_path):
    """A run started when the default was 8192 resumes as it was, not with the data's smaller vocab."""
    succeeded(cli(*train_args(prepared, tmp_path / "run", **{"model.vocab_size": 8192})))
    succeeded(cli(*train_args(prepared, tmp_path / "run", max_steps=3)))
    starts = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "start"]
    assert starts[-1]["resumed_from"].endswith("step_000002")
    assert read_config(tmp_path / "run" / "checkpoints" / "step_000003")["model"]["vocab_size"] == 8192


def test_a_start_that_fails_its_checks_leaves_no_empty_run_dir(cli, prepared, tmp_path):
    missing_data = cli(*train_args(tmp_path / "no_data", tmp_path / "runs" / "a"))
    assert missing_data.returncode == 2 and "does not exist" in missing_data.stderr
    assert not (tmp_path / "runs").exists()  # neither the run dir nor the parent this start made

    no_checkpoint = cli(*train_args(prepared, tmp_path / "b"), "--resume")
    assert no_checkpoint.returncode == 2 and "no checkpoint to resume from" in no_checkpoint.stderr
    assert not (tmp_path / "b").exists()

    (tmp_path / "mine").mkdir()  # made by the user: a failed start must leave it alone
    assert cli(*train_args(prepared, tmp_path / "mine"), "--resume").returncode == 2
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())  # nor the lock file it took


def test_a_data_dir_without_a_val_split_is_refused_before_any_step(cli, prepared, tmp_path):
    # One document: prepare keeps it for train and says the val split is empty; train, which evaluates at least at
    # its last step, used to find out only at its first eval.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "only.py").write_text("def f(x):\n    return x\n" * 300)
    prepared_one = succeeded(cli("prepare", "--source", tmp_path / "docs", "--tokenizer", prepared,
                                 "--out", tmp_path / "one"))
    says = ("the val split is empty (1 document(s) in all), and `lmstack train`, which evaluates on it, refuses such "
            "a dir: add documents to the corpus and run `lmstack prepare` again")
    assert f"warning: {says}" in prepared_one.stderr
    refused = cli(*train_args(tmp_path / "one", tmp_path / "run", max_steps=50, eval_every=25))
    # The refusal said "create them with `lmstack prepare --out DIR`": no --tokenizer, and the same empty split again.
    assert one_line_error(refused, "train", alone=False).endswith(f"no val shards (val_*.bin) in '{tmp_path / 'one'}': "
                                                                  f"{says}")
    assert "step/s" not in refused.stderr and not (tmp_path / "run").exists()  # no step ran (no bar), no run dir left


class NoModelTrainer(Trainer):
    def build_model(self, checkpoint):
        raise AssertionError("the model was built before the data was checked")


def test_the_val_split_is_refused_before_the_model_is_built(tmp_path):
    # A big model takes seconds to build: a start bound to fail on its data must not spend them first.
    data_dir = make_data(tmp_path / "data", train_tokens=5_000)
    (data_dir / "val_000000.bin").unlink()
    cfg = load_config(TrainConfig, None, tiny_overrides(data_dir, tmp_path / "run"))
    with pytest.raises(LmstackError, match=r"no val shards \(val_\*\.bin\)"):
        NoModelTrainer(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_check_compares_the_saved_config_it_is_given():
    """The start reads the checkpoint's config.json once and hands it to both its users (vocab size, this check)."""
    saved = {"model": {"n_layer": 2, "vocab_size": 320}, "batch_size": 4, "seed": 0, "lr": 0.01}
    checkpoint = Path("runs/r/checkpoints/step_000002")  # not on disk: the check must not read it
    check_resumable(checkpoint, saved, {**saved, "lr": 0.5})  # lr may change between a run and its resumption
    with pytest.raises(LmstackError, match=r"^the run dir 'runs/r' has a checkpoint from a different config "
                                           r"\(model.n_layer: saved 2, now 4\)"):
        check_resumable(checkpoint, saved, {**saved, "model": {"n_layer": 4, "vocab_size": 320}})


@pytest.mark.parametrize("damaged", ["train_state.pt", "model.safetensors"])
def test_a_damaged_last_checkpoint_is_named_with_the_way_to_resume_from_the_one_before(cli, prepared, tmp_path,
                                                                                        damaged):
    """A cut-short train_state.pt (torch's "failed finding central directory") or model.safetensors was a traceback
    on resume. Now the start refuses it before writing anything, and its fix works."""
    run_dir = tmp_path / "run"
    succeeded(cli(*train_args(prepared, run_dir, max_steps=4, checkpoint_every=2)))
    last = run_dir / "checkpoints" / "step_000004"
    (last / damaged).write_bytes((last / damaged).read_bytes()[:100])
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()

    refused = cli(*train_args(prepared, run_dir, max_steps=6, checkpoint_every=2))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    [line] = [line for line in refused.stderr.splitlines() if line.startswith("lmstack train: error:")]
    assert f"'{last / damaged}' cannot be read (" in line
    assert f"delete '{last}' to resume from the checkpoint before it" in line
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before  # nothing logged, nothing trained

    shutil.rmtree(last)  # the fix the message gives
    succeeded(cli(*train_args(prepared, run_dir, max_steps=6, checkpoint_every=2)))
    starts = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "start"]
    assert starts[-1]["resumed_from"].endswith("step_000002")


def test_a_data_dir_that_is_a_file_or_holds_no_data_is_called_so(cli, prepared, tmp_path):
    """Both were "does not exist" or a complaint about a missing tokenizer, which is not what was wrong."""
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for data_dir, says in ((tmp_path / "notes.txt", "is a file, not a directory"),
                           (tmp_path / "empty", "has no tokenizer.json: it is not a data dir written by "
                                                "`lmstack prepare`")):
        refused = cli(*train_args(data_dir, tmp_path / "run"))
        assert refused.returncode == 2 and f"data dir '{data_dir}' {says}; create it with" in refused.stderr
    assert not (tmp_path / "run").exists()
