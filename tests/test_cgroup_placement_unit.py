"""Manager-level rules behind `exec --cgroup` and the placement check, on plain
directories (no cgroup filesystem needed): the kernel-visible placement itself is
tested in test_container_cgroups.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocirun.cgroups.v1 import V1Manager
from ocirun.cgroups.v2 import V2Manager
from ocirun.errors import OciError


def _v1(tmp_path: Path) -> V1Manager:
    paths = {}
    for key in ("pids", "cpu,cpuacct"):
        d = tmp_path / key / "ctr"
        (d / "sub").mkdir(parents=True)
        paths[key] = str(d)
    return V1Manager("ctr", paths, hybrid=False)


def test_sub_paths_with_and_without_a_controller(tmp_path: Path) -> None:
    m = _v1(tmp_path)
    assert m.sub_paths(("sub",)) == {k: os.path.join(d, "sub") for k, d in m.paths.items()}
    got = m.sub_paths(("cpu:sub",))
    assert got["cpu,cpuacct"].endswith("/sub") and got["pids"] == m.paths["pids"]
    # ".." cannot leave the container's cgroup: it names the container's own
    with pytest.raises(OciError, match="no sub-cgroup named"):
        m.sub_paths(("../..",))


@pytest.mark.parametrize("wanted,error", [
    (("missing",), "does not exist"),
    (("pids:a:b",), "one \"controller:\" prefix at most"),
    (("sub", "pids:sub"), "each needs its controller: prefix"),
    (("memory:sub",), "no cgroup of controller memory"),
])
def test_sub_paths_errors_name_the_argument(tmp_path: Path, wanted: tuple[str, ...],
                                            error: str) -> None:
    with pytest.raises(OciError, match=error) as e:
        _v1(tmp_path).sub_paths(wanted)
    assert "exec --cgroup" in e.value.message


def test_controllers_are_refused_on_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "ctr" / "sub").mkdir(parents=True)
    m = V2Manager("ctr", {"": str(tmp_path / "ctr")})
    assert m.sub_paths(("sub",)) == {"": str(tmp_path / "ctr" / "sub")}
    with pytest.raises(OciError, match="cgroup v1 only"):
        m.sub_paths(("pids:sub",))


def test_placement_splits_cgroup2_from_v1_tasks(tmp_path: Path) -> None:
    m = V1Manager("ctr", {"pids": "/x/pids/ctr", "": "/x/unified/ctr"}, hybrid=True)
    assert m.placement() == ("/x/unified/ctr", ("/x/pids/ctr/tasks",))


def test_placed_compares_with_proc_pid_cgroup() -> None:
    """Our own cgroups (some at a hierarchy's root, "/"): placed there and only there."""
    from ocirun.cgroups import detect
    layout = detect.detect()
    own = detect.proc_cgroups()
    dirs = {h.key: h.fs_path(detect.own_cgroup(layout, h, own)) for h in layout.hierarchies}
    here = V1Manager("x", dirs, hybrid=False)
    assert here.placed(os.getpid())
    for key in dirs:  # one hierarchy wrong is enough
        elsewhere = V1Manager("x", {**dirs, key: os.path.join(dirs[key], "other")},
                              hybrid=False)
        assert not elsewhere.placed(os.getpid()), key
    assert not here.placed(2 ** 22 + 1)  # no such process
