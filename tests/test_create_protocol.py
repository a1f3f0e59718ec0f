"""The parent's side of the create protocol, driven by a scripted channel.

stage1 and the init share one socket to the parent.  stage1 reports the init's pid;
the init speaks only after that (init.stage1 holds it on a pipe until then), so the
parent never runs hooks, or records a container, with pid 0.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest

from ocirun import lifecycle
from ocirun import state as st
from ocirun.spec import parse_spec
from ocirun.specgen import default_spec
from ocirun.sync import ChildError


class ScriptedChannel:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.incoming = list(messages)
        self.sent: list[dict[str, Any]] = []

    def expect(self, *kinds: str) -> tuple[dict[str, Any], list[int]]:
        msg = self.incoming.pop(0)
        assert msg["t"] in kinds, (msg, kinds)
        return msg, []

    def send(self, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
        self.sent.append({"t": kind, **fields})


def _exited_child() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def _drive(messages: list[dict[str, Any]],
           records: list[st.State] | None = None) -> tuple[st.State, ScriptedChannel]:
    spec = parse_spec(default_spec(), "/bundle")
    state = st.State(id="c", bundle="/bundle", rootfs="/bundle/rootfs", creating=True)
    ch = ScriptedChannel(messages)
    stage1 = _exited_child()
    undo = lifecycle._Undo()
    with tempfile.TemporaryDirectory() as root:
        cdir = st.ContainerDir(root, "c")
        cdir.make()
        try:
            lifecycle._drive_children(ch, spec, state, stage1, undo,  # type: ignore[arg-type]
                                      cdir)
        finally:
            undo.steps.clear()
            try:
                os.waitpid(stage1, 0)
            except ChildProcessError:
                pass
            if records is not None and (record := cdir.read()) is not None:
                records.append(record)
    return state, ch


def test_hooks_get_the_state_with_the_init_pid() -> None:
    records: list[st.State] = []
    state, ch = _drive([{"t": "pid", "pid": 4242}, {"t": "hooks"}, {"t": "ready"}], records)
    assert state.pid == 4242
    # recorded before anything else happens, for a delete --force after a killed create
    assert records[0].pid == 4242 and records[0].creating
    assert [m["t"] for m in ch.sent] == ["go"]
    assert '"pid": 4242' in ch.sent[0]["state"]


@pytest.mark.parametrize("first", ["hooks", "ready", "seccomp"])
def test_an_init_speaking_before_its_pid_is_known_is_an_error(first: str) -> None:
    with pytest.raises(ChildError, match="before its pid"):
        _drive([{"t": first}, {"t": "pid", "pid": 4242}, {"t": "ready"}])
