"""`Task`, and the `@task` / `@solver` / `@scorer` factories that register by name (Inspect's shape).

    @scorer
    def exact():
        def score(state, ctx) -> Score: ...
        return score

    @task
    def arithmetic():
        return Task(dataset=[...], solver=[system_message("..."), generate()], scorer=[exact()])

A decorated factory is registered under its function name (or `name=`), so the same task runs from
Python (`run_eval(arithmetic(), ...)`) and from the CLI (`lmstack eval run arithmetic`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from lmstack.errors import LmstackError
from lmstack.evals.sample import Sample, Score, TaskState


class Solver(Protocol):
    def __call__(self, state: TaskState, ctx: Any) -> TaskState: ...


class Scorer(Protocol):
    def __call__(self, state: TaskState, ctx: Any) -> Score: ...


class TaskError(LmstackError):
    """A task that cannot be found or built (unknown name, bad YAML, wrong types)."""


class ArgumentError(TaskError):
    """A solver or scorer argument that cannot work (few_shot examples that are not pairs, a negative tolerance),
    refused when its factory builds the function: every sample of a recorded run would fail on it otherwise.

    The factory says what is wrong with the argument; the registering wrapper adds which solver or scorer it is.
    """

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem
        self.component: str | None = None

    def __str__(self) -> str:
        return f"{self.component}: {self.problem}" if self.component else self.problem


@dataclass
class TaskConfig:
    epochs: int = 1
    seed: int = 0
    limit: int | None = None  # evaluate only the first N samples
    # Unset: no max_tokens is sent and the endpoint's default applies (ours and vLLM's: what the context leaves
    # after the prompt; in-process, the engine's default within the context), as Inspect does. A fixed default
    # made every request to a small-context model a 400; a task that needs a cap sets its own.
    max_tokens: int | None = None
    temperature: float = 0.0
    reducers: list[str] = field(default_factory=lambda: ["mean"])  # mean, max, pass@K, pass^K

    def validate(self) -> None:
        for name in ("epochs", "seed", "limit", "max_tokens"):  # the range checks below compare: types first
            value = getattr(self, name)
            if not (value is None and name in ("limit", "max_tokens")) and (type(value) is not int):
                raise TaskError(f"{name} must be an integer{' or None' if name in ('limit', 'max_tokens') else ''}, "
                                f"got {value!r} ({type(value).__name__})")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise TaskError(f"temperature must be a number, got {self.temperature!r} ({type(self.temperature).__name__})")
        if not isinstance(self.reducers, list) or not all(isinstance(r, str) for r in self.reducers):
            raise TaskError(f"reducers must be a list of names, e.g. ['mean', 'pass@3'], got {self.reducers!r}")
        if self.epochs < 1:
            raise TaskError(f"epochs must be >= 1, got {self.epochs}")
        if self.limit is not None and self.limit < 1:
            raise TaskError(f"limit must be >= 1, got {self.limit}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TaskError(f"max_tokens must be >= 1 (the generation limit per model call), got {self.max_tokens}")
        if self.temperature < 0:
            raise TaskError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")


@dataclass
class Task:
    dataset: list[Sample]
    solver: Solver | list[Solver]
    scorer: Scorer | list[Scorer]
    config: TaskConfig = field(default_factory=TaskConfig)
    name: str = "task"
    description: str = ""
    # The `-T KEY=VALUE` arguments it was built with, and the defaults of its function's other arguments, parsed and
    # written in one form (loader._as_typed): recorded with a run (`arguments`), so a resume with others is refused.
    args: dict[str, str] = field(default_factory=dict)
    arg_defaults: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        """Mistakes a Python user makes, refused here by name rather than as every sample failing the same way."""
        bad = next((row for row in self.dataset if not isinstance(row, Sample)), None) if isinstance(
            self.dataset, (list, tuple)) else self.dataset
        if bad is not None:
            raise TaskError(f"Task dataset must be a list of Sample, got {type(bad).__name__} {bad!r:.60}; build rows "
                            "with lmstack.evals.sample.Sample(id, input, target) or load_jsonl")
        if not isinstance(self.config, TaskConfig):
            raise TaskError(f"Task config must be a TaskConfig, got {type(self.config).__name__}; e.g. "
                            "config=TaskConfig(epochs=2)")
        for kind, parts in (("solver", self.solvers), ("scorer", self.scorers)):
            for part in parts:
                if getattr(part, "factory_of", None) or not callable(part):
                    name = getattr(part, "__name__", repr(part))
                    raise TaskError(f"Task {kind} {name!r} is not a {kind}: pass what its factory returns, "
                                    f"e.g. {kind}={name}() rather than {kind}={name}")

    @property
    def arguments(self) -> dict[str, str]:
        """What its function ran with: `-T n=20`, where 20 is n's default, is the same task as no `-T n`."""
        return {**self.arg_defaults, **self.args}

    @property
    def solvers(self) -> list[Solver]:
        return list(self.solver) if isinstance(self.solver, (list, tuple)) else [self.solver]

    @property
    def scorers(self) -> list[Scorer]:
        return list(self.scorer) if isinstance(self.scorer, (list, tuple)) else [self.scorer]


TASKS: dict[str, Callable[..., Task]] = {}
SOLVERS: dict[str, Callable[..., Solver]] = {}
SCORERS: dict[str, Callable[..., Scorer]] = {}


def _registering(registry: dict[str, Callable], kind: str, func: Callable | None, name: str | None):
    def wrap(factory: Callable) -> Callable:
        registered = name or factory.__name__

        @functools.wraps(factory)
        def build(*args: Any, **kwargs: Any) -> Any:
            try:
                made = factory(*args, **kwargs)
            except ArgumentError as err:
                if kind != "task":  # the outermost solver or scorer names it: the `chat` the user wrote, not few_shot
                    err.component = f"{kind} '{registered}'"
                raise
            if kind == "task":
                if not isinstance(made, Task):
                    raise TaskError(f"@task '{registered}' must return a Task, got {type(made).__name__}")
                if made.name == "task":
                    made.name = registered
            elif not hasattr(made, "registry_name"):  # a factory may name what it made, e.g. per field
                made.registry_name = registered  # scorers are reported under this name
            return made

        build.factory_of = kind  # what it makes; a Task given the factory itself (`generate`, not `generate()`) refuses it
        registry[registered] = build
        return build

    return wrap(func) if func is not None else wrap


def task(func: Callable | None = None, *, name: str | None = None):
    return _registering(TASKS, "task", func, name)


def solver(func: Callable | None = None, *, name: str | None = None):
    return _registering(SOLVERS, "solver", func, name)


def scorer(func: Callable | None = None, *, name: str | None = None):
    return _registering(SCORERS, "scorer", func, name)


def scorer_name(fn: Scorer) -> str:
    return getattr(fn, "registry_name", getattr(fn, "__name__", "score"))


def named(fn: Scorer, name: str) -> Scorer:
    """The scorer reported (and stored, and compared) as `name`: two `json_match` scorers in one task need two names."""
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError(f"a scorer's name must be a non-empty string, got {name!r}")
    fn.registry_name = name
    return fn


def duplicate_scorer_name(scorers: list[Scorer]) -> str | None:
    """The first name two of `scorers` share, or None. Scores are kept by scorer name, so the second scorer of a
    name would overwrite the first's in the table and the database."""
    seen: set[str] = set()
    for fn in scorers:
        name = scorer_name(fn)
        if name in seen:
            return name
        seen.add(name)
    return None
