"""Small images built by hand for the `ocirun bundle` tests: layer tars from entry
lists, written as an OCI image layout (a directory, or its tar) or a docker-archive."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any


def entry(name: str, kind: str = "file", data: bytes = b"", *, mode: int | None = None,
          uid: int = 0, gid: int = 0, link: str = "", dev: tuple[int, int] = (0, 0),
          pax: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "data": data, "mode": mode, "uid": uid, "gid": gid,
            "link": link, "dev": dev, "pax": pax or {}}


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def layer_tar(entries: list[dict[str, Any]], tree: Path | None = None) -> bytes:
    """A layer: the files of `tree` (if given) that no entry names, then `entries` in
    order.  The tree is a shared rootfs that other tests' mount points land in (/data),
    and podman refuses a layer that names one path twice."""
    named = {e["name"] for e in entries}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if tree is not None:
            for path in sorted(tree.rglob("*")):
                arcname = str(path.relative_to(tree))
                if not any(arcname == n or arcname.startswith(n + "/") for n in named):
                    tar.add(path, arcname=arcname, recursive=False)
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.type = _TYPES[e["kind"]]
            info.mode = e["mode"] if e["mode"] is not None else (
                0o755 if e["kind"] == "dir" else 0o644)
            info.uid, info.gid, info.mtime = e["uid"], e["gid"], 1_700_000_000
            info.linkname = e["link"]
            info.devmajor, info.devminor = e["dev"]
            info.pax_headers = dict(e["pax"])
            data = e["data"] if e["kind"] == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layers: list[bytes], cmd: list[str], **config: Any) -> dict[str, Any]:
    return {"architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                        os.uname().machine),
            "os": "linux", "config": {"Cmd": cmd, **config},
            "rootfs": {"type": "layers", "diff_ids": [_sha(t) for t in layers]}}


def oci_layout(dest: Path, layers: list[bytes], config: dict[str, Any], ref: str,
               compress: bool | str = True) -> Path:
    """An OCI image layout directory holding one image named `ref`."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = _sha(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest
    layer_descs = []
    for tar in layers:
        if compress == "zstd":
            blob = subprocess.run(["zstd", "-q", "-c"], input=tar, check=True,
                                  capture_output=True).stdout
            suffix = "+zstd"
        elif compress:
            blob, suffix = gzip.compress(tar, mtime=0), "+gzip"
        else:
            blob, suffix = tar, ""
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + suffix,
                            "digest": put(blob), "size": len(blob)})
    config_blob = json.dumps(config).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config_blob), "size": len(config_blob)},
        "layers": layer_descs}).encode()
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": ref}}]}))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest


def tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return dest


def docker_archive(dest: Path, layers: list[bytes], config: dict[str, Any], tag: str) -> Path:
    """A docker-archive tar (`docker save`'s format) holding one image tagged `tag`."""
    config_blob = json.dumps(config).encode()
    config_name = _sha(config_blob)[7:] + ".json"
    names = [_sha(t)[7:] + ".tar" for t in layers]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": names}])
    with tarfile.open(dest, "w") as tar:
        for name, data in [(config_name, config_blob), *zip(names, layers),
                           ("manifest.json", manifest.encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def tree_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a rootfs holds, path by path: type, mode, owner, content or link target,
    device number, and which paths share an inode (hard links)."""
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            kind = st.st_mode & 0o170000
            detail: Any = None
            if kind == 0o100000:
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
                groups.setdefault(st.st_ino, []).append(rel)
            elif kind == 0o120000:
                detail = os.readlink(path)
            elif kind in (0o020000, 0o060000):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = (kind, st.st_mode & 0o7777 if kind != 0o120000 else None,
                        st.st_uid, st.st_gid, detail)
    for paths in groups.values():
        for rel in paths:
            out[rel] += (min(paths) if len(paths) > 1 else None,)
    return out
