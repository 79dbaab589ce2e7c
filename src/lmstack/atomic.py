"""Atomic writes: write to a temporary name in the same directory, fsync, rename.

A crash at any instant leaves either the old file (or directory) or the new one, never half of one.
An output that cannot be written is an `OutputWriteError` naming the output, not the temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from lmstack.errors import LmstackError, quoted_few


class OutputWriteError(OSError, LmstackError):
    """An output path that cannot be written: OSError(errno, reason, output path). Still an OSError, so callers
    can tell a full disk by `errno`; the filename is the path the user asked for, never the temporary one."""

    def __str__(self) -> str:
        return f"cannot write '{self.filename}': {self.strerror}; choose a writable location"


@contextlib.contextmanager
def _reported_as(path: Path) -> Iterator[None]:
    """Turn an OSError of the body into an `OutputWriteError` about `path`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as err:
        raise OutputWriteError(err.errno, err.strerror or str(err), str(path)) from err


def check_output_dir(path: str | Path) -> None:
    """Refuse, before any work, an output directory that could not be created: a file in its place or above
    it. Nothing is created here, so a command that fails later leaves no empty directory behind."""
    path = Path(path)
    blocking = _blocking_file(path)
    if blocking is not None:
        where = "it is a file" if blocking == path else f"'{blocking}' is a file"
        raise OutputWriteError(errno.ENOTDIR, f"{where}, not a directory", str(path))


def _make_parent(path: Path) -> None:
    """Create `path`'s directory; a file in the way is named (mkdir's own error says only "File exists")."""
    blocking = _blocking_file(path.parent)
    if blocking is not None:
        raise OutputWriteError(errno.ENOTDIR, f"'{blocking}' is a file, not a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)


def _blocking_file(directory: Path) -> Path | None:
    """The file standing where `directory`, or the nearest of its parents that exists, should be a directory."""
    for existing in (directory, *directory.parents):
        if existing.exists():
            return None if existing.is_dir() else existing
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_sibling(path: Path, create: Callable[[Path], None]) -> Path:
    """A fresh `.NAME.XXXXXXXX.tmp` next to `path`, made by `create`, which must raise FileExistsError when the
    name is taken. Not tempfile's mkstemp / mkdtemp: they make 0600 files and 0700 dirs, private to their owner,
    while an output (a report, data shards, a model) gets what a plain open() or mkdir gives: 0666 / 0777 less
    the umask, so others can read what the user shares."""
    while True:
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync the result, rename it onto `path`."""
    path = Path(path)
    with _reported_as(path):
        _make_parent(path)
        tmp_path = _new_sibling(path, _create_file)
        try:
            write(tmp_path)
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
            fsync_dir(path.parent)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def refuse_to_replace(directory: Path, written: Callable[[str], bool], writer: str, error: type[Exception],
                      replaces: str = "the output is replaced as a whole", marker: str | None = None) -> None:
    """`atomic_directory` replaces a directory whole, deleting all it holds (and other writers replace each of their
    files): before any work, refuse one that is a link (it would become a copy, and the link's target stay as it
    was) or that holds anything but regular files `writer` writes (`written(name)`). With `marker`, a file only
    `writer` writes, a non-empty directory without it is refused too: files of the same names (a tokenizer.json) are
    then another tool's. Nothing is touched. `replaces`: what the writer does to what it finds, for the message."""
    fix = f"choose a new or empty directory ({replaces})"
    if directory.is_symlink():
        raise error(f"output '{directory}' is a symbolic link; {fix}")
    if not directory.is_dir():
        return
    held = sorted(child.name for child in directory.iterdir())
    foreign = [name for name in held
               if (directory / name).is_symlink() or not (directory / name).is_file() or not written(name)]
    if foreign:
        raise error(f"output '{directory}' holds {quoted_few(foreign, 2)}, which {writer} never writes; {fix}")
    if held and marker is not None and marker not in held:
        raise error(f"output '{directory}' holds {quoted_few(held, 2)} but no {marker}, so it is no {writer} output; "
                    f"{fix}")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    If `path` exists it is first renamed aside, then deleted after the swap; a crash between the two
    renames leaves the old directory under `.NAME.old`, which `recover_directory` puts back.
    """
    path = Path(path)
    with _reported_as(path):
        _make_parent(path)
        tmp = _new_sibling(path, os.mkdir)
    try:
        yield tmp  # the body's own errors stay as they are: it may read inputs as well as write into tmp
        with _reported_as(path):
            for child in tmp.iterdir():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(tmp)
            old = path.parent / f".{path.name}.old"
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(path: str | Path) -> None:
    """Undo a swap interrupted between its two renames (see `atomic_directory`)."""
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if not path.exists() and old.exists():
        os.replace(old, path)
