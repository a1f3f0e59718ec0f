"""`run`: create + start, then in the foreground wait (relaying a terminal or
forwarding signals) and delete."""

from __future__ import annotations

import os

from ocirun import container
from ocirun import process as proc
from ocirun.create import CreateOptions, create
from ocirun.errors import OciError


def _import_the_rest() -> None:
    """What `run` uses once the container is created, imported while create waits
    for the init to build its rootfs (create's `meanwhile`), not before the fork."""
    from ocirun import delete, start  # noqa: F401
    from ocirun.cgroups import records  # noqa: F401 - delete's manager_from_state
    from ocirun import fstree  # noqa: F401 - delete's cgroup and state dir removal


def run(root: str, container_id: str, opts: CreateOptions, detach: bool,
        keep: bool = False) -> int:
    """create + start; in the foreground, wait and return the container's status,
    then delete it unless `keep` (it stays, stopped, for `state` and `delete`).
    With process.terminal and no --console-socket, the runtime receives the pty
    master itself and attaches the caller's terminal to it."""
    if not detach:
        from ocirun import sys as ksys
        # The init is our child (or, after a stage1, our grandchild): as a subreaper
        # we can wait for it either way.
        ksys.set_child_subreaper()
    from ocirun.spec import read_spec
    ours = theirs = None
    config = read_spec(os.path.abspath(opts.bundle))  # parsed once, handed to create
    spec = config[0]
    if not opts.console_socket:
        if spec.process is not None and spec.process.terminal:
            if detach:
                raise OciError("process.terminal: a detached container with a terminal "
                               "needs --console-socket")
            from ocirun import console
            ours, theirs = console.socket_pair()
    master = -1
    try:
        state, spec, released = create(root, container_id, opts, console_sock=theirs,
                                       config=config, meanwhile=_import_the_rest,
                                       release_early=True)
        from ocirun.delete import delete
        from ocirun.start import start
        stored = container.known(spec)
        if ours is not None:
            from ocirun import console
            try:
                master = console.receive_master(ours)
            except BaseException:
                delete(root, container_id, force=True, stored=stored)
                raise
    finally:
        if ours is not None:
            ours.close()
    try:
        try:
            start(root, container_id, stored, released)
        except BaseException:
            delete(root, container_id, force=True, stored=stored)
            raise
        if detach:
            return 0
        if master >= 0:
            from ocirun import console
            status = proc.exit_status(console.relay(master, state.pid, proc.FORWARDED_SIGNALS))
        else:
            status = proc.wait_forwarding_signals(state.pid)
    finally:
        if master >= 0:
            os.close(master)
    if not keep:
        delete(root, container_id, force=True, stored=stored)
    return status

