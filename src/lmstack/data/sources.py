"""Where documents come from. A source is one string:

    stdlib              the Python standard library's own .py files (the default; no network needed)
    DIR                 every text file under a directory (see TEXT_SUFFIXES), or one text file
    FILE.jsonl          one JSON object per line; the text is in `text_field`
    FILE.parquet        one row per document; the text is in column `text_field` (needs pyarrow)
    hf:NAME[:CONFIG]    a Hugging Face dataset, streamed (needs the `datasets` package)

Each document has a stable `id` (a relative path, or file:line / file:row / name:index), which the
train/val split hashes, so the split does not change when the corpus is re-read or grows.
"""

from __future__ import annotations

import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmstack.errors import LmstackError

TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java",
    ".js", ".ts", ".html", ".css", ".json", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".sh", ".tex",
    ".csv", ".sql", ".xml",
})
# Installed packages are not the standard library; test dirs hold data files with deliberately
# broken encodings and syntax, which teach a model nothing about Python.
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
SOURCE_HELP = "use stdlib, a directory of text files, a .jsonl or .parquet file, or hf:NAME[:CONFIG]"


class SourceError(LmstackError):
    """A corpus that is missing, empty, unreadable or in a format we can't read."""


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise SourceError(f"--limit {limit} would read no documents; use a positive number or leave it out")


def iter_documents(source: str = "stdlib", text_field: str = "text", split: str = "train",
                   limit: int | None = None) -> Iterator[Document]:
    """Yield the non-empty documents of `source` in a stable order (at most `limit` of them).

    Raises SourceError when the source yields no document at all.
    """
    check_limit(limit)
    count = 0
    for doc in _documents(source, text_field, split):
        if not doc.text:
            continue
        if limit is not None and count >= limit:
            return
        count += 1
        yield doc
    if count == 0:
        raise SourceError(f"the corpus '{source}' is empty: it has no documents with text in them; "
                          f"{SOURCE_HELP}")


def document_count(source: str = "stdlib") -> int | None:
    """How many documents `source` has, where that is cheap to know (for progress bars)."""
    if source == "stdlib":
        return len(stdlib_files())
    path = Path(source)
    if path.is_dir():
        return len(text_files(path))
    if path.suffix == ".parquet" and path.is_file():
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # no pyarrow, or a bad file: reading it will say which, clearly
            return None
    return None


def _documents(source: str, text_field: str, split: str) -> Iterator[Document]:
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return (Document(str(p.relative_to(root)), read_text(p)) for p in stdlib_files())
    if source.startswith("hf:"):
        return _hf_documents(source[3:], text_field, split)
    path = Path(source)
    if path.is_dir():
        return (Document(str(p.relative_to(path)), read_text(p)) for p in text_files(path))
    if not path.exists():
        raise SourceError(f"source '{source}' does not exist; {SOURCE_HELP}")
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text_field)
    if path.suffix == ".parquet":
        return _parquet_documents(path, text_field)
    if path.suffix in TEXT_SUFFIXES:
        return iter([Document(path.name, read_text(path))])
    raise SourceError(f"source '{source}' is not a format lmstack reads; {SOURCE_HELP}")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"cannot read '{path}': it is not UTF-8 text ({err.reason} at byte {err.start}); "
                          "convert it to UTF-8 or move it out of the corpus") from None
    except OSError as err:
        raise SourceError(f"cannot read '{path}': {err.strerror}; fix its permissions or move it out "
                          "of the corpus") from None


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return _walk(root, lambda p: p.suffix == ".py", STDLIB_SKIP_DIRS)


def text_files(root: Path) -> list[Path]:
    return _walk(root, lambda p: p.suffix.lower() in TEXT_SUFFIXES, frozenset())


def _walk(root: Path, keep, skip_dirs: frozenset[str]) -> list[Path]:
    """Non-empty files under `root` in sorted order (so document order is the same on every machine)."""
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("."))
        paths = (Path(directory) / f for f in sorted(files) if not f.startswith(".") and keep(Path(f)))
        found += (p for p in paths if _size(p) > 0)  # an empty file is no document
    return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:  # e.g. a symlink whose target is gone
        raise SourceError(f"cannot read '{path}': {err.strerror}; fix or remove it") from None


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    try:
        lines = open(path, encoding="utf-8")
    except OSError as err:
        raise SourceError(f"cannot read '{path}': {err.strerror}") from None
    with lines:
        try:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise SourceError(f"'{path}' line {lineno} is not valid JSON ({err.msg}); "
                                      "a .jsonl file needs one JSON object per line") from None
                yield Document(f"{path.name}:{lineno}", _field(record, text_field, f"'{path}' line {lineno}"))
        except UnicodeDecodeError as err:
            raise SourceError(f"cannot read '{path}': it is not UTF-8 text ({err.reason})") from None


def _field(record: object, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else []
        raise SourceError(f"{where} has no '{text_field}' field (it has {keys}); "
                          "choose the field with --text-field")
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise SourceError(f"{where}: field '{text_field}' is {type(text).__name__}, not text; "
                          "choose a text field with --text-field")
    return text


def _parquet_documents(path: Path, text_field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses for a bad file
        raise SourceError(f"cannot read '{path}' as parquet: {err}") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise SourceError(f"'{path}' has no column '{text_field}' (it has {columns}); "
                          "choose the column with --text-field")
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield Document(f"{path.name}:{row}", _field({text_field: text}, text_field, f"'{path}' row {row}"))
            row += 1


def _hf_documents(spec: str, text_field: str, split: str) -> Iterator[Document]:
    """Stream a Hugging Face dataset: `NAME` or `NAME:CONFIG` (NAME may be a local dataset dir)."""
    try:
        import datasets
    except ImportError:
        raise SourceError(f"source 'hf:{spec}' needs the `datasets` package: pip install 'lmstack[hf]'") from None
    name, _, config = spec.partition(":")
    if not name:
        raise SourceError("source 'hf:' names no dataset; use hf:NAME or hf:NAME:CONFIG")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split, streaming=True)
    except Exception as err:  # datasets raises many types (network, missing config, bad split)
        raise SourceError(f"cannot load dataset 'hf:{spec}' (split '{split}'): {err}") from None
    for index, record in enumerate(dataset):
        yield Document(f"{name}:{index}", _field(record, text_field, f"dataset 'hf:{spec}' row {index}"))
