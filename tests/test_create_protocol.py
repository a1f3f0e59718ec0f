"""The parent's side of the create protocol, driven by a scripted channel and a
recording cgroup.

stage1 and the init go on with their work while the parent moves them into the
container's cgroup (the first cgroup.procs write waits out an RCU grace period).  The
init hears nothing from the parent before both moves are done: its first answer is
what tells it that it is in its cgroup.
"""

from __future__ import annotations

import os
from typing import Any

from ocirun import lifecycle
from ocirun import state as st
from ocirun.spec import parse_spec
from ocirun.specgen import default_spec


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []


class ScriptedChannel:
    def __init__(self, log: Recorder, messages: list[dict[str, Any]]) -> None:
        self.log = log
        self.incoming = list(messages)

    def expect(self, *kinds: str) -> tuple[dict[str, Any], list[int]]:
        msg = self.incoming.pop(0)
        assert msg["t"] in kinds, (msg, kinds)
        return msg, []

    def send(self, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
        self.log.events.append(("send", {"t": kind, **fields}))


class RecordingCgroup:
    def __init__(self, log: Recorder) -> None:
        self.log = log

    def add_process(self, pid: int) -> None:
        self.log.events.append(("add_process", pid))


def _exited_child() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def _drive(messages: list[dict[str, Any]], with_cgroup: bool = True) -> tuple[st.State, Recorder]:
    spec = parse_spec(default_spec(), "/bundle")
    state = st.State(id="c", bundle="/bundle", rootfs="/bundle/rootfs")
    log = Recorder()
    undo = lifecycle._Undo()
    lifecycle._drive_children(ScriptedChannel(log, messages), spec, state,  # type: ignore[arg-type]
                              _exited_child(), undo,
                              RecordingCgroup(log) if with_cgroup else None)
    undo.steps.clear()
    return state, log


def test_the_init_is_moved_into_its_cgroup_before_the_parent_answers_it() -> None:
    state, log = _drive([{"t": "pid", "pid": 4242}, {"t": "hooks"}, {"t": "ready"}])
    assert state.pid == 4242
    assert log.events[0] == ("add_process", 4242)
    assert log.events[1] == ("send", {"t": "go"})  # "you are in your cgroup"
    kind, hooks_answer = log.events[2]
    assert kind == "send" and hooks_answer["t"] == "go"
    assert '"pid": 4242' in hooks_answer["state"]  # the hooks' state names the init
    assert len(log.events) == 3


def test_without_a_cgroup_the_init_is_answered_all_the_same() -> None:
    state, log = _drive([{"t": "pid", "pid": 77}, {"t": "hooks"}, {"t": "ready"}],
                        with_cgroup=False)
    assert state.pid == 77
    assert [e[1]["t"] for e in log.events] == ["go", "go"]
