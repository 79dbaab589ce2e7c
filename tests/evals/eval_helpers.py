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
