"""Reading an image: an OCI image layout (a directory, or a tar of one as `podman save
--format oci-archive` writes) or a docker-archive (`docker save`, `podman save`).

Every name the archive gives (a digest, a file in manifest.json) is checked before it
is opened, and every blob is checked against its digest: the manifest and the config
as they are read, a layer's stored digest and its uncompressed diff_id as it is
applied (layer.py).  What is read is bounded: a JSON blob by MAX_JSON, a layer by the
caller's limit on its uncompressed size.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tarfile

from ocirun.errors import OciError
from ocirun.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

MAX_JSON = 4 << 20
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_MANIFEST = ("application/vnd.oci.image.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v2+json")
_INDEX = ("application/vnd.oci.image.index.v1+json",
          "application/vnd.docker.distribution.manifest.list.v2+json")
_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64", "armv7l": "arm", "i686": "386"}


class ImageError(OciError):
    """The archive is not a readable image, or not the one its digests describe."""


class LayerRef(Record):
    path: str  # the blob inside the archive
    diff_id: str  # sha256 of the uncompressed tar, from the image config
    digest: str | None = None  # of the blob as stored (OCI), checked as it is read
    size: int | None = None


class Image(Record):
    ref: str
    config: dict[str, Any]  # the image config (config.md), already checked
    config_digest: str
    layers: tuple[LayerRef, ...]


def host_arch() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def check_digest(digest: Any, where: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(f"{where}: not a digest: {str(digest)[:80]!r}")
    return digest


def _member_name(name: Any, where: str) -> str:
    """A path inside the archive: relative, with no `..` (the archive is not trusted
    to name files outside itself)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ImageError(f"{where}: not a file name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise ImageError(f"{where}: {name!r} is not a path inside the archive")
    return "/".join(parts)


# ---------------------------------------------------------------- the archive
class Archive:
    """The files of an image: a directory or an uncompressed tar."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if not os.path.isdir(path):
            try:
                self._tar = tarfile.open(path, "r:")
            except FileNotFoundError:
                raise ImageError(f"{path}: no such file or directory") from None
            except (tarfile.TarError, OSError) as e:
                raise ImageError(f"{path}: not an image archive (an uncompressed tar "
                                 f"or a directory): {e}") from None
            for m in self._tar.getmembers():
                self._members.setdefault(m.name.lstrip("./") if m.name != "./" else "", m)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def exists(self, name: str) -> bool:
        if self._tar is None:
            return os.path.isfile(os.path.join(self.path, name))
        return name in self._members

    def open(self, name: str) -> IO[bytes]:
        name = _member_name(name, self.path)
        if self._tar is None:
            from ocirun import sys as ksys
            try:
                dfd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    fd = ksys.openat2(dfd, name, os.O_RDONLY | os.O_CLOEXEC,
                                      ksys.RESOLVE_BENEATH | ksys.RESOLVE_NO_MAGICLINKS)
                finally:
                    os.close(dfd)
            except OSError as e:
                raise ImageError(f"{self.path}: {name}: {e.strerror.lower()}") from None
            return os.fdopen(fd, "rb")
        member = self._members.get(name)
        f = self._tar.extractfile(member) if member is not None else None
        if f is None:
            raise ImageError(f"{self.path}: {name}: not in the archive")
        return f  # type: ignore[return-value]

    def read_json(self, name: str, digest: str | None = None) -> Any:
        with self.open(name) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"{name}: larger than {MAX_JSON >> 20} MiB")
        if digest is not None and blob_digest(digest, data) != digest:
            raise ImageError(f"{name}: content does not match its digest {digest}")
        try:
            return json.loads(data)
        except ValueError as e:
            raise ImageError(f"{name}: not JSON: {e}") from None


def blob_digest(like: str, data: bytes) -> str:
    algo = like.split(":", 1)[0]
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def blob_path(digest: str) -> str:
    algo, hexpart = digest.split(":", 1)
    return f"blobs/{algo}/{hexpart}"


# ---------------------------------------------------------------- which image
def read_image(archive: Archive, ref: str | None) -> Image:
    if archive.exists("index.json"):
        return _read_oci(archive, ref)
    if archive.exists("manifest.json"):
        return _read_docker(archive, ref)
    raise ImageError(f"{archive.path}: neither an OCI image layout (index.json) nor a "
                     f"docker-archive (manifest.json)")


def _ref_matches(want: str, names: list[str]) -> bool:
    """`want` names one of `names`: exactly, or as a tag (`1`), or without a registry
    (`bbtest:1` for `localhost/bbtest:1`), or without a tag (`:latest`)."""
    candidates = {want}
    if ":" not in want.rsplit("/", 1)[-1]:
        candidates.add(want + ":latest")
    for name in names:
        if name in candidates or name.split("/", 1)[-1] in candidates \
                or name.rsplit(":", 1)[-1] == want or name.rsplit("/", 1)[-1] in candidates:
            return True
    return False


def _pick(found: list[tuple[list[str], Any]], ref: str | None, where: str) -> tuple[str, Any]:
    if ref is not None:
        found = [(names, v) for names, v in found if _ref_matches(ref, names)]
        if not found:
            raise ImageError(f"{where}: no image named {ref!r}")
    if len(found) != 1:
        names = sorted(n for ns, _ in found for n in ns) or ["(unnamed)"]
        raise ImageError(f"{where}: {len(found)} images ({', '.join(names)}): "
                         f"choose one with --ref")
    names, value = found[0]
    return (ref or (names[0] if names else "")), value


def _platform_ok(desc: dict[str, Any]) -> bool:
    plat = desc.get("platform")
    if not isinstance(plat, dict):
        return True
    return plat.get("os", "linux") == "linux" and plat.get("architecture") == host_arch()


def _oci_manifests(archive: Archive, index: Any, names: list[str], depth: int = 0
                   ) -> list[tuple[list[str], dict[str, Any]]]:
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError("index.json: no manifests list")
    out: list[tuple[list[str], dict[str, Any]]] = []
    for i, desc in enumerate(index["manifests"]):
        where = f"index manifests[{i}]"
        if not isinstance(desc, dict):
            raise ImageError(f"{where}: not an object")
        ann = desc.get("annotations") if isinstance(desc.get("annotations"), dict) else {}
        own = [v for k, v in ann.items() if isinstance(v, str) and k in (
            "org.opencontainers.image.ref.name", "io.containerd.image.name")] or names
        if desc.get("mediaType") in _INDEX:
            if depth > 4:
                raise ImageError(f"{where}: indexes nested too deep")
            digest = check_digest(desc.get("digest"), where)
            nested = archive.read_json(blob_path(digest), digest)
            out += _oci_manifests(archive, nested, own, depth + 1)
        elif desc.get("mediaType", _MANIFEST[0]) in _MANIFEST:
            if _platform_ok(desc):
                out.append((own, desc))
    return out


def _read_oci(archive: Archive, ref: str | None) -> Image:
    index = archive.read_json("index.json")
    name, desc = _pick(_oci_manifests(archive, index, []), ref, archive.path)
    digest = check_digest(desc.get("digest"), "manifest descriptor")
    manifest = archive.read_json(blob_path(digest), digest)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict) \
            or not isinstance(manifest.get("layers"), list):
        raise ImageError(f"manifest {digest}: no config or layers")
    config_digest = check_digest(manifest["config"].get("digest"), "manifest config")
    config = _check_config(archive.read_json(blob_path(config_digest), config_digest))
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(manifest["layers"]):
        raise ImageError(f"manifest {digest}: {len(manifest['layers'])} layers, but the "
                         f"config lists {len(diff_ids)} diff_ids")
    layers = []
    for i, (layer, diff_id) in enumerate(zip(manifest["layers"], diff_ids)):
        where = f"manifest layers[{i}]"
        if not isinstance(layer, dict) or layer.get("mediaType") not in _LAYER_TYPES:
            kind = layer.get("mediaType") if isinstance(layer, dict) else None
            raise ImageError(f"{where}: unsupported layer media type {kind!r}")
        blob = check_digest(layer.get("digest"), where)
        size = layer.get("size")
        layers.append(LayerRef(blob_path(blob), diff_id, blob,
                               size if isinstance(size, int) else None))
    return Image(name, config, config_digest, tuple(layers))


def _read_docker(archive: Archive, ref: str | None) -> Image:
    manifest = archive.read_json("manifest.json")
    if not isinstance(manifest, list) or not all(isinstance(m, dict) for m in manifest):
        raise ImageError("manifest.json: not a list of images")
    found = [([t for t in m.get("RepoTags") or [] if isinstance(t, str)], m)
             for m in manifest]
    name, entry = _pick(found, ref, archive.path)
    config_name = _member_name(entry.get("Config"), "manifest.json Config")
    stem = os.path.basename(config_name).removesuffix(".json")
    config_digest = f"sha256:{stem}" if re.fullmatch(r"[0-9a-f]{64}", stem) else None
    with archive.open(config_name) as f:
        data = f.read(MAX_JSON + 1)
    if config_digest is None:
        config_digest = blob_digest("sha256:", data)
    elif blob_digest(config_digest, data) != config_digest:
        raise ImageError(f"{config_name}: content does not match its digest")
    try:
        config = _check_config(json.loads(data))
    except ValueError as e:
        raise ImageError(f"{config_name}: not JSON: {e}") from None
    paths = entry.get("Layers")
    if not isinstance(paths, list) or len(paths) != len(config["rootfs"]["diff_ids"]):
        raise ImageError("manifest.json: Layers does not match the config's diff_ids")
    layers = tuple(LayerRef(_member_name(p, f"manifest.json Layers[{i}]"), d)
                   for i, (p, d) in enumerate(zip(paths, config["rootfs"]["diff_ids"])))
    return Image(name, config, config_digest, layers)


def _check_config(config: Any) -> dict[str, Any]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise ImageError("image config: no rootfs.diff_ids")
    for i, d in enumerate(rootfs["diff_ids"]):
        check_digest(d, f"image config rootfs.diff_ids[{i}]")
    if config.get("os", "linux") != "linux":
        raise ImageError(f"image config: os {config.get('os')!r}, not linux")
    if not isinstance(config.get("config", {}), dict):
        raise ImageError("image config: config is not an object")
    return config
