"""The layer store of `--overlay` bundles: each layer unpacked once, by its diff_id
(the digest of its uncompressed tar, the same whether it came from an OCI layout or a
docker-archive), and a record per bundle of the layers it uses; a layer no bundle
uses any more is removed with the last bundle's `ocirun bundle rm`.

  STORE/layers/sha256/<hex>/      the layer, overlayfs-ready (whiteouts as 0:0 devices)
  STORE/layers/sha256/<hex>.json  its size
  STORE/bundles/<hash>.json       a bundle: its path and its layers
  STORE/tmp/                      layers being unpacked (renamed into place when whole)
  STORE/lock                      flock: one writer at a time

The store is 0700: its layers hold the image's setuid files and devices, which no
unprivileged user of the host may reach.  It is on disk (default /var/lib/ocirun/store),
not in the state root: /run is a tmpfs, emptied at boot, and a bundle whose layers
vanished with it could not run again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile

from ocirun import fstree
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

DEFAULT_STORE = "/var/lib/ocirun/store"


class Store:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._lock_fd = -1

    def open(self) -> Store:
        for sub in ("", "layers", "bundles", "tmp"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        self._lock_fd = os.open(os.path.join(self.path, "lock"),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._clean_tmp()
        return self

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clean_tmp(self) -> None:
        """What an unpack killed midway left (only a lock holder unpacks)."""
        tmp = os.path.join(self.path, "tmp")
        for name in os.listdir(tmp):
            fstree.remove(os.path.join(tmp, name), ignore_errors=True)

    def tmp_dir(self) -> str:
        return tempfile.mkdtemp(dir=os.path.join(self.path, "tmp"))

    # ------------------------------------------------------------ layers
    def layer_dir(self, diff_id: str) -> str:
        algo, hexpart = diff_id.split(":", 1)
        return os.path.join(self.path, "layers", algo, hexpart)

    def has(self, diff_id: str) -> bool:
        return os.path.isfile(self.layer_dir(diff_id) + ".json")

    def put(self, diff_id: str, unpacked: str, size: int) -> str:
        """Move a whole unpacked layer into place; its .json, written last, marks it
        complete."""
        final = self.layer_dir(diff_id)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        if os.path.exists(final):  # a leftover without its .json: incomplete
            fstree.remove(final)
        os.rename(unpacked, final)
        _write_json(final + ".json", {"diff_id": diff_id, "size": size})
        return final

    def layers(self) -> Iterator[tuple[str, int]]:
        top = os.path.join(self.path, "layers")
        for algo in sorted(os.listdir(top)):
            for name in sorted(os.listdir(os.path.join(top, algo))):
                if name.endswith(".json"):
                    meta = _read_json(os.path.join(top, algo, name)) or {}
                    yield f"{algo}:{name[:-5]}", int(meta.get("size", 0))

    def _remove_layer(self, diff_id: str) -> None:
        final = self.layer_dir(diff_id)
        try:
            os.unlink(final + ".json")  # first: a half-removed layer is incomplete
        except FileNotFoundError:
            pass
        fstree.remove(final, ignore_errors=True)

    # ------------------------------------------------------------ bundles
    def _bundle_record(self, bundle: str) -> str:
        key = hashlib.sha256(os.path.realpath(bundle).encode()).hexdigest()
        return os.path.join(self.path, "bundles", key + ".json")

    def add_bundle(self, bundle: str, image: str, layers: list[str]) -> None:
        _write_json(self._bundle_record(bundle), {
            "bundle": os.path.realpath(bundle), "image": image, "layers": layers})

    def bundles(self) -> list[dict[str, Any]]:
        top = os.path.join(self.path, "bundles")
        records = [_read_json(os.path.join(top, n)) for n in sorted(os.listdir(top))
                   if n.endswith(".json")]
        return [r for r in records if isinstance(r, dict)]

    def bundle(self, bundle: str) -> dict[str, Any] | None:
        record = _read_json(self._bundle_record(bundle))
        return record if isinstance(record, dict) else None

    def refs(self) -> dict[str, list[str]]:
        refs: dict[str, list[str]] = {diff_id: [] for diff_id, _ in self.layers()}
        for record in self.bundles():
            for diff_id in record.get("layers", []):
                refs.setdefault(diff_id, []).append(record.get("bundle", "?"))
        return refs

    def drop_bundle(self, bundle: str) -> list[str]:
        """Forget `bundle`; remove the layers nobody else uses.  Returns those."""
        try:
            os.unlink(self._bundle_record(bundle))
        except FileNotFoundError:
            raise OciError(f"{bundle}: not a bundle of the store {self.path}") from None
        return self.prune()

    def prune(self) -> list[str]:
        """Remove the layers no bundle uses.  Returns those."""
        gone = [d for d, users in self.refs().items() if not users]
        for diff_id in gone:
            self._remove_layer(diff_id)
        return gone


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
