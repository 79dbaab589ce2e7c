"""Datasets of samples: JSONL, CSV, Hugging Face datasets by name, or a Python generator.

Column names are mapped with `FieldMap` (defaults: id, input, target, choices, group; every other
column goes into metadata). A row that cannot be a sample -- malformed JSON, no input -- becomes a
Sample carrying an `error`, so the run reports it per sample and still finishes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from lmstack.errors import LmstackError
from lmstack.evals.sample import Sample


class DatasetError(LmstackError):
    """A dataset that cannot be read at all (missing file, unknown format, missing package)."""


# The folder of the task file (Python or YAML) being loaded: the dataset files its task names by a relative path
# are found there, whatever the working directory, as Inspect resolves them; so are the files that -T values name.
# A context variable, not os.chdir: the working directory is the whole process's.
_task_folder: ContextVar[Path | None] = ContextVar("task_folder", default=None)


@contextlib.contextmanager
def datasets_relative_to(folder: Path):
    token = _task_folder.set(folder)
    try:
        yield
    finally:
        _task_folder.reset(token)


@dataclass
class FieldMap:
    id: str = "id"
    input: str = "input"
    target: str = "target"
    choices: str = "choices"
    group: str = "group"


def sample_from_row(row: Any, where: str, default_id: str, fields: FieldMap = FieldMap()) -> Sample:
    """One dataset row -> Sample; problems become `Sample.error` naming the row and the fix."""
    if not isinstance(row, dict):
        return Sample(id=default_id, input="", error=f"{where}: expected an object with an '{fields.input}' field, "
                                                      f"got {type(row).__name__}")
    sample_id = str(row.get(fields.id, default_id))
    known = {fields.id, fields.input, fields.target, fields.choices, fields.group}
    metadata = {k: v for k, v in row.items() if k not in known}
    value = row.get(fields.input)
    error = None
    if value is None or value == "" or value == []:
        error = f"{where}: no '{fields.input}' field; add one (a prompt string or a list of chat messages)"
        value = ""
    elif not isinstance(value, (str, list)):
        error = f"{where}: '{fields.input}' must be a string or a list of chat messages, got {type(value).__name__}"
        value = str(value)
    choices = row.get(fields.choices)
    if isinstance(choices, str):
        if choices.strip().startswith("["):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError as err:
                error = error or (f"{where}: '{fields.choices}' looks like a JSON list but is not valid JSON "
                                  f"({err.msg}); fix it or separate the choices with '|'")
                choices = None
        else:
            choices = choices.split("|")
    if choices is not None and not isinstance(choices, list):
        error = error or (f"{where}: '{fields.choices}' must be a list (or a string of choices separated by '|'), "
                          f"got {type(choices).__name__}")
        choices = None
    group = row.get(fields.group)
    return Sample(id=sample_id, input=value, target=row.get(fields.target), choices=choices,
                  metadata=metadata, group=None if group is None else str(group), error=error)


def load_jsonl(path: str | Path, fields: FieldMap = FieldMap()) -> list[Sample]:
    path = _existing(path)
    samples = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                samples.append(Sample(id=str(lineno), input="", error=f"{where}: not valid UTF-8 (byte "
                                      f"0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                samples.append(Sample(id=str(lineno), input="", error=f"{where}: not valid JSON ({err.msg}); fix the line"))
                continue
            samples.append(sample_from_row(row, where, str(lineno), fields))
    return samples


def load_csv(path: str | Path, fields: FieldMap = FieldMap()) -> list[Sample]:
    path = _existing(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:  # a CSV row can span lines, so the whole file is refused
        line = data.count(b"\n", 0, err.start) + 1
        raise DatasetError(f"dataset file '{path}' line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); "
                           f"save the file as UTF-8") from None
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    # Line 1 is the header, so row i is on line i + 2.
    return [sample_from_row(row, f"{path.name} line {i + 2}", str(i + 2), fields) for i, row in enumerate(rows)]


def load_hf(name: str, split: str = "test", subset: str | None = None, fields: FieldMap = FieldMap(),
            **load_kwargs: Any) -> list[Sample]:
    """A Hugging Face dataset by name (`pip install lmstack[hf]`); local JSON/CSV/parquet files work too."""
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"dataset 'hf:{name}' needs the `datasets` package: pip install 'lmstack[hf]'") from None
    try:
        data = datasets.load_dataset(name, subset, split=split, **load_kwargs)
    except Exception as err:  # the hub, the network, a missing split: all the user's to fix
        raise DatasetError(f"dataset 'hf:{name}' (split {split!r}) could not be loaded: {err}") from None
    return [sample_from_row(dict(row), f"hf:{name}[{i}]", str(i), fields) for i, row in enumerate(data)]


def from_generator(generate: Callable[[], Iterable[Any]], fields: FieldMap = FieldMap()) -> list[Sample]:
    """Samples from a Python generator of Sample objects or row dicts."""
    out = []
    for i, item in enumerate(generate()):
        out.append(item if isinstance(item, Sample) else sample_from_row(item, f"generator item {i}", str(i), fields))
    return out


def load_dataset(spec: str, fields: FieldMap = FieldMap(), split: str = "test") -> list[Sample]:
    """`file.jsonl`, `file.csv`, or `hf:NAME[:SUBSET]`; a relative path starts from the task file's folder
    (`datasets_relative_to`), else from the working directory."""
    if spec.startswith("hf:"):
        name, _, subset = spec[3:].partition(":")
        return load_hf(name, split=split, subset=subset or None, fields=fields)
    path = Path(spec)
    if path.suffix == ".jsonl":
        return load_jsonl(path, fields)
    if path.suffix == ".csv":
        return load_csv(path, fields)
    raise DatasetError(f"dataset '{spec}': unknown format; use a .jsonl or .csv file, or hf:NAME for a Hugging Face dataset")


def check_unique_ids(samples: list[Sample]) -> None:
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise DatasetError(f"sample id '{s.id}' appears twice; ids must be unique (results are keyed by id)")
        seen.add(s.id)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    folder = _task_folder.get()
    from_task_folder = folder is not None and not path.is_absolute()
    if from_task_folder:
        path = folder / path
    if not path.is_file():
        why = " (a task file's relative paths start from its folder)" if from_task_folder else ""
        raise DatasetError(f"dataset file '{path}' does not exist{why}; check the path")
    return path
