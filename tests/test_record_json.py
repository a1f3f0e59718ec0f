"""Records as JSON (record.dump / record.load): what the container record rests on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ocirun import jsonio
from ocirun.record import Record, dump, load
from ocirun.spec import Spec, parse_spec
from ocirun.specgen import default_spec

REPO = Path(__file__).resolve().parent.parent


def test_the_default_config_round_trips() -> None:
    spec = parse_spec(default_spec(), "/bundle")
    assert load(Spec, json.loads(jsonio.dumps(dump(spec)))) == spec


def test_a_config_using_every_kind_of_field_round_trips(tmp_path: Path) -> None:
    raw = default_spec()
    raw["linux"]["resources"] = {
        "memory": {"limit": 1 << 20}, "cpu": {"shares": 512, "cpus": "0"},
        "pids": {"limit": 10}, "unified": {"memory.high": "max"},
        "blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 10}]},
        "devices": [{"allow": False, "access": "rwm"}]}
    raw["linux"]["namespaces"].append({"type": "time"})
    raw["linux"]["timeOffsets"] = {"boottime": {"secs": 5, "nanosecs": 1}}
    raw["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}
    raw["hooks"] = {"poststop": [{"path": "/bin/true", "args": ["true"], "timeout": 3}]}
    raw["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 9, "soft": 9}]
    raw["annotations"] = {"a": "b"}
    spec = parse_spec(raw, str(tmp_path))
    back = load(Spec, json.loads(jsonio.dumps(dump(spec))))
    assert back == spec
    assert back.linux.time_offsets == spec.linux.time_offsets


def test_defaults_are_left_out() -> None:
    class Inner(Record):
        a: int = 1

    class Outer(Record):
        inner: Inner = Inner()
        items: tuple[Inner, ...] = ()
        name: str | None = None

    assert dump(Outer()) == {}
    assert dump(Outer(items=(Inner(a=2),))) == {"items": [{"a": 2}]}


@pytest.mark.parametrize("data", [[], {"oci_version": "1", "root": 5},
                                  {"oci_version": "1", "mounts": {"x": 1}}])
def test_a_damaged_record_raises_a_plain_error(data: object) -> None:
    with pytest.raises((TypeError, KeyError, ValueError, AttributeError)):
        load(Spec, data)
