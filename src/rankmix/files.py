"""Reading and writing the files rankmix owns. Every write is atomic: the data goes to a temporary file
(or folder) beside the target, then an `os.replace` swaps it in, so a crash never leaves half a file
and a reader never sees one. Temporary names start with a dot, so they stay out of folder listings."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` (no dot) as a float, as people write it in recipes."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_utf8(path: str | os.PathLike, what: str) -> str:
    """A text file's contents, without a UTF-8 byte-order mark (some editors write one); a binary or
    otherwise non-UTF-8 file is a ValueError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a UTF-8 text file; replace it with the right file") from None


def parse_json(text: str) -> Any:
    """json.loads, where nesting too deep for Python's decoder is a JSONDecodeError like any other
    malformed JSON (not a RecursionError), so every reader names the file and line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", text, 0) from None


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML text (safe loader; `1e-3` is a float); malformed YAML is a ValueError naming `source`
    (a file, or the `--set` item) and where the problem is."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except RecursionError:
        raise ValueError(f"{source} is nested too deeply to read; fix it and run again") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{source} is not valid YAML ({problem}{where}); fix it and run again") from None


# Names that rankmix turns into file or folder names (tasks: `export-lora --all-tasks` writes OUT/<task>/)
NAME_RULE = "letters, digits, '_', '-' and '.', not starting with '.' or '-', at most 64 characters"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_name(name: Any, what: str) -> str:
    """`name` if it can become a file or folder name as it is (no '/', no '..', nothing hidden), else a
    ValueError with the rule; checked when a name is loaded, before any work."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a usable name: a name has {NAME_RULE}; rename it")
    return name


def child(folder: str | os.PathLike, name: str, what: str) -> Path:
    """The path of `name` inside `folder`, refused if it would lead elsewhere (a checked name cannot, but
    a symbolic link of that name in `folder` could)."""
    path = Path(folder) / check_name(name, what)
    if path.is_symlink():
        raise ValueError(
            f"{path} is a symbolic link: rankmix writes {what} {name!r} only inside {folder}; remove the link"
        )
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_mode(path: str | os.PathLike) -> None:
    """Give a file or folder written through a private temporary one (0600/0700, also what safetensors
    and transformers leave) the mode a plain open() or mkdir() would have, so that teammates read a
    shared run as the user's umask allows; a folder's contents too."""
    mask = _umask()
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)` to fill a temporary file beside `path`, then move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _usual_mode(tmp)  # after the write: writers that replace the file set their own mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """JSON with indentation; sets become sorted lists and other unknown values strings."""
    text = json.dumps(data, indent=2, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    return write_text(path, text)


def write_yaml(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to fill; on success it replaces `folder` as a whole, on
    an error `folder` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield tmp
        _usual_mode(tmp)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_target(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written as asked: a folder where a file
    goes (or the reverse), a path under a file, a place without write permission. Returns the path."""
    path = Path(path)
    kind, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{what} {path} is a {other}; give a {kind} path")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise ValueError(f"{what} {path} is under {existing}, which is a file; give a {kind} path elsewhere")
    writable_in = existing if existing != path or folder else path.parent
    if not os.access(writable_in, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: no permission to write in {writable_in}; choose a {kind} you own")
    return path
