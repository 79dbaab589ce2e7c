"""The demo's eval stage on a small random checkpoint: every task runs, the table and report come out."""

import pytest

from lmstack.evals.demo import DEMO_TASKS, evaluate_demo_model
from lmstack.evals.store import Store
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer


@pytest.mark.slow
def test_demo_stage_evaluates_every_task_and_writes_the_report(tmp_path, capsys):
    texts = ["def f(x):\n    return x + 1\n", "What is 12 plus 7? The answer is 19.", '{"name": "calculator"}'] * 50
    tokenizer = Tokenizer.train(texts, vocab_size=400, show_progress=False, min_frequency=1)
    model = build_model(ModelConfig(arch="llama", vocab_size=400, block_size=512, n_layer=1, n_head=2, n_embd=64), seed=0)
    checkpoint = save_model_dir(tmp_path / "ckpt", model, tokenizer)
    run_ids, report = evaluate_demo_model(checkpoint, tmp_path / "report.html", tmp_path / "db.sqlite")
    out = capsys.readouterr().out
    store = Store(tmp_path / "db.sqlite")
    assert len(run_ids) == len(DEMO_TASKS) and all(store.run(r).status == "finished" for r in run_ids)
    assert "val_bpb" in out and "toolcalls_no_tools" in out and "arithmetic_no_tools" in out
    assert report.is_file() and report.read_text().count("<h2>Run ") == len(DEMO_TASKS)
