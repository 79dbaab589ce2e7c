"""Shared pieces of the eval tests: an arithmetic dataset and scripts for the scripted server."""

import json
from pathlib import Path


def question(i: int) -> str:
    return f"What is {i} plus {i + 3}?"


def answer(i: int) -> str:
    return str(2 * i + 3)


def write_dataset(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "input": question(i), "target": answer(i)}) + "\n"
                            for i in range(n)))
    return path


def arith_task(folder: Path, n: int) -> Path:
    """A YAML task over `n` of the questions (arith.jsonl beside it): generate, then the numeric scorer."""
    write_dataset(folder / "arith.jsonl", n)
    task_file = folder / "arith.yaml"
    task_file.write_text("name: arith\ndataset: arith.jsonl\nsolver: [generate]\nscorer: [numeric]\n")
    return task_file


def answers(n: int, wrong_every: int = 0, noisy: bool = False) -> dict:
    """Per-question scripted answers: wrong on every `wrong_every`-th question; with `noisy`, each
    answer is a list the server picks from by the request's seed (right 3 times in 4)."""
    out = {}
    for i in range(n):
        right = f"The answer is {answer(i)}."
        wrong = f"The answer is {int(answer(i)) + 1}."
        base = wrong if wrong_every and i % wrong_every == 0 else right
        out[question(i)] = [base, base, base, wrong] if noisy else base
    return out


def tiny_checkpoint(folder: Path) -> Path:
    """A 1-layer model dir with its tokenizer, for an in-process --model (what it answers does not matter)."""
    from lmstack.model.checkpoint import save_model_dir
    from lmstack.model.config import ModelConfig
    from lmstack.model.gpt import build_model
    from lmstack.tokenizer import Tokenizer

    tokenizer = Tokenizer.train([question(i) + " " + answer(i) for i in range(50)], vocab_size=300,
                                show_progress=False, min_frequency=1)
    model = build_model(ModelConfig(arch="llama", vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32),
                        seed=0)
    return save_model_dir(folder / "tiny", model, tokenizer)
