"""Find a task by what the user typed: a registered name, `file.py[@task]`, or a YAML file.

A YAML task names a dataset, solvers and scorers by their registered names with keyword arguments:

    name: capitals
    dataset: capitals.jsonl          # relative to the YAML file; or hf:NAME
    fields: {input: question, target: answer}
    solver: [{system_message: {content: "Answer in one word."}}, generate]
    scorer: [includes, {numeric: {abs_tol: 0.5}, name: close}]   # `name:` reports a scorer under another name
    config: {epochs: 1, max_tokens: 16}
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import traceback
import typing
from pathlib import Path
from typing import Any

import yaml

from lmstack.config import ConfigError, _coerce, _parse_cli_value, from_dict
from lmstack.errors import LmstackError
from lmstack.evals import builtin  # noqa: F401  (registers the built-in tasks, solvers and scorers)
from lmstack.evals.dataset import FieldMap, datasets_relative_to, load_dataset
from lmstack.evals.task import (SCORERS, SOLVERS, TASKS, ArgumentError, Task, TaskConfig, TaskError,
                                duplicate_scorer_name, named)


def load_task(spec: str, task_args: dict[str, Any] | None = None) -> Task:
    task_args = task_args or {}
    path_part = spec.split("@", 1)[0]
    if path_part.endswith((".yaml", ".yml")):
        if task_args:  # they would be ignored: a YAML task has no function to take them
            raise TaskError(f"task file '{path_part}' is YAML, which takes no -T arguments (got "
                            f"{', '.join(task_args)}); set the values in the file, or write a Python task whose "
                            "function takes them")
        return load_yaml_task(Path(path_part))
    if path_part.endswith(".py"):
        name = spec.split("@", 1)[1] if "@" in spec else None
        with datasets_relative_to(Path(path_part).parent):  # on import and in the factory alike
            return _build(_task_from_file(Path(path_part), name), task_args, spec)
    if spec not in TASKS:
        raise TaskError(f"unknown task '{spec}'; `lmstack eval list` shows the built-in tasks, or pass "
                        "a YAML file or FILE.py@TASK")
    return _build(TASKS[spec], task_args, spec)


def _build(factory, task_args: dict[str, Any], spec: str) -> Task:
    accepted = inspect.signature(factory).parameters
    unknown = [k for k in task_args if k not in accepted]
    if unknown:
        raise TaskError(f"task '{spec}' has no argument '{unknown[0]}'; it takes: {', '.join(accepted) or 'none'}")
    hints = _annotations(factory) if task_args else {}
    kwargs = {k: _task_arg(k, hints.get(k, Any), v, spec) for k, v in task_args.items()}
    try:
        task = factory(**kwargs)
    except ArgumentError as err:  # names the solver or scorer and its argument
        raise TaskError(f"task '{spec}': {err}; fix its arguments") from None
    except LmstackError:  # already says what is wrong and how to fix it (a missing dataset file, say)
        raise
    except Exception as err:  # the user's task function: say where it failed, as the traceback would
        raise TaskError(f"task '{spec}' failed while building it: {type(err).__name__}: {err} "
                        f"({_where(err)}); fix the task function") from err
    task.args = {key: _as_typed(value) for key, value in kwargs.items()}
    task.arg_defaults = {key: _as_typed(p.default) for key, p in accepted.items() if p.default is not p.empty}
    return task


def _as_typed(value: Any) -> str:
    """A parsed -T value written as it can be typed again, one form per value (`tools=no` and `tools=false` are one
    setting, so a resume given either is the run's own): booleans true/false, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_typed(item) for item in value)
    return str(value)


def _where(err: BaseException) -> str:
    """The innermost frame of a traceback, as `file line N, in function`."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "no traceback"
    frame = frames[-1]
    return f"{frame.filename} line {frame.lineno}, in {frame.name}"


def _annotations(factory) -> dict[str, Any]:
    """The factory's resolved annotations; none when they cannot be resolved (a name imported only for type
    checkers, under `from __future__ import annotations`): its arguments are then parsed by their look."""
    try:
        return typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001 - NameError and whatever else evaluating a user's annotations raises
        return {}


def _task_arg(name: str, annotation: Any, value: Any, spec: str) -> Any:
    """A task argument checked against the factory's annotation; a string (from `-T`) is parsed by it.

    Parsing by the annotation, not by the look of the string, keeps `-T split=2024` a string and makes
    `-T tools=maybe` an error instead of a truthy string. A class the config parser does not know (Path, say)
    is built from the string.
    """
    if annotation is Any:
        return _parse_cli_value(value) if isinstance(value, str) else value
    try:
        return _coerce(value, annotation, name)
    except ConfigError:
        if isinstance(value, str) and isinstance(annotation, type) and annotation not in (bool, int, float):
            with contextlib.suppress(Exception):
                return annotation(value)
        raise TaskError(f"task '{spec}': -T {name}={value}: expected {_type_name(annotation)}") from None


def _type_name(annotation: Any) -> str:
    if annotation is bool:
        return "a boolean (true/false, yes/no, 1/0, on/off)"
    return {int: "an integer", float: "a number", str: "a string"}.get(annotation, f"a value of type {annotation}")


def _task_from_file(path: Path, name: str | None):
    if not path.is_file():
        raise TaskError(f"task file '{path}' does not exist")
    registries = (TASKS, SOLVERS, SCORERS)
    kept = [dict(registry) for registry in registries]
    module_spec = importlib.util.spec_from_file_location(f"lmstack_user_tasks.{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        _import_task_file(module_spec, module, path)
        defined = [n for n in TASKS if n not in kept[0] or getattr(module, n, None) is TASKS[n]]
        if name is None:
            if len(defined) != 1:
                raise TaskError(f"'{path}' defines tasks {defined or 'none'}; pick one with {path}@NAME")
            name = defined[0]
        if name not in TASKS:
            raise TaskError(f"'{path}' defines no @task '{name}'; it defines: {', '.join(defined) or 'none'}")
        return TASKS[name]
    finally:
        # What a task file registers is its own. Left registered, its tasks were listed by `eval list` as built-in
        # and found by their bare name (their datasets then looked for in the working directory), and a task, solver
        # or scorer named as a built-in one replaced it for every later task of the process.
        for registry, before in zip(registries, kept):
            registry.clear()
            registry.update(before)


def _import_task_file(module_spec, module, path: Path) -> None:
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise TaskError(f"task file '{path}' line {err.lineno}: {err.msg}; fix the Python syntax") from None
    except Exception as err:  # an import that fails, a module-level bug
        raise TaskError(f"task file '{path}' failed on import: {type(err).__name__}: {err} ({_where(err)}); "
                        "fix the file") from err


def yaml_problem(err: Exception) -> str:
    """One line for PyYAML's several: what is wrong and where."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(err).splitlines() or [type(err).__name__])[0]


YAML_KEYS = ("name", "description", "dataset", "split", "fields", "solver", "scorer", "config")


def load_yaml_task(path: Path) -> Task:
    if not path.is_file():
        raise TaskError(f"task file '{path}' does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TaskError(f"task file '{path}' is not valid YAML ({yaml_problem(err)}); fix the file") from None
    if not isinstance(spec, dict) or "dataset" not in spec:
        raise TaskError(f"task file '{path}' needs at least 'dataset' and 'scorer' keys (and 'solver', default "
                        "[generate])")
    unknown = [key for key in spec if key not in YAML_KEYS]
    if unknown:  # a typo ('field:') would be ignored, and every sample fail for what it was meant to say
        raise TaskError(f"task file '{path}': unknown key '{unknown[0]}'; a task file takes {', '.join(YAML_KEYS)}")
    try:
        fields = from_dict(FieldMap, _mapping(spec, "fields", path))
        config = from_dict(TaskConfig, _mapping(spec, "config", path))
        config.validate()
    except (ConfigError, TaskError) as err:
        raise TaskError(f"task file '{path}': {err}") from None
    with datasets_relative_to(path.parent):
        dataset = load_dataset(str(spec["dataset"]), fields=fields, split=spec.get("split", "test"))
    solvers = [_component(SOLVERS, "solver", item, path) for item in _as_list(spec.get("solver", ["generate"]))]
    scorers = [_component(SCORERS, "scorer", item, path) for item in _as_list(spec.get("scorer"))]
    if not scorers:
        raise TaskError(f"task file '{path}' has no scorer; add e.g. `scorer: [exact]`")
    duplicate = duplicate_scorer_name(scorers)
    if duplicate:
        raise TaskError(f"task file '{path}' has two scorers named '{duplicate}', and scores are kept by name; give "
                        f"one its own with `name:`, e.g. {{{duplicate}: {{...}}, name: {duplicate}_2}}")
    return Task(dataset=dataset, solver=solvers, scorer=scorers, config=config,
                name=spec.get("name", path.stem), description=spec.get("description", ""))


def _mapping(spec: dict, key: str, path: Path) -> dict:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise TaskError(f"task file '{path}': '{key}' must be a mapping (key: value lines), got {value!r}")
    return value


def _as_list(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _component(registry: dict, kind: str, item: Any, path: Path):
    """A solver or scorer entry: NAME, or {NAME: {arguments}}; a scorer's may add `name: LABEL` to be reported as."""
    label = None
    if kind == "scorer" and isinstance(item, dict) and len(item) == 2 and "name" in item:
        item = dict(item)
        label = item.pop("name")
    name, kwargs = (item, {}) if isinstance(item, str) else next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (None, None)
    if name is None:
        also = ", optionally with `name: LABEL`" if kind == "scorer" else ""
        raise TaskError(f"task file '{path}': a {kind} is NAME or {{NAME: {{arguments}}}}{also}, got {item!r}")
    if name not in registry:
        raise TaskError(f"task file '{path}': unknown {kind} '{name}'; known: {', '.join(sorted(registry))}")
    if not isinstance(kwargs or {}, dict):
        raise TaskError(f"task file '{path}': {kind} '{name}': arguments must be a mapping, e.g. "
                        f"{{{name}: {{key: value}}}}, got {kwargs!r}")
    try:
        made = registry[name](**(kwargs or {}))
        return made if label is None else named(made, label)
    except ArgumentError as err:  # names the solver or scorer and its argument
        err.component = err.component or f"{kind} '{name}'"
        raise TaskError(f"task file '{path}': {err}; fix its arguments") from None
    except Exception as err:  # a wrong argument name, say: the file's to fix
        raise TaskError(f"task file '{path}': {kind} '{name}': {err}; fix its arguments") from None
