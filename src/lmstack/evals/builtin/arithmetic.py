"""`arithmetic_agent`: small arithmetic word problems, solved by the agent with a calculator, or by
the bare model (`-T tools=false`) to measure what the tools add. With tools, the agent's monitor
events become a `hallucination` score per sample."""

from __future__ import annotations

import random

from lmstack.evals.agent_solver import agent
from lmstack.evals.code_scorers import hallucination
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import numeric
from lmstack.evals.solvers import chat
from lmstack.evals.task import Task, TaskConfig, task

TEMPLATES = [
    ("A shop has {a} apples and sells {b}. How many apples are left?", lambda a, b: a - b),
    ("Tom reads {a} pages a day for {b} days. How many pages does he read?", lambda a, b: a * b),
    ("A box holds {a} pens. How many pens are in {b} boxes?", lambda a, b: a * b),
    ("A train travels {a} km and then {b} km more. How far does it travel?", lambda a, b: a + b),
    ("{a} sweets are shared equally by {b} children. How many does each child get?", lambda a, b: a // b),
]
SYSTEM = "Solve the problem. Reply with the final number only."


def word_problems(n: int, seed: int) -> list[Sample]:
    rng = random.Random(f"arithmetic-{seed}")
    samples = []
    for i in range(n):
        template, solve = TEMPLATES[i % len(TEMPLATES)]
        a, b = rng.randint(12, 99), rng.randint(2, 11)
        if "shared equally" in template:
            a = b * rng.randint(3, 12)  # whole answers only
        samples.append(Sample(id=f"arith-{i:03d}", input=template.format(a=a, b=b), target=str(solve(a, b)),
                              metadata={"template": i % len(TEMPLATES)}))
    return samples


@task
def arithmetic_agent(n: int = 20, seed: int = 0, tools: bool = True, max_steps: int = 4):
    """Arithmetic word problems: the agent with a calculator (or the bare model with tools=false)."""
    if tools:
        return Task(dataset=word_problems(n, seed), solver=agent(tools=["calculator"], system_prompt=SYSTEM,
                                                                 max_steps=max_steps),
                    scorer=[numeric(), hallucination()], config=TaskConfig(max_tokens=48))
    return Task(dataset=word_problems(n, seed), solver=chat(system=SYSTEM), scorer=[numeric()],
                config=TaskConfig(max_tokens=48), name="arithmetic_no_tools")
