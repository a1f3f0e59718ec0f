"""The parent's side of the create protocol, driven by a scripted channel.

stage1 and the init share one socket to the parent.  stage1 reports the init's pid;
the init speaks only after that (init.stage1 holds it on a pipe until then), so the
parent never runs hooks, or records a container, with pid 0.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import pytest

from ocirun import create, sync
from ocirun import state as st
from ocirun.spec import parse_spec
from ocirun.specgen import default_spec
from ocirun.sync import ChildError


class ScriptedChannel:
    """Packets as the children send them (wire dicts, decoded as recv() does); what
    the parent sends is kept as wire dicts too."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.incoming = list(messages)
        self.sent: list[dict[str, Any]] = []

    def expect(self, *types: type) -> tuple[Any, list[int]]:
        msg = sync.decode(json.dumps(self.incoming.pop(0)).encode())
        assert isinstance(msg, types), (msg, types)
        return msg, []

    def send(self, msg: Any, fds: list[int] | None = None) -> None:
        self.sent.append(json.loads(sync.encode(msg)))


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
    undo = create.Undo()
    with tempfile.TemporaryDirectory() as root:
        cdir = st.ContainerDir(root, "c")
        cdir.make()
        try:
            create.drive_children(ch, spec, state, stage1, undo,  # type: ignore[arg-type]
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
    assert ch.sent[0]["state"]["pid"] == 4242


@pytest.mark.parametrize("first", ["hooks", "ready", "seccomp"])
def test_an_init_speaking_before_its_pid_is_known_is_an_error(first: str) -> None:
    with pytest.raises(ChildError, match="before its pid"):
        _drive([{"t": first}, {"t": "pid", "pid": 4242}, {"t": "ready"}])


@pytest.mark.parametrize("packet,problem", [
    (b'{"t": "launch"}', "unknown message 'launch'"),
    (b'{"t": "pid"}', "missing 'pid'"),
    (b'{"t": "pid", "pid": "4242"}', "bad field 'pid'"),
    (b'{"t": "ready", "extra": 1}', "bad field 'extra'"),
    (b'{"t": "go", "mounts": [1, "x"]}', "bad field 'mounts'"),
    (b'[1, 2]', "unknown message None"),
    (b'{"t": ["pid"]}', "unknown message ['pid']"),
    (b'{"t": ', "malformed message"),
])
def test_a_malformed_message_is_a_protocol_error(packet: bytes, problem: str) -> None:
    with pytest.raises(sync.ProtocolError, match=re.escape(problem)):
        sync.decode(packet)


def test_every_message_survives_the_wire() -> None:
    for msg in (sync.InitPid(pid=7, born=True, why=""), sync.Go(state={"id": "x"}, mounts=(0, 2)),
                sync.Failed(msg="no", code=3), sync.BindSources(mounts=(1,)), sync.Ready()):
        assert sync.decode(sync.encode(msg)) == msg


def test_a_real_channel_passes_fds_and_types() -> None:
    a, b = sync.Channel.pair()
    r, w = os.pipe()
    try:
        a.send(sync.SeccompListener(), [r])
        msg, fds = b.expect(sync.SeccompListener)
        assert isinstance(msg, sync.SeccompListener) and len(fds) == 1
        os.close(fds[0])
        a.send(sync.Failed(msg="it broke", code=5))
        with pytest.raises(ChildError, match="it broke") as e:
            b.expect(sync.Ready)
        assert e.value.exit_code == 5
        a.close()
        with pytest.raises(ChildError) as e:
            b.expect(sync.Ready)
        assert e.value.kind == "died"
    finally:
        os.close(r)
        os.close(w)
        b.close()


class RecordingCgroup:
    """The manager calls _Children makes, in order."""

    self_placing = True

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.cgroups_path = "c"

    def placement(self) -> tuple[str | None, tuple[str, ...]]:
        return "/cg2/c", ("/cg1/pids/c/tasks",)

    def apply(self, resources: Any) -> None:
        self.calls.append("apply")

    def apply_devices(self, resources: Any) -> None:
        self.calls.append("apply_devices")

    def apply_limits(self, resources: Any) -> None:
        self.calls.append("apply_limits")

    def add_process(self, pid: int) -> None:
        self.calls.append("add_process")

    def to_state(self) -> None:
        return None


@pytest.mark.parametrize("born,direct,before_go,after_go", [
    # The init, born in its cgroup: device rules before the fork (it makes its
    # device nodes soon after, and v1's rules pass a deny-all moment), the rest while
    # it builds its rootfs.
    (True, True, ["apply_devices"], True),
    # A stage1 forks the init: every limit (pids.max) before "go".
    (True, False, ["apply_devices", "apply_limits"], False),
    # clone3 refused: we write its pid, after every limit, before "go".
    (False, True, ["apply_devices", "apply_limits"], False),
])
def test_limits_before_and_after_go(born: bool, direct: bool, before_go: list[str],
                                    after_go: bool, tmp_path: Any,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    spec = parse_spec(default_spec(), "/bundle")
    state = st.State(id="c", bundle="/bundle", rootfs="/bundle/rootfs", creating=True)
    cdir = st.ContainerDir(str(tmp_path), "c")
    children = create._Children(spec, state, cdir, RecordingCgroup(calls), False,
                                create.Undo())
    written: list[str] = []
    from ocirun.cgroups import fsutil
    monkeypatch.setattr(fsutil, "write_pid", lambda directory, pid: written.append(directory))
    children._devices_before_fork()
    assert calls == ["apply_devices"]  # before the fork
    later = children._adopt(12345, born, direct)
    assert calls == before_go
    assert later is after_go
    assert written == ([] if born else ["/cg2/c"])


def test_a_cgroup_we_place_the_child_in_gets_every_limit_after_the_fork(
        tmp_path: Any) -> None:
    """No self-placement (rootless, the systemd driver): nothing before the fork."""
    calls: list[str] = []
    spec = parse_spec(default_spec(), "/bundle")
    state = st.State(id="c", bundle="/bundle", rootfs="/bundle/rootfs", creating=True)
    children = create._Children(spec, state, st.ContainerDir(str(tmp_path), "c"),
                                RecordingCgroup(calls), True, create.Undo())
    children._devices_before_fork()
    assert calls == []
    assert children._adopt(12345, False, True) is False
    assert calls == ["apply", "add_process"]


@pytest.mark.parametrize("early", [False, True])
def test_run_releases_the_init_before_writing_its_record(early: bool, tmp_path: Any,
                                                         monkeypatch: Any) -> None:
    """create's release_early (`run`): the exec fifo has its reader, the init is on its
    way to execve, by the time state.json is written; a plain create leaves it
    waiting for `start`."""
    import subprocess
    cdir = st.ContainerDir(str(tmp_path), "c")
    cdir.make()
    fifo = cdir.file(st.EXEC_FIFO)
    os.mkfifo(fifo)
    init = subprocess.Popen(["sleep", "30"])
    seen: list[str] = []

    def write(state: st.State) -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO: no reader
            seen.append("released")
        except OSError:
            seen.append("waiting")
    monkeypatch.setattr(cdir, "write", write)
    state = st.State(id="c", bundle="/b", rootfs="/b/rootfs", pid=init.pid, creating=True)
    try:
        released = create._created(cdir, state, create.CreateOptions(bundle="/b"), early,
                                   create.Undo())
        assert seen == ["released" if early else "waiting"]
        assert state.status == "created" and not state.creating
        assert (released is not None) is early
        for fd in released or ():
            os.close(fd)
    finally:
        init.kill()
        init.wait()
