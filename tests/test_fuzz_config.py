"""Hostile config.json: every create either works or fails with one line that names
the problem, and after `delete --force` the host is as it was (no state dir, mount,
cgroup or process of the case left).

Cases come from the runtime-spec schemas (hypothesis-jsonschema: process, mounts) and
from mutations of a valid config (wrong types, out-of-range numbers, NUL bytes, lone
surrogates, magic-link paths).  CI runs a bounded number of examples; a long run:

    OCIRUN_FUZZ_EXAMPLES=2000 python3 -m pytest tests/test_fuzz_config.py
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

hypothesis = pytest.importorskip("hypothesis")
hypothesis_jsonschema = pytest.importorskip("hypothesis_jsonschema")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import REPO, Runtime, _cgroup_leftovers, base_config  # noqa: E402

EXAMPLES = int(os.environ.get("OCIRUN_FUZZ_EXAMPLES", "30"))
SCHEMAS = REPO / "schemas"

HOSTILE = [None, True, 0, -1, 2**31, 2**63, 2**64, 10**30, 1.5, "", "a", "\x00x", "\ud800",
           "/proc/self/fd/3", "/proc/1/root", "../../../..", "x" * 300, [], {}, [""],
           ["\x00"], {"a": "\x00"}, "CAP_FOO", "-1", "/", "//dev/../../etc"]

# Paths left alone: they would only aim the case at other parts of the host, which
# the caller (trusted) chooses: the rootfs, the cgroup, hooks (host programs).
_KEEP = (("root",), ("linux", "cgroupsPath"), ("hooks",))


def _inline(node: Any, here: str, cache: dict[str, Any]) -> Any:
    """The schema with every "$ref" (also to the other files) replaced by its target."""
    if isinstance(node, list):
        return [_inline(v, here, cache) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        file, _, pointer = node["$ref"].partition("#")
        file = file or here
        if file not in cache:
            cache[file] = json.loads((SCHEMAS / file).read_text())
        target: Any = cache[file]
        for part in pointer.strip("/").split("/"):
            if part:
                target = target[part]
        return _inline(target, file, cache)
    return {k: _inline(v, here, cache) for k, v in node.items()}


def _schema(*path: str) -> dict[str, Any]:
    cache: dict[str, Any] = {}
    top = json.loads((SCHEMAS / "config-schema.json").read_text())
    node = top
    for part in path:
        node = node[part]
    return _inline(node, "config-schema.json", cache)


def _paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(config: dict[str, Any], edits: list[tuple[int, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    paths = [p for p in _paths(out) if p and not any(p[:len(k)] == k for k in _KEEP)]
    for index, value in edits:
        path = paths[index % len(paths)]
        node: Any = out
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent
    return out


@pytest.fixture(scope="module")
def fuzz_rootfs(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs of the fuzz run's own: mount targets are created in it."""
    dest = tmp_path_factory.mktemp("fuzz") / "rootfs"
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    return dest


def _mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {" ".join(line.split()[3:5]) for line in f}


def _check_case(runtime: Runtime, config: dict[str, Any]) -> None:
    bundle = runtime.work / "fuzz-bundle"
    bundle.mkdir(exist_ok=True)
    try:
        text = json.dumps(config)
    except (UnicodeEncodeError, ValueError):
        return
    (bundle / "config.json").write_bytes(text.encode("utf-8", "surrogatepass"))
    mounts_before = _mounts()
    cid = runtime.new_id("fuzz")
    r = runtime("create", "--bundle", str(bundle), cid, timeout=60)
    err = r.stderr.decode(errors="replace")
    if r.returncode != 0:  # warnings (e.g. an unknown capability) may come before it
        errors = [line for line in err.strip().splitlines()
                  if not line.startswith("ocirun: warning: ")]
        assert len(errors) == 1, f"not one line:\n{err}"
    assert "internal error" not in err and "Traceback" not in err, err
    d = runtime("delete", "--force", cid)
    assert d.returncode == 0, d.stderr.decode(errors="replace")
    assert not (runtime.root / cid).exists(), "state dir left behind"
    assert _mounts() == mounts_before, "mounts left behind on the host"
    assert not _cgroup_leftovers(runtime.cgroup_prefix), "cgroup left behind"


_FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))


def _valid(runtime: Runtime, rootfs: Path) -> dict[str, Any]:
    return base_config(rootfs, ["sleep", "1000"], f"{runtime.cgroup_prefix}-fuzz")


def test_mutated_configs_fail_in_one_line_and_leave_nothing(runtime: Runtime,
                                                            fuzz_rootfs: Path) -> None:
    valid = _valid(runtime, fuzz_rootfs)

    @_FUZZ_SETTINGS
    @given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(HOSTILE)),
                    min_size=1, max_size=4))
    def case(edits: list[tuple[int, Any]]) -> None:
        _check_case(runtime, _mutate(valid, edits))
    case()


def test_schema_generated_process_and_mounts_fail_in_one_line_and_leave_nothing(
        runtime: Runtime, fuzz_rootfs: Path) -> None:
    valid = _valid(runtime, fuzz_rootfs)
    from_schema = hypothesis_jsonschema.from_schema
    process = from_schema(_schema("properties", "process"))
    mount = from_schema(_schema("properties", "mounts", "items"))

    @_FUZZ_SETTINGS
    @given(st.one_of(st.none(), process), st.lists(mount, max_size=3))
    def case(new_process: Any, new_mounts: list[Any]) -> None:
        config = copy.deepcopy(valid)
        if new_process is not None:
            config["process"] = new_process
        config["mounts"] = config["mounts"] + new_mounts
        _check_case(runtime, config)
    case()
