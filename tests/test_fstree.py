"""ocirun.fstree: walks and removals of trees a container may have made (no root)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ocirun import fstree


def _nest(top: Path, depth: int) -> None:
    """`depth` directories named a, one in the other, made relative to an fd (so no
    path of the whole length is ever formed)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("a", dir_fd=fd)
            child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)


def test_a_tree_deeper_than_path_max_and_the_recursion_limit_is_removed(
        tmp_path: Path) -> None:
    top = tmp_path / "t"
    top.mkdir()
    _nest(top, 3000)  # 6000 characters of path below top, 3000 levels
    opened_before = len(os.listdir("/proc/self/fd"))
    entered = sum(1 for _fd, name in fstree.walk(str(top)) if name is None)
    assert entered == 3001
    fstree.remove(str(top))
    assert not top.exists()
    assert len(os.listdir("/proc/self/fd")) == opened_before


def test_walk_is_post_order_for_removal(tmp_path: Path) -> None:
    for d in ("x/y", "x/z", "w"):
        (tmp_path / d).mkdir(parents=True)
    left = [name for _fd, name in fstree.walk(str(tmp_path)) if name is not None]
    assert sorted(left) == ["w", "x", "y", "z"]
    assert left.index("y") < left.index("x") and left.index("z") < left.index("x")


def test_a_symlink_in_the_tree_is_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    top = tmp_path / "t"
    (top / "d").mkdir(parents=True)
    (top / "d" / "link").symlink_to(outside)
    (top / "dirlink").symlink_to(outside)
    fstree.remove(str(top))
    assert not top.exists() and (outside / "keep").read_text() == "x"


def test_a_symlink_at_the_top_is_removed_itself(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("x")
    (tmp_path / "top").symlink_to(tmp_path / "outside")
    fstree.remove(str(tmp_path / "top"))
    assert not os.path.lexists(tmp_path / "top")
    assert (tmp_path / "outside" / "keep").exists()


def test_missing_top_and_relative_to_an_fd(tmp_path: Path) -> None:
    fstree.remove(str(tmp_path / "nothing"))
    (tmp_path / "t" / "u").mkdir(parents=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fstree.remove("t", fd)
    finally:
        os.close(fd)
    assert not (tmp_path / "t").exists()


def test_a_directory_moved_during_the_walk_stops_it(tmp_path: Path) -> None:
    """Going up by "..": if the directory walked was moved elsewhere meanwhile, ".."
    is not the parent left, and the walk stops rather than go on from there."""
    (tmp_path / "t" / "a" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    moved = False
    with pytest.raises(OSError) as e:
        for fd, name in fstree.walk(str(tmp_path / "t")):
            if name is None and not moved and os.readlink(f"/proc/self/fd/{fd}").endswith("/t/a"):
                os.rename(tmp_path / "t" / "a", tmp_path / "elsewhere" / "a")
                moved = True
    assert moved and e.value.errno == errno.ESTALE
    assert (tmp_path / "elsewhere" / "a" / "b").is_dir()
