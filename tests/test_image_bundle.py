"""`ocirun bundle`: images from podman and built by hand become bundles that run, the
unpacked rootfs equals umoci's, and hostile layers land nothing outside their target."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from ocirun import fstree
from image_builder import (docker_archive, entry, image_config, layer_tar, oci_layout,
                           tar_dir, tree_of)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SECRET = b"layer two\n"


def _two_layers(busybox: Path) -> list[bytes]:
    """busybox plus files of every kind, then a layer of whiteouts and changes."""
    one = layer_tar([
        entry("data", "dir", mode=0o755),
        entry("data/a", data=b"hard linked\n", mode=0o640, uid=1000, gid=1000),
        entry("data/a-link", "hardlink", link="data/a"),
        entry("data/gone", data=b"whited out\n"),
        entry("data/sub", "dir", mode=0o750, uid=7, gid=8),
        entry("data/sub/x", data=b"hidden by opaque\n"),
        entry("data/suid", data=b"#!/bin/sh\n", mode=0o4755),
        entry("data/fifo", "fifo", mode=0o600),
        entry("data/null2", "char", mode=0o666, dev=(1, 3)),
        entry("data/rel", "symlink", link="../etc/passwd"),
    ], tree=busybox)
    two = layer_tar([
        entry("data/.wh.gone"),
        entry("data/sub/.wh..wh..opq"),
        entry("data/sub/y", data=SECRET),
        entry("data/new", "symlink", link="/data/sub/y"),
    ])
    return [one, two]


def _ocirun(runtime: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return runtime(*args, **kw)


def _create(runtime: Any, *args: str) -> subprocess.CompletedProcess:
    return runtime("bundle", "create", "--store", str(runtime.work / "store"), *args)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr.decode()


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def _run(runtime: Any, bundle: Path, args: list[str]) -> str:
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = args
    config["linux"]["cgroupsPath"] = f"{runtime.cgroup_prefix}-{uuid.uuid4().hex[:6]}"
    (bundle / "config.json").write_text(json.dumps(config))
    r = runtime("run", "--bundle", str(bundle), runtime.new_id("img"))
    _ok(r)
    return r.stdout.decode()


def _layers_in_store(store: Path) -> list[str]:
    top = store / "layers" / "sha256"
    return sorted(p.name for p in top.iterdir() if p.suffix == ".json") if top.exists() else []


# ------------------------------------------------------------ conversion and umoci
def test_unpack_equals_umoci(runtime: Any, busybox_rootfs: Path, tmp_path: Path) -> None:
    layers = _two_layers(busybox_rootfs)
    layout = oci_layout(tmp_path / "layout", layers, image_config(layers, ["/bin/true"]),
                        "two")
    _ok(_create(runtime, "--unpack", "--from", str(layout), str(tmp_path / "mine")))
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:two", str(tmp_path / "umoci")],
                   check=True, capture_output=True)
    mine, theirs = tree_of(tmp_path / "mine/rootfs"), tree_of(tmp_path / "umoci/rootfs")
    assert mine == theirs, {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs)
                            if mine.get(k) != theirs.get(k)}
    # and what that tree is: whiteouts applied, a hard link, owners and modes kept
    assert "data/gone" not in mine and "data/sub/x" not in mine and "data/sub/y" in mine
    assert mine["data/a"][4] == mine["data/a-link"][4] and mine["data/a"][5] == "data/a"
    assert mine["data/a"][1:4] == (0o640, 1000, 1000)
    assert mine["data/suid"][1] == 0o4755 and mine["data/sub"][1:4] == (0o750, 7, 8)
    assert mine["data/null2"][4] == (1, 3)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command is not installed")
def test_zstd_layers(runtime: Any, busybox_rootfs: Path, tmp_path: Path) -> None:
    layers = _two_layers(busybox_rootfs)
    layout = oci_layout(tmp_path / "layout", layers, image_config(layers, ["/bin/true"]),
                        "z", compress="zstd")
    for mode in ("--unpack", "--overlay"):
        bundle = tmp_path / f"z{mode}"
        _ok(_create(runtime, mode, "--from", str(layout), str(bundle)))
        assert _run(runtime, bundle, ["/bin/cat", "/data/sub/y"]) == SECRET.decode()
    bomb = [layer_tar([entry("zeros", data=bytes(4 << 20))])]
    layout = oci_layout(tmp_path / "zbomb", bomb, image_config(bomb, ["/bin/true"]), "z",
                        compress="zstd")
    _one_line_error(_create(runtime, "--unpack", "--max-layer-size", str(1 << 20), "--from",
                            str(layout), str(tmp_path / "zb")), "limit")
    assert not (tmp_path / "zb").exists()


def test_config_converted(runtime: Any, busybox_rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    tar = layer_tar([entry("etc/group", data=b"root:x:0:\nstaff:x:50:app\nwheel:x:10:app\n"),
                     entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"
                                          b"app:x:1000:1001::/home/app:/bin/sh\n"),
                     entry("vol", "dir", mode=0o700, uid=1000, gid=1001)],
                    tree=busybox_rootfs)
    config = image_config([tar], ["-c", "id"], Entrypoint=["/bin/sh"], Env=["A=1"],
                          WorkingDir="/tmp", User="app", ExposedPorts={"80/tcp": {}},
                          StopSignal="SIGQUIT", Labels={"x.y": "z"}, Volumes={"/vol": {}})
    layout = oci_layout(tmp_path / "layout", [tar], config, "conv")
    _ok(_create(runtime, "--from", str(layout), str(tmp_path / "b")))
    spec = json.loads((tmp_path / "b/config.json").read_text())
    p = spec["process"]
    assert p["args"] == ["/bin/sh", "-c", "id"] and p["cwd"] == "/tmp"
    assert p["env"][0].startswith("PATH=") and "A=1" in p["env"]
    assert p["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [10, 50]}
    a = spec["annotations"]
    assert a["org.opencontainers.image.exposedPorts"] == "80/tcp"
    assert a["org.opencontainers.image.stopSignal"] == "SIGQUIT" and a["x.y"] == "z"
    assert {"destination": "/vol", "type": "bind", "source": "volumes/0",
            "options": ["rbind", "nosuid", "nodev"]} in spec["mounts"]
    r = runtime("validate", "--bundle", str(tmp_path / "b"))
    _ok(r)
    out = _run(runtime, tmp_path / "b", ["/bin/sh", "-c", "id; touch /vol/kept; pwd"])
    assert "uid=1000" in out and "gid=1001" in out and "/tmp" in out
    assert (tmp_path / "b/volumes/0/kept").exists()


# ------------------------------------------------------------ podman's archives
@pytest.fixture
def podman_image(busybox_rootfs: Path, tmp_path: Path) -> Any:
    """The two-layer image loaded into podman, and saved back in both formats."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    layers = _two_layers(busybox_rootfs)
    name = f"localhost/ocirun-bundle-test:{uuid.uuid4().hex[:8]}"
    layout = oci_layout(tmp_path / "handmade", layers,
                        image_config(layers, ["/bin/cat", "/data/sub/y"]), name)
    archive = tar_dir(layout, tmp_path / "handmade.tar")
    _podman("load", "-q", "-i", str(archive))
    try:
        out = {}
        for fmt in ("oci-archive", "docker-archive"):
            out[fmt] = tmp_path / f"{fmt}.tar"
            _podman("save", "-q", "--format", fmt, "-o", str(out[fmt]), name)
        yield out, name
    finally:
        subprocess.run(["podman", "rmi", "-f", name], capture_output=True)


def _podman(*args: str) -> None:
    r = subprocess.run(["podman", *args], capture_output=True)
    assert r.returncode == 0, f"podman {' '.join(args)}: {r.stderr.decode()}"


def test_podman_archives_run_both_ways(runtime: Any, podman_image: Any, tmp_path: Path) -> None:
    archives, name = podman_image
    store = tmp_path / "store"
    ls_cmd = ["/bin/sh", "-c", "cat /data/sub/y; ls /data /data/sub; cat /data/a-link"]
    for fmt, archive in archives.items():
        for mode in ("--unpack", "--overlay"):
            bundle = tmp_path / f"{fmt}{mode}"
            _ok(_create(runtime, mode, "--ref", name, "--from", str(archive), str(bundle)))
            out = _run(runtime, bundle, ls_cmd)
            assert SECRET.decode() in out and "hard linked" in out, (fmt, mode, out)
            assert "gone" not in out and "\nx\n" not in out, (fmt, mode, out)
    # one image read both ways shares its layers: two layers, used by both overlay bundles
    assert len(_layers_in_store(store)) == 2
    r = runtime("bundle", "ls", "--format", "json", "--store", str(store))
    _ok(r)
    listed = json.loads(r.stdout)
    assert [len(layer["bundles"]) for layer in listed["layers"]] == [2, 2]


def test_stdin_pipe_and_writes_land_in_upper(runtime: Any, podman_image: Any,
                                            tmp_path: Path) -> None:
    archives, name = podman_image
    bundle = tmp_path / "piped"
    with open(archives["docker-archive"], "rb") as f:
        r = runtime("bundle", "create", "--store", str(tmp_path / "store"), "--from", "-",
                    str(bundle), stdin=f)
    _ok(r)
    _run(runtime, bundle, ["/bin/sh", "-c", "echo new > /data/written; rm /data/a"])
    assert (bundle / "upper/data/written").read_text() == "new\n"
    whiteout = os.lstat(bundle / "upper/data/a")  # overlayfs's own whiteout
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    layer_files = [p for p in (tmp_path / "store/layers/sha256").rglob("a")]
    assert layer_files and all(p.read_bytes() == b"hard linked\n" for p in layer_files)


def test_ls_rm_reference_counting(runtime: Any, busybox_rootfs: Path, tmp_path: Path) -> None:
    layers = _two_layers(busybox_rootfs)
    layout = oci_layout(tmp_path / "layout", layers, image_config(layers, ["/bin/true"]), "t")
    store = tmp_path / "store"
    for b in ("b1", "b2"):
        _ok(_create(runtime, "--from", str(layout), str(tmp_path / b)))
    assert len(_layers_in_store(store)) == 2
    # a bundle a container uses stays
    config = json.loads((tmp_path / "b1/config.json").read_text())
    config["process"]["args"] = ["sleep", "100"]
    config["linux"]["cgroupsPath"] = f"{runtime.cgroup_prefix}-rm"
    (tmp_path / "b1/config.json").write_text(json.dumps(config))
    cid = runtime.create(tmp_path / "b1")
    _one_line_error(runtime("bundle", "rm", "--store", str(store), str(tmp_path / "b1")),
                    cid)
    _ok(runtime("delete", "--force", cid))
    _ok(runtime("bundle", "rm", "--store", str(store), str(tmp_path / "b1")))
    assert not (tmp_path / "b1").exists() and len(_layers_in_store(store)) == 2
    _ok(runtime("bundle", "rm", "--store", str(store), str(tmp_path / "b2")))
    assert _layers_in_store(store) == [] and not list((store / "layers/sha256").iterdir())
    _one_line_error(runtime("bundle", "rm", "--store", str(store), str(tmp_path / "b2")),
                    "not a bundle")


def test_uid_shift(runtime: Any, busybox_rootfs: Path, tmp_path: Path,
                   request: pytest.FixtureRequest) -> None:
    layers = _two_layers(busybox_rootfs)
    layout = oci_layout(tmp_path / "layout", layers, image_config(layers, ["/bin/true"]), "t")
    top = Path(tempfile.mkdtemp(prefix="ocirun-shifted-"))  # the mapped root reaches it
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    top.chmod(0o755)
    bundle = top / "shifted"
    _ok(_create(runtime, "--unpack", "--uid-shift", "200000", "--gid-shift", "300000",
                "--from", str(layout), str(bundle)))
    st = os.lstat(bundle / "rootfs/data/a")
    assert (st.st_uid, st.st_gid) == (201000, 301000)
    assert os.lstat(bundle / "rootfs/bin/busybox").st_uid == 200000
    out = _run(runtime, bundle, ["/bin/sh", "-c", "id -u; stat -c %u:%g /data/a"])
    assert out.split() == ["0", "1000:1000"]
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 200000,
                                             "size": 65536}]


DEEP = 1100  # directories: past CPython's recursion limit (1000), short of PATH_MAX


@pytest.mark.parametrize("mode", ["--unpack", "--overlay"])
def test_trees_nested_past_the_recursion_limit_are_removed(
        runtime: Any, busybox_rootfs: Path, tmp_path: Path, mode: str,
        request: pytest.FixtureRequest) -> None:
    """An image nests directories 1100 deep, its next layer whites one such tree out,
    and the container nests another: the whiteout applies, and `bundle rm` of an
    overlay bundle removes upper and layers (a recursive removal stopped at the
    recursion limit)."""
    deep = "/a" * DEEP
    one = layer_tar([*(entry("d" + "/a" * i, "dir") for i in range(DEEP + 1)),
                     *(entry("e" + "/a" * i, "dir") for i in range(DEEP + 1))],
                    tree=busybox_rootfs)
    layers = [one, layer_tar([entry(".wh.e")])]
    layout = oci_layout(tmp_path / "layout", layers, image_config(layers, ["/bin/true"]), "t")
    bundle = tmp_path / "deep"
    store = tmp_path / "store"
    # pytest's own clean-up of tmp_path recurses (shutil.rmtree on CPython 3.11)
    request.addfinalizer(lambda: fstree.remove(str(tmp_path), ignore_errors=True))
    _ok(_create(runtime, mode, "--from", str(layout), str(bundle)))
    _run(runtime, bundle, ["/bin/sh", "-c", f"mkdir -p /w{deep} && test -d /d{deep} "
                           "&& ! test -e /e"])
    written = bundle / ("rootfs" if mode == "--unpack" else "upper")
    assert os.path.isdir(str(written / "w") + deep)
    if mode == "--unpack":
        return  # not in the store: removed by whoever made it
    _ok(runtime("bundle", "rm", "--store", str(store), str(bundle)))
    assert not bundle.exists()
    assert _layers_in_store(store) == [] and not list((store / "layers/sha256").iterdir())


# ------------------------------------------------------------ hostile archives
def _hostile(runtime: Any, tmp_path: Path, entries: list[dict[str, Any]], mode: str,
             *words: str) -> Path:
    """Make a bundle of a base layer and `entries`: it must fail with `words` and
    leave nothing, or (no words) succeed.  Returns the bundle's path."""
    base = layer_tar([entry("d", "dir"), entry("ok", data=b"x")])
    layers = [base, layer_tar(entries)]
    layout = oci_layout(tmp_path / f"layout-{uuid.uuid4().hex[:6]}", layers,
                        image_config(layers, ["/bin/true"]), "evil")
    bundle = tmp_path / f"evil{mode}-{uuid.uuid4().hex[:6]}"
    store = tmp_path / "store"
    before = _layers_in_store(store)
    r = _create(runtime, mode, "--from", str(layout), str(bundle))
    if not words:
        _ok(r)
        return bundle
    _one_line_error(r, *words)
    assert not bundle.exists()
    assert _layers_in_store(store) == before  # the base layer it added is gone again
    assert not (store / "tmp").exists() or not list((store / "tmp").iterdir())
    return bundle


@pytest.mark.parametrize("mode", ["--unpack", "--overlay"])
def test_dotdot_entries_refused(runtime: Any, tmp_path: Path, mode: str) -> None:
    outside = tmp_path / "escaped"
    for name in ("../escaped", "d/../../escaped", "../../../../../../.." + str(outside)):
        _hostile(runtime, tmp_path, [entry(name, data=b"pwned")], mode, "leads outside")
        assert not outside.exists()
    _hostile(runtime, tmp_path, [entry("d/.wh...")], mode, "names no file")
    _hostile(runtime, tmp_path, [entry("hl", "hardlink", link="../../../../etc/passwd")],
             mode, "leads outside")


@pytest.mark.parametrize("mode", ["--unpack", "--overlay"])
def test_symlink_and_absolute_escapes_stay_inside(runtime: Any, tmp_path: Path,
                                                  mode: str) -> None:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "keep").write_text("host file")
    victim = tmp_path / "host-file"
    victim.write_text("host")
    bundle = _hostile(runtime, tmp_path, [
        entry("abs", "symlink", link=str(host_dir)),
        entry("rel", "symlink", link="../../../../../../../../" + str(host_dir)),
        entry("abs/pwned", data=b"pwned"),
        entry("rel/pwned2", data=b"pwned"),
        entry(str(host_dir) + "/pwned3", data=b"pwned"),  # an absolute name
        entry("abs/.wh.keep"),  # a whiteout through the link
        entry("hl", "hardlink", link=str(victim)),  # resolves inside: not found
    ][:-1], mode)
    assert sorted(os.listdir(host_dir)) == ["keep"] and (host_dir / "keep").exists()
    inside = (bundle / "rootfs") if mode == "--unpack" else None
    if inside is not None:  # they landed in the rootfs, where the links point from there
        assert (inside / str(host_dir)[1:] / "pwned").read_bytes() == b"pwned"
        assert (inside / str(host_dir)[1:] / "pwned2").exists()
        assert (inside / str(host_dir)[1:] / "pwned3").exists()
    _hostile(runtime, tmp_path, [entry("hl", "hardlink", link=str(victim))], mode,
             "hard link", "no such file")
    assert os.stat(victim).st_nlink == 1


@pytest.mark.parametrize("mode", ["--unpack", "--overlay"])
def test_overlay_xattrs_from_an_image_dropped(runtime: Any, tmp_path: Path, mode: str) -> None:
    bundle = _hostile(runtime, tmp_path, [entry("d2", "dir", pax={
        "SCHILY.xattr.trusted.overlay.redirect": "/ok",
        "SCHILY.xattr.user.fine": "yes"})], mode)
    if mode == "--unpack":
        d2 = bundle / "rootfs/d2"
    else:
        lower = json.loads((bundle / "config.json").read_text())["annotations"][
            "run.ocirun.overlay.lowerdir"].split(":")[0]
        d2 = Path(lower) / "d2"
    assert "trusted.overlay.redirect" not in os.listxattr(d2)
    assert os.getxattr(d2, "user.fine") == b"yes"


def test_bomb_corrupt_and_truncated(runtime: Any, tmp_path: Path) -> None:
    bomb = layer_tar([entry("zeros", data=bytes(8 << 20))])
    layout = oci_layout(tmp_path / "bomb", [bomb], image_config([bomb], ["/bin/true"]), "b")
    assert sum(p.stat().st_size for p in (layout / "blobs").rglob("*")) < 100_000
    for mode in ("--unpack", "--overlay"):
        _one_line_error(_create(runtime, mode, "--max-layer-size", str(1 << 20), "--from",
                                str(layout), str(tmp_path / "bomb-bundle")), "limit")
        assert not (tmp_path / "bomb-bundle").exists()
    # a layer blob changed after the manifest was written
    layers = [layer_tar([entry("f", data=b"original")])]
    layout = oci_layout(tmp_path / "corrupt", layers, image_config(layers, ["/bin/true"]),
                        "c", compress=False)
    blob = next(p for p in (layout / "blobs/sha256").iterdir() if p.stat().st_size > 1000)
    blob.write_bytes(blob.read_bytes().replace(b"original", b"ORIGINAL"))
    for mode in ("--unpack", "--overlay"):
        _one_line_error(_create(runtime, mode, "--from", str(layout),
                                str(tmp_path / "corrupt-bundle")), "does not match")
        assert not (tmp_path / "corrupt-bundle").exists()
    assert _layers_in_store(tmp_path / "store") == []
    # a truncated archive, and a truncated gzip layer
    layers = [layer_tar([entry("f", data=os.urandom(200_000))])]
    layout = oci_layout(tmp_path / "whole", layers, image_config(layers, ["/bin/true"]), "w")
    archive = tar_dir(layout, tmp_path / "whole.tar")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    _one_line_error(_create(runtime, "--from", str(archive), str(tmp_path / "t1")))
    blob = max((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    assert gzip.decompress(blob.read_bytes())
    blob.write_bytes(blob.read_bytes()[:5000])
    _one_line_error(_create(runtime, "--unpack", "--from", str(layout), str(tmp_path / "t2")))
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()


def test_bad_input(runtime: Any, busybox_rootfs: Path, tmp_path: Path) -> None:
    layers = [layer_tar([entry("f")])]
    config = image_config(layers, ["/bin/true"])
    docker = docker_archive(tmp_path / "d.tar", layers, config, "localhost/x:1")
    _one_line_error(_create(runtime, "--from", str(docker), "--ref", "nope",
                            str(tmp_path / "b")), "no image named 'nope'")
    _one_line_error(_create(runtime, "--from", str(tmp_path / "missing"), str(tmp_path / "b")),
                    "no such file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("")
    _one_line_error(_create(runtime, "--from", str(docker), str(tmp_path / "full")),
                    "not an empty directory")
    assert os.listdir(tmp_path / "full") == ["x"]
    _one_line_error(runtime("bundle", "create", str(tmp_path / "b")), "--from")
    _one_line_error(runtime("bundle", "frob"), "unknown bundle command")
    assert not (tmp_path / "b").exists()
    # a docker-archive whose manifest names a file outside the archive
    evil = tmp_path / "evil-docker"
    evil.mkdir()
    (evil / "manifest.json").write_text(json.dumps(
        [{"Config": "../../etc/passwd", "RepoTags": ["x:1"], "Layers": []}]))
    _one_line_error(_create(runtime, "--from", str(evil), str(tmp_path / "b")),
                    "not a path inside the archive")
    # by tag, from a docker-archive; the bundle runs
    _ok(_create(runtime, "--unpack", "--from", str(docker), "--ref", "x:1",
                str(tmp_path / "ok")))
    assert (tmp_path / "ok/rootfs/f").exists()
