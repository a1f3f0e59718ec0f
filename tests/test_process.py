"""process.*: credentials, capabilities, rlimits, env, cwd, args — read from the kernel."""

from __future__ import annotations

import os

import pytest

from conftest import Runtime, proc_status
from ocirun.spec import CAPABILITIES


def _mask(*names: str) -> int:
    return sum(1 << CAPABILITIES.index(n) for n in names)


def test_capability_sets_user_and_groups(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        p = spec["process"]
        p["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [10, 20]}
        p["capabilities"] = {
            "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_CHOWN"],
            "ambient": ["CAP_CHOWN"],
        }
        p["noNewPrivileges"] = True
    cid = runtime.create(runtime.bundle(edit=edit))
    status = proc_status(runtime.pid(cid))
    assert int(status["CapBnd"], 16) == _mask("CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE")
    assert int(status["CapEff"], 16) == _mask("CAP_KILL", "CAP_CHOWN")
    assert int(status["CapPrm"], 16) == _mask("CAP_KILL", "CAP_CHOWN")
    assert int(status["CapInh"], 16) == _mask("CAP_CHOWN")
    assert int(status["CapAmb"], 16) == _mask("CAP_CHOWN")
    assert status["Uid"].split() == ["1000"] * 4
    assert status["Gid"].split() == ["1001"] * 4
    assert status["Groups"].split() == ["10", "20"]
    assert status["NoNewPrivs"] == "1"


def test_capabilities_after_exec_as_root(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    got = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    default = _mask("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert int(got["CapEff"], 16) == default and int(got["CapBnd"], 16) == default
    assert got["NoNewPrivs"] == "1"


def test_no_new_privileges_off(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["process"]["noNewPrivileges"] = False
    cid = runtime.create(runtime.bundle(edit=edit))
    assert proc_status(runtime.pid(cid))["NoNewPrivs"] == "0"


def test_rlimits(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
                                      {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]
    cid = runtime.create(runtime.bundle(edit=edit))
    with open(f"/proc/{runtime.pid(cid)}/limits") as f:
        limits = {line[:26].strip(): line[26:].split() for line in f}
    assert limits["Max open files"][:2] == ["100", "200"]
    assert limits["Max core file size"][:2] == ["0", "0"]


def test_every_rlimit_lands_and_unlimited_is_unlimited(runtime: Runtime) -> None:
    """Every name the spec allows reaches the kernel as that resource (by number, not
    through Python's `resource` module), and 2^64-1 is RLIM_INFINITY."""
    from ocirun.spec import RLIMITS
    shown = {"RLIMIT_AS": "Max address space", "RLIMIT_CORE": "Max core file size",
             "RLIMIT_CPU": "Max cpu time", "RLIMIT_DATA": "Max data size",
             "RLIMIT_FSIZE": "Max file size", "RLIMIT_LOCKS": "Max file locks",
             "RLIMIT_MEMLOCK": "Max locked memory", "RLIMIT_MSGQUEUE": "Max msgqueue size",
             "RLIMIT_NICE": "Max nice priority", "RLIMIT_NOFILE": "Max open files",
             "RLIMIT_NPROC": "Max processes", "RLIMIT_RSS": "Max resident set",
             "RLIMIT_RTPRIO": "Max realtime priority", "RLIMIT_RTTIME": "Max realtime timeout",
             "RLIMIT_SIGPENDING": "Max pending signals", "RLIMIT_STACK": "Max stack size"}
    assert set(shown) == set(RLIMITS)
    unlimited = 2**64 - 1

    def limits_of(pid: int | str) -> dict[str, list[str]]:
        with open(f"/proc/{pid}/limits") as f:
            return {line[:26].strip(): line[26:].split()[:2] for line in f}
    own = limits_of("self")
    values = {}
    for i, name in enumerate(sorted(RLIMITS)):  # never above our hard limits: the
        hard = own[shown[name]][1]                # runtime may lack CAP_SYS_RESOURCE
        hard_value = unlimited if hard == "unlimited" else int(hard)
        values[name] = (min(i + 11, hard_value), hard_value)
    assert unlimited in (h for _s, h in values.values())
    def edit(spec: dict) -> None:
        spec["process"]["rlimits"] = [{"type": n, "soft": s, "hard": h}
                                      for n, (s, h) in values.items()]
    cid = runtime.create(runtime.bundle(edit=edit))
    limits = limits_of(runtime.pid(cid))
    for name, (soft, hard) in values.items():
        want = [str(soft), "unlimited" if hard == unlimited else str(hard)]
        assert limits[shown[name]] == want, name


def test_an_rlimit_softer_than_its_hard_limit_is_a_one_line_error(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 200}]
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    err = r.stderr.decode()
    assert r.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert "process.rlimits" in err and "RLIMIT_NOFILE" in err, err
    assert not (runtime.root / cid).exists()


def test_oom_score_adj(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["process"]["oomScoreAdj"] = 123
    cid = runtime.create(runtime.bundle(edit=edit))
    with open(f"/proc/{runtime.pid(cid)}/oom_score_adj") as f:
        assert f.read().strip() == "123"


def test_env_cwd_umask_and_path_lookup(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        p = spec["process"]
        p["env"] = ["PATH=/bin", "FOO=bar baz"]
        p["cwd"] = "/tmp/work"
        p["user"]["umask"] = 0o077
    bundle = runtime.bundle(["sh", "-c", 'echo "$FOO"; pwd; umask; echo $HOME'], edit=edit)
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["bar baz", "/tmp/work", "0077", "/root"]


def test_sysctl_is_applied_in_the_container(runtime: Runtime) -> None:
    with open("/proc/sys/kernel/msgmax") as f:
        host = f.read().strip()
    inside = "4095" if host == "4096" else "4096"  # a value the host does not have

    def edit(spec: dict) -> None:
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.msgmax": inside}
    out = runtime("run", "--bundle", str(runtime.bundle(
        ["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/msgmax"], edit=edit)),
        runtime.new_id())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [b"1", inside.encode()]
    with open("/proc/sys/kernel/msgmax") as f:
        assert f.read().strip() == host  # the host keeps its own ipc namespace's value


def test_non_stdio_fds_do_not_reach_the_container(runtime: Runtime) -> None:
    import os
    bundle = runtime.bundle(["ls", "/proc/self/fd"])
    leaked = os.open("/dev/null", os.O_RDONLY)  # inheritable, as engines leak them
    os.set_inheritable(leaked, True)
    try:
        r = runtime("run", "--bundle", str(bundle), runtime.new_id(), close_fds=False)
    finally:
        os.close(leaked)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == [b"0", b"1", b"2", b"3"]  # 3: ls's own dir fd


def test_new_session_keyring_named_after_the_container(runtime: Runtime) -> None:
    bundle = runtime.bundle()
    with_keyring = runtime.create(bundle)
    without = runtime.create(bundle, None, "--no-new-keyring")
    with open("/proc/keys") as f:
        names = [line.split()[-2].rstrip(":") for line in f]
    assert with_keyring in names
    assert without not in names


def test_effective_capability_outside_permitted_is_named(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        caps = spec["process"]["capabilities"]
        caps["effective"] = caps["effective"] + ["CAP_CHOWN"]
        caps["permitted"] = [c for c in caps["permitted"] if c != "CAP_CHOWN"]
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0
    assert b"process.capabilities.effective: CAP_CHOWN not in permitted" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("passwd, home", [
    ("fifo", "/"),  # would block the init forever if read as a file
    ("latin-1", "/home/j\udce9r\udcf4me"),  # not UTF-8: read as bytes
    ("plain", "/home/app"),
])
def test_home_from_a_hostile_etc_passwd(runtime: Runtime, passwd: str, home: str) -> None:
    """HOME comes from the image's /etc/passwd, which may be anything: the container
    starts all the same, with HOME from it where it names the user, "/" otherwise."""
    import subprocess
    bundle = runtime.bundle(["sh", "-c", 'printf %s "$HOME" | od -An -c'], own_rootfs=True,
                            edit=lambda s: s["process"]["user"].update(uid=1000, gid=1000))
    target = bundle / "rootfs" / "etc" / "passwd"
    target.unlink(missing_ok=True)
    if passwd == "fifo":
        os.mkfifo(target)
    else:
        name = b"j\xe9r\xf4me" if passwd == "latin-1" else b"app"
        target.write_bytes(b"root:x:0:0:root:/root:/bin/sh\n"
                           b"u:x:1000:1000::/home/" + name + b":/bin/sh\n")
    r = runtime("run", "--bundle", str(bundle), runtime.new_id(), timeout=20)
    assert r.returncode == 0, r.stderr
    expected = subprocess.run(["od", "-An", "-c"], input=os.fsencode(home),
                              capture_output=True).stdout
    assert r.stdout == expected
