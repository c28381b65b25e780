"""Files rankmix writes: atomic, and with the permissions the user's umask gives a plain open()."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rankmix.files import atomic_folder, atomic_write, write_text


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_follow_the_umask(tmp_path, umask):
    """What open() and mkdir() would create: 0666 and 0777 less the umask (mkstemp alone gives 0600)."""
    written = write_text(tmp_path / "results.json", "{}")
    plain = tmp_path / "plain.txt"
    plain.write_text("{}")
    assert mode(written) == mode(plain) == 0o666 & ~umask
    with atomic_folder(tmp_path / "adapter") as folder:
        write_text(folder / "adapter_config.json", "{}")
    (tmp_path / "plain-dir").mkdir()
    assert mode(tmp_path / "adapter") == mode(tmp_path / "plain-dir") == 0o777 & ~umask
    assert mode(tmp_path / "adapter" / "adapter_config.json") == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = write_text(tmp_path / "run.yaml", "old")

    def broken(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]
