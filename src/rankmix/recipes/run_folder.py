"""A run folder knows it is one, and has one writer.

rankmix marks every folder it trains into with `.rankmix-run` (written first) and holds an OS lock on
`.rankmix-lock` while a run trains there. `--overwrite` clears only a marked folder (or a run folder of
an earlier version, which holds nothing but the files rankmix writes) and only when nothing in it is
foreign; training refuses any other non-empty folder, so rankmix never deletes, replaces or appends to
a file it did not write."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..files import check_target, write_json
from ..version import __version__
from .checkpoint import previous

RUN_CONFIG = "run.yaml"
ADAPTER_DIR = "adapter"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = previous(Path(CHECKPOINT)).name
RESULTS = "results.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
PLOTS = "plots"
MARKER = ".rankmix-run"
LOCK = ".rankmix-lock"
# every name rankmix writes at the top of a run folder; its temporary files are these names with a dot
# in front and a suffix after (files.py)
RUN_FILES = (RUN_CONFIG, ADAPTER_DIR, CHECKPOINT, PREVIOUS_CHECKPOINT, RESULTS, METRICS, TENSORBOARD, PLOTS)
RUN_FILES += (MARKER, LOCK)
FOLDERS = (ADAPTER_DIR, TENSORBOARD, PLOTS)  # the run's entries that are folders; the others are files


class RunInUse(ValueError):
    """Another process trains in this run folder."""


def _ours(name: str) -> bool:
    return name in RUN_FILES or any(name.startswith(f".{known}.") for known in RUN_FILES)


def foreign_entries(folder: Path) -> list[str]:
    """The names at the top of `folder` that rankmix does not write, sorted."""
    return sorted(p.name for p in folder.iterdir() if not _ours(p.name))


def is_run_folder(folder: Path) -> bool:
    """Marked by rankmix, or a run folder of an earlier version (before the marker): a run.yaml or a
    checkpoint, and nothing that rankmix does not write."""
    if (folder / MARKER).is_file():
        return True
    has_run = any((folder / name).is_file() for name in (RUN_CONFIG, CHECKPOINT, PREVIOUS_CHECKPOINT))
    return folder.is_dir() and has_run and not foreign_entries(folder)


def is_run_file(path: Path) -> bool:
    """A run folder's own run.yaml (or its adapter's): its paths are relative to the run folder."""
    path = Path(path).resolve()
    if path.name != RUN_CONFIG:
        return False
    folder = path.parent.parent if path.parent.name == ADAPTER_DIR else path.parent
    return is_run_folder(folder)


def _protected(folder: Path) -> str | None:
    """Why `folder` must never be cleared, if it must not."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if cwd == folder or cwd.is_relative_to(folder):
        return "it is the working directory or holds it"
    if folder == home or folder == Path(folder.anchor):
        return "it is the home folder or the root"
    if (folder / ".git").exists():
        return "it holds a .git"
    return None


def listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def holder(folder: Path) -> str:
    """Who holds the run's lock, as the lock file says (pid, host, command)."""
    try:
        info = json.loads((folder / LOCK).read_text())
        return f"process {info['pid']} on {info['host']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _take_lock(fd: int, folder: Path, patience: float = 3.0) -> None:
    """Take the run's lock on `fd`, or refuse naming who holds it. It waits up to `patience` seconds: a
    process just killed (SIGKILL) releases it only once the kernel has torn it down, which can take a
    moment after its parent saw it die."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RunInUse(
                    f"{folder} is in use: {holder(folder)} trains there; wait for it to finish (or stop "
                    "it), or choose another output_dir"
                ) from None
            time.sleep(0.05)


def check_not_in_use(folder: Path) -> None:
    """Refuse at once, before any work, a run folder that another process trains in."""
    lock = folder / LOCK
    if not lock.is_file():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        _take_lock(fd, folder)
    finally:
        os.close(fd)  # closing releases a lock taken here


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output_dir whose contents training would destroy or that it cannot
    write: a file, a folder under a file, a non-empty folder that is not a run, a run folder whose files
    lead elsewhere (symlinks), a run in use, and with --overwrite anything but a run folder that holds
    only rankmix's files."""
    check_target(out, "output_dir", folder=True)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run_folder(out):
        found = foreign_entries(out) or sorted(p.name for p in out.iterdir())
        raise ValueError(
            f"output_dir {out} holds {listing(found)} but no rankmix run, so rankmix neither trains there "
            "nor deletes it, with or without --overwrite; choose another output_dir (a new or empty one)"
        )
    for name in RUN_FILES:
        _check_own_entry(out / name)
    if os.environ.get("RANK", "0") == "0":  # the other processes of a launch find their main's lock
        check_not_in_use(out)
    if overwrite:
        _check_clearable(out)
    elif (
        not any((out / name).is_file() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT))
        and (out / ADAPTER_DIR).exists()
    ):
        raise ValueError(
            f"{out} holds a trained adapter but no {CHECKPOINT} to resume from, and a fresh run would "
            "replace it; pass --overwrite to train afresh there, or choose another output_dir"
        )


def _check_own_entry(path: Path) -> None:
    """Refuse a run file that training would write into or through although it is not the run's own: a
    symbolic link, a hard link to another file, or a file where the run keeps a folder (or the reverse)."""
    if path.is_symlink():
        raise ValueError(
            f"{path} is a symbolic link: rankmix writes a run's files only inside its folder; replace the "
            "link with the file itself, or choose another output_dir"
        )
    if not path.exists():
        return
    if path.is_dir() != (path.name in FOLDERS):
        kind, other = ("folder", "file") if path.name in FOLDERS else ("file", "folder")
        raise ValueError(
            f"{path} is a {other} where a run keeps its {kind}, so rankmix did not write it; move it out, "
            "or choose another output_dir"
        )
    if path.is_file() and path.stat().st_nlink > 1:
        raise ValueError(
            f"{path} is a hard link to another file, which training would write into; move it out (or "
            "replace it with a copy), or choose another output_dir"
        )


def _check_clearable(out: Path) -> None:
    why = _protected(out)
    found = foreign_entries(out)
    if why or found:
        reason = why or f"it also holds files that rankmix did not write ({listing(found)})"
        raise ValueError(
            f"--overwrite clears output_dir {out}, but {reason}, so rankmix leaves it alone; move those "
            "files out or choose another output_dir"
        )


@contextmanager
def claimed(out: Path, overwrite: bool) -> Iterator[None]:
    """Mark `out` as a run (the marker first), take its lock for the whole run (released when the
    process ends, however it ends), and with `overwrite` clear what an earlier run left there. Only the
    main process of a run claims its folder."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        write_json(out / MARKER, {"rankmix_run": 1, "created_by": f"rankmix {__version__}"})
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        if os.fstat(fd).st_nlink > 1:  # placed after the checks: write nothing into it
            _check_own_entry(out / LOCK)
        _take_lock(fd, out)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["rankmix", *sys.argv[1:]])[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info | {"since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        left = [entry for entry in out.iterdir() if entry.name not in (MARKER, LOCK)]
        if overwrite and left:
            _check_clearable(out)  # again, now that no other process can write there
            for entry in left:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        yield
    finally:
        os.close(fd)
