"""``lmops.common.files``: the atomic writers every result file goes through."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lmops.common.files import atomic_directory, atomic_write


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_atomic_write_replaces_and_sets_normal_permissions(tmp_path, umask_022):
    target = tmp_path / "report.json"
    target.write_text("old")
    atomic_write(str(target), lambda tmp: Path(tmp).write_text(json.dumps({"a": 1})))  # a str path too
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0o600
    assert not _leftovers(tmp_path)


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def half_then_fail(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_atomic_directory_permissions_and_failure(tmp_path, umask_022):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1" and stat.S_IMODE(target.stat().st_mode) == 0o755
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_directory(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and not _leftovers(tmp_path)
