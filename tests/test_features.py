"""`ocirun features` and `ocirun --version`, in the shapes engines read."""

from __future__ import annotations

import json
import subprocess

from conftest import OCIRUN, _env


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OCIRUN, *args], env=_env(), capture_output=True, timeout=30)


def test_features_document_has_the_runtime_spec_fields() -> None:
    r = _run("features")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ociVersionMin"] == "1.0.0" and doc["ociVersionMax"].startswith("1.")
    assert {"prestart", "createRuntime", "createContainer", "startContainer",
            "poststart", "poststop"} == set(doc["hooks"])
    assert {"ro", "rbind", "nosuid", "rprivate"} <= set(doc["mountOptions"])
    linux = doc["linux"]
    assert {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"} <= set(
        linux["namespaces"])
    assert "CAP_SYS_ADMIN" in linux["capabilities"]
    assert linux["cgroup"]["v1"] is True and linux["cgroup"]["v2"] is True
    seccomp = linux["seccomp"]
    assert seccomp["enabled"] is True
    assert "SCMP_ACT_ERRNO" in seccomp["actions"] and "SCMP_CMP_EQ" in seccomp["operators"]
    assert "SCMP_ARCH_X86_64" in seccomp["archs"] or "SCMP_ARCH_AARCH64" in seccomp["archs"]
    assert linux["apparmor"] == {"enabled": True} and linux["selinux"] == {"enabled": True}
    assert isinstance(doc["annotations"], dict)
    assert doc["annotations"]["io.github.seccomp.libseccomp.version"].count(".") == 2


def test_version_lines_like_runc() -> None:
    r = _run("--version")
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("ocirun version ")
    assert any(line.startswith("spec: 1.") for line in lines)
    assert any(line.startswith("libseccomp: ") for line in lines)
    assert _run("-v").stdout == r.stdout


def test_help_lists_the_engine_commands() -> None:
    out = _run("--help").stdout.decode()
    for command in ("exec", "update", "events", "features", "ps", "pause", "resume"):
        assert f"  {command} " in out
