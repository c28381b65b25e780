"""Where commands write: one rule for every `--out` (README: "What rankmix guarantees about your files").

A file output (`eval --out`, `predict --out`) never replaces the command's own input or recipe, nor a
file inside a run folder (training alone writes there), and replaces a user's existing file only with
`--force`. A folder output (`merge`, `export-lora`, `plot`) is new or empty, or a folder that the same
command wrote before and that holds nothing else: rankmix marks such a folder with `.rankmix-output`,
which lists what it wrote there, so it never replaces or deletes a file it did not write."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..files import atomic_folder, check_target, parse_json, write_json
from .run_folder import is_run_folder, listing

OUTPUT_MARKER = ".rankmix-output"


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # also a hard link, or another spelling of the path
    return a.resolve() == b.resolve()


def check_file_out(path: str | os.PathLike, inputs: Iterable[str | os.PathLike], force: bool) -> Path:
    """Refuse, before any work, a file output that would replace an input of the command, a file of a
    run folder, or (without `force`) any existing file."""
    path = check_target(path, "--out")
    run = next((p for p in path.resolve().parents if is_run_folder(p)), None)
    if run is not None:
        raise ValueError(
            f"--out {path} is inside the run folder {run}, whose files only training writes; choose a file "
            "outside it"
        )
    for source in map(Path, inputs):
        if _same(path, source) or (source.is_dir() and path.resolve().is_relative_to(source.resolve())):
            raise ValueError(
                f"--out {path} is this command's input {source}, which rankmix never writes over; "
                "choose another file"
            )
    if path.exists() and not force:
        raise ValueError(f"--out {path} exists; pass --force to replace it, or choose another file")
    return path


def _marked(folder: Path) -> tuple[str | None, set[str]]:
    """(the command that wrote `folder`, the names it wrote there), from its marker; (None, {}) if none
    can be read."""
    try:
        mark = parse_json((folder / OUTPUT_MARKER).read_text())
        return str(mark["written_by"]), set(map(str, mark["entries"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None, set()


def check_folder_out(path: str | os.PathLike, command: str) -> Path:
    """Refuse, before any work, a folder output that holds anything `command` did not write there."""
    path = check_target(path, "--out", folder=True)
    if not path.is_dir():
        return path
    names = {p.name for p in path.iterdir()} - {OUTPUT_MARKER}
    written_by, entries = _marked(path)
    foreign = sorted(names - entries) if written_by == command else sorted(names)
    if foreign or (names and (path / OUTPUT_MARKER).is_symlink()):
        raise ValueError(
            f"--out {path} already holds {listing(foreign or sorted(names))}, which `rankmix {command}` did "
            "not write, and rankmix writes only into a new or empty folder or one it wrote for the same "
            "command; remove those files or choose another folder"
        )
    return path


def mark_output(folder: Path, command: str, names: Iterable[str]) -> None:
    """Record in `folder` that `command` wrote `names` there (and what it wrote before that is still
    there), so that the next run of the same command may replace them."""
    written_by, before = _marked(folder)
    kept = {n for n in before if (folder / n).exists()} if written_by == command else set()
    write_json(folder / OUTPUT_MARKER, {"written_by": command, "entries": sorted(kept | set(names))})


@contextmanager
def output_folder(out: Path, command: str) -> Iterator[Path]:
    """A temporary folder to fill, which then replaces `out` whole (files.atomic_folder), marked as
    `command`'s."""
    with atomic_folder(out) as tmp:
        yield tmp
        mark_output(tmp, command, [p.name for p in tmp.iterdir()])
