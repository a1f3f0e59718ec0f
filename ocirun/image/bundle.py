"""`ocirun bundle create|ls|rm`: a runnable bundle from an image.

create reads the image (source.py), lays out the root filesystem, either unpacked
into DIR/rootfs (`--unpack`) or as layers of the store mounted as an overlay at create
time (`--overlay`, the default), and writes DIR/config.json converted from the image
config (image-spec conversion.md) over `ocirun spec`'s defaults.  A create that fails
leaves nothing: the bundle directory it made is removed, layers it added that no
bundle uses are removed, and config.json is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from ocirun import fstree, log
from ocirun.errors import OciError
from ocirun.image import layer as layers_mod
from ocirun.image.source import Archive, Image, ImageError, read_image
from ocirun.image.store import Store
from ocirun.record import Record
from ocirun.rootfs import OVERLAY_LOWER, resolve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHIFT_SIZE = 65536
# What engines give a container from an image (podman's default set): root in the
# container owns its files (chown, DAC override) but reaches nothing of the host's.
ENGINE_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
               "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
               "CAP_SETUID", "CAP_SYS_CHROOT"]
# Refused with EPERM, on top of the capabilities: the kernel's module, kexec, clock,
# swap, keyring, bpf/perf and handle interfaces, which engines' profiles leave out.
DENIED_SYSCALLS = ["acct", "add_key", "bpf", "clock_adjtime", "clock_settime",
                   "create_module", "delete_module", "finit_module", "get_kernel_syms",
                   "init_module", "ioperm", "iopl", "kexec_file_load", "kexec_load",
                   "keyctl", "lookup_dcookie", "move_pages", "nfsservctl",
                   "open_by_handle_at", "perf_event_open", "query_module", "quotactl",
                   "reboot", "request_key", "settimeofday", "stime", "swapoff", "swapon",
                   "sysfs", "_sysctl", "uselib", "userfaultfd", "ustat", "vm86", "vm86old"]


class BundleOptions(Record):
    source: str  # an archive, an image layout directory, or "-" (a tar on stdin)
    dest: str
    ref: str | None = None
    overlay: bool = True
    store: str = ""
    uid_shift: int = 0
    gid_shift: int = 0
    max_layer_size: int | None = None


# ---------------------------------------------------------------- create
def create(opts: BundleOptions) -> None:
    dest = os.path.abspath(opts.dest)
    made_dest = _claim(dest)
    spool = None
    store = Store(opts.store).open() if opts.overlay else None
    try:
        source = opts.source
        if source == "-":
            spool = _spool_stdin(store.path if store else os.path.dirname(dest))
            source = spool.name
        archive = Archive(source)
        try:
            image = read_image(archive, opts.ref)
            if store is not None:
                lower = _overlay_rootfs(archive, image, store, dest, opts)
            else:
                lower = None
                _unpack_rootfs(archive, image, dest, opts)
        finally:
            archive.close()
        spec = convert(image, dest, lower, opts)
        _write_config(dest, spec)
        if store is not None:
            store.add_bundle(dest, image.ref, [lr.diff_id for lr in image.layers])
    except BaseException:
        _undo(dest, made_dest)
        if store is not None:
            store.prune()
        raise
    finally:
        if spool is not None:
            spool.close()
        if store is not None:
            store.close()


def _claim(dest: str) -> bool:
    """Make the bundle directory, or take an empty one; True if made here."""
    try:
        os.mkdir(dest, 0o755)
        return True
    except FileExistsError:
        if not os.path.isdir(dest) or os.listdir(dest):
            raise OciError(f"{dest}: exists and is not an empty directory") from None
        return False
    except OSError as e:
        raise OciError(f"{dest}: {e.strerror.lower()}") from None


def _undo(dest: str, made_dest: bool) -> None:
    if made_dest:
        fstree.remove(dest, ignore_errors=True)
        return
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if os.path.isdir(path) and not os.path.islink(path):
            fstree.remove(path, ignore_errors=True)
        else:
            os.unlink(path)


def _spool_stdin(where: str) -> Any:
    """A seekable copy of the tar on stdin (an image is read out of order)."""
    spool = tempfile.NamedTemporaryFile(dir=where, prefix=".ocirun-image-")
    shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
    spool.flush()
    return spool


def _unpack_rootfs(archive: Archive, image: Image, dest: str, opts: BundleOptions) -> None:
    partial = os.path.join(dest, ".rootfs-partial")
    os.mkdir(partial, 0o755)
    shift = layers_mod.Shift(opts.uid_shift, opts.gid_shift)
    for i, lr in enumerate(image.layers):
        with archive.open(lr.path) as blob:
            layers_mod.apply(blob, partial, digest=lr.digest, diff_id=lr.diff_id,
                             mode="unpack", shift=shift, limit=opts.max_layer_size,
                             what=f"layer {i + 1}/{len(image.layers)} ({lr.diff_id[:19]})")
    os.rename(partial, os.path.join(dest, "rootfs"))


def _overlay_rootfs(archive: Archive, image: Image, store: Store, dest: str,
                    opts: BundleOptions) -> str:
    """The image's layers in the store (each unpacked once) and the bundle's mount
    point, upper and work dirs; returns overlayfs's lowerdir (top layer first)."""
    if opts.uid_shift or opts.gid_shift:
        raise OciError("--uid-shift/--gid-shift go with --unpack (the store's layers "
                       "are shared by bundles of any mapping)")
    dirs = []
    for i, lr in enumerate(image.layers):
        if not store.has(lr.diff_id):
            tmp = store.tmp_dir()
            try:
                with archive.open(lr.path) as blob:
                    size = layers_mod.apply(
                        blob, tmp, digest=lr.digest, diff_id=lr.diff_id, mode="overlay",
                        limit=opts.max_layer_size,
                        what=f"layer {i + 1}/{len(image.layers)} ({lr.diff_id[:19]})")
                store.put(lr.diff_id, tmp, size)
            except BaseException:
                fstree.remove(tmp, ignore_errors=True)
                raise
        dirs.append(store.layer_dir(lr.diff_id))
    for name in ("rootfs", "upper", "work"):
        os.mkdir(os.path.join(dest, name), 0o755)
    return ":".join(reversed(dirs))


def _write_config(dest: str, spec: dict[str, Any]) -> None:
    tmp = os.path.join(dest, ".config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(spec, f, indent="\t")
        f.write("\n")
    os.rename(tmp, os.path.join(dest, "config.json"))


# ---------------------------------------------------------------- the config
def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config: {what} is not a list of strings")
    return value


def convert(image: Image, dest: str, lower: str | None, opts: BundleOptions) -> dict[str, Any]:
    """config.json for the image (conversion.md), over `ocirun spec`'s defaults."""
    from ocirun.specgen import default_spec
    cfg = image.config.get("config") or {}
    spec = default_spec()
    process = spec["process"]
    files = ImageFiles(dest, lower)
    args = _strings(cfg.get("Entrypoint"), "Entrypoint") + _strings(cfg.get("Cmd"), "Cmd")
    if not args:
        log.warn("the image names no Entrypoint or Cmd: the bundle runs sh")
        args = ["sh"]
    env = _strings(cfg.get("Env"), "Env")
    if not any(e.startswith("PATH=") for e in env):
        env = [DEFAULT_PATH] + env
    workdir = cfg.get("WorkingDir") or "/"
    if not isinstance(workdir, str):
        raise ImageError("image config: WorkingDir is not a string")
    process.update(terminal=False, args=args, env=env,
                   cwd=workdir if workdir.startswith("/") else "/" + workdir,
                   user=_user(cfg.get("User") or "", files.read))
    process["capabilities"] = {k: list(ENGINE_CAPS) for k in
                               ("bounding", "effective", "permitted")}
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["hostname"] = "ocirun"
    spec["annotations"] = _annotations(image, cfg, lower)
    spec["mounts"] += _volumes(cfg.get("Volumes"), dest, files, opts)
    if opts.uid_shift or opts.gid_shift:
        linux = spec["linux"]
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": opts.uid_shift,
                                 "size": SHIFT_SIZE}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": opts.gid_shift,
                                 "size": SHIFT_SIZE}]
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    return spec


def _annotations(image: Image, cfg: dict[str, Any], lower: str | None) -> dict[str, str]:
    out = {}
    for key, field in (("org.opencontainers.image.os", "os"),
                       ("org.opencontainers.image.architecture", "architecture"),
                       ("org.opencontainers.image.author", "author"),
                       ("org.opencontainers.image.created", "created")):
        if isinstance(image.config.get(field), str):
            out[key] = image.config[field]
    ports = cfg.get("ExposedPorts")
    if isinstance(ports, dict) and ports:
        out["org.opencontainers.image.exposedPorts"] = ",".join(sorted(ports))
    if isinstance(cfg.get("StopSignal"), str):
        out["org.opencontainers.image.stopSignal"] = cfg["StopSignal"]
    labels = cfg.get("Labels")
    if isinstance(labels, dict):
        out.update({k: v for k, v in labels.items() if isinstance(v, str) and k})
    out["run.ocirun.image.ref"] = image.ref
    out["run.ocirun.image.config"] = image.config_digest
    if lower is not None:
        out[OVERLAY_LOWER] = lower
    return out


def _volumes(volumes: Any, dest: str, files: ImageFiles, opts: BundleOptions
             ) -> list[dict[str, Any]]:
    """A directory of the bundle bound at each of the image's Volumes, so that what
    the application keeps there is not written to its root filesystem; it has the
    owner and mode of the image's directory there (root's 0755 if none)."""
    if not isinstance(volumes, dict):
        return []
    mounts = []
    for i, target in enumerate(sorted(volumes)):
        if not isinstance(target, str) or not target.startswith("/"):
            raise ImageError(f"image config: Volumes: {str(target)[:80]!r} is not absolute")
        source = os.path.join("volumes", str(i))
        path = os.path.join(dest, source)
        os.makedirs(path, 0o755)
        st = files.stat(target)
        if st is not None and os.path.stat.S_ISDIR(st.st_mode):
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, st.st_mode & 0o7777)
        else:
            os.chown(path, opts.uid_shift, opts.gid_shift)
        mounts.append({"destination": target, "type": "bind", "source": source,
                       "options": ["rbind", "nosuid", "nodev"]})
    return mounts


# ---------------------------------------------------------------- User
class ImageFiles:
    """Files of the image's filesystem: the unpacked rootfs, or the layers top down
    (a whiteout ends the search)."""

    def __init__(self, dest: str, lower: str | None) -> None:
        self.roots = [os.path.join(dest, "rootfs")] if lower is None else lower.split(":")

    def _open(self, path: str) -> int | None:
        import stat
        for root in self.roots:
            root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = resolve(root_fd, path)
            except OSError:
                continue
            finally:
                os.close(root_fd)
            st = os.fstat(fd)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                os.close(fd)
                return None  # whited out
            return fd
        return None

    def stat(self, path: str) -> os.stat_result | None:
        fd = self._open(path)
        if fd is None:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def read(self, path: str) -> bytes | None:
        import stat
        fd = self._open(path)
        if fd is None:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                return f.read(1 << 20)
        finally:
            os.close(fd)


def _user(user: str, read: Any) -> dict[str, Any]:
    """The image's User ("name", "uid", "name:group", "uid:gid") as uid, gid and the
    supplementary groups /etc/group gives the name (engines' rule)."""
    name, _, group = user.partition(":")
    passwd = _table(read("/etc/passwd"))
    groups = _table(read("/etc/group"))
    uid, gid, login = 0, 0, "root"
    if name:
        if name.isdigit():
            uid = int(name)
            entry = next((e for e in passwd if e[2:3] == [name]), None)
        else:
            entry = next((e for e in passwd if e[0] == name), None)
            if entry is None:
                raise ImageError(f"image config: User {user!r}: no user {name!r} in "
                                 "/etc/passwd of the image")
        if entry is not None and len(entry) > 3 and entry[2].isdigit() and entry[3].isdigit():
            uid, gid, login = int(entry[2]), int(entry[3]), entry[0]
        else:
            login = ""
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = next((e for e in groups if e[0] == group), None)
            if entry is None or len(entry) < 3 or not entry[2].isdigit():
                raise ImageError(f"image config: User {user!r}: no group {group!r} in "
                                 "/etc/group of the image")
            gid = int(entry[2])
    extra = sorted({int(e[2]) for e in groups if len(e) > 3 and e[2].isdigit() and login
                    and login in e[3].split(",") and int(e[2]) != gid})
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    if extra:
        out["additionalGids"] = extra
    return out


def _table(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    text = data.decode("utf-8", "replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


# ---------------------------------------------------------------- ls / rm
def list_store(store_path: str, fmt: str) -> None:
    with Store(store_path) as store:
        refs = store.refs()
        sizes = dict(store.layers())
        bundles = store.bundles()
    if fmt == "json":
        print(json.dumps({"layers": [{"diff_id": d, "size": sizes.get(d, 0), "bundles": b}
                                     for d, b in sorted(refs.items())],
                          "bundles": bundles}, indent=2))
        return
    print(f"{'LAYER':<21} {'SIZE':>10} {'REFS':>4}  BUNDLES")
    for diff_id, users in sorted(refs.items()):
        print(f"{diff_id[:19] + '..':<21} {sizes.get(diff_id, 0):>10} {len(users):>4}  "
              f"{' '.join(users)}")


def remove(store_path: str, bundles: list[str], root: str) -> None:
    from ocirun.state import list_containers
    live = {os.path.realpath(s.bundle): s.id for s in list_containers(root)}
    with Store(store_path) as store:
        for bundle in bundles:
            real = os.path.realpath(bundle)
            if real in live:
                raise OciError(f"{bundle}: container {live[real]!r} uses it: delete the "
                               "container first")
            if store.bundle(bundle) is None:
                raise OciError(f"{bundle}: not a bundle of the store {store.path}")
        for bundle in bundles:
            if os.path.isdir(bundle):
                try:
                    fstree.remove(bundle)
                except OSError as e:
                    raise OciError(f"{bundle}: {(e.strerror or str(e)).lower()}") from None
            for diff_id in store.drop_bundle(bundle):
                log.debug(f"layer {diff_id} removed: no bundle uses it")
