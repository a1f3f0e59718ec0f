"""What the engine tests share: the runtimes under test, an ocirun the engines can exec,
the busybox image as a tar, and small process helpers.

Every scenario runs twice, with ocirun and with runc as the reference: a scenario that
fails with both is the environment's problem, one that fails with ocirun only is ours.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNC = shutil.which("runc") or "/usr/sbin/runc"
RUNTIMES = ("ocirun", "runc")


def require(*binaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("engine tests need root")
    missing = [b for b in binaries if not (shutil.which(b) or os.path.exists(b))]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (tests/setup-engines.sh)")


def short_tmpdir(prefix: str) -> Path:
    """A private, world-traversable dir with a short path (unix socket paths are short;
    a user-namespaced container must reach its rootfs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def write_ocirun_wrapper(directory: Path, state_root: Path, name: str = "ocirun") -> Path:
    """An executable engines can run: the repo's ocirun on this interpreter, with a
    private state root (a --root the engine passes comes later and wins)."""
    path = directory / name
    path.write_text("#!/bin/sh\n"
                    f"PYTHONPATH={REPO} exec {sys.executable} -m ocirun "
                    f"--root {state_root} \"$@\"\n")
    path.chmod(0o755)
    return path


def busybox_tar(rootfs: Path, dest: Path) -> Path:
    """The busybox rootfs as a plain tar (what `podman import`/`docker import` take)."""
    with tarfile.open(dest, "w") as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry)
    return dest


def run(cmd: list[str], timeout: float = 120, check: bool = False, **kw: Any
        ) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n"
                             f"stdout: {r.stdout.decode(errors='replace')}\n"
                             f"stderr: {r.stderr.decode(errors='replace')}")
    return r


def out(r: subprocess.CompletedProcess) -> str:
    return r.stdout.decode(errors="replace")


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def host_cgroup_file(pid: int, controller: str, name: str) -> str:
    """Read `name` of pid's cgroup for `controller` (v1), or of its v2 cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        entries = [line.rstrip("\n").split(":", 2) for line in f]
    for _n, controllers, path in entries:
        if controller in controllers.split(","):
            with open(f"/sys/fs/cgroup/{controller}{path}/{name}") as g:
                return g.read().strip()
    for _n, controllers, path in entries:
        if controllers == "":
            base = "/sys/fs/cgroup/unified" if os.path.isdir(
                "/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
            with open(f"{base}{path}/{name}") as g:
                return g.read().strip()
    raise AssertionError(f"no {controller} cgroup for {pid}")


def leftover_mounts(prefix: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(prefix))]


def ocirun_leftovers(state_root: Path) -> list[str]:
    if not state_root.exists():
        return []
    return [p.name for p in state_root.iterdir() if not p.name.startswith(".")]


def seccomp_deny_mkdir(path: Path) -> Path:
    """A seccomp profile (engine format) that allows all but mkdir/mkdirat (EPERM)."""
    import json
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}]}))
    return path


def oci_archive(rootfs: Path, dest: Path, ref: str) -> Path:
    """An OCI image layout tar of the rootfs as one layer, named `ref` for containerd
    (`ctr image import`), built by hand: no registry, no umoci needed."""
    import hashlib
    import io
    import json

    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry)
    layer = blob(layer_buf.getvalue())
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = blob(json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
    }).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}}]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index).encode()}
    files.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
    with tarfile.open(dest, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest
