"""Every syscall number ocirun uses, on every architecture it claims, is the one
libseccomp's tables give (pyseccomp resolves names per architecture)."""

from __future__ import annotations

import errno

import pyseccomp
import pytest

from ocirun.sys import arch


@pytest.mark.parametrize("machine", sorted(arch.SYSCALLS))
def test_numbers_match_libseccomp(machine: str) -> None:
    seccomp_arch = getattr(pyseccomp.Arch, arch.SECCOMP_ARCH[machine])
    for name, nr in arch.SYSCALLS[machine].items():
        assert pyseccomp.resolve_syscall(seccomp_arch, name) == nr, (machine, name)


def test_every_architecture_has_every_call() -> None:
    names = set(arch.SYSCALLS["x86_64"])
    for machine, table in arch.SYSCALLS.items():
        assert set(table) == names, machine


def test_an_unknown_architecture_is_enosys_not_a_guess() -> None:
    with pytest.raises(OSError) as e:
        arch.number("pivot_root", "mips64")
    assert e.value.errno == errno.ENOSYS and "mips64" in str(e.value)


def test_no_syscall_number_outside_the_table() -> None:
    """The syscall layer takes its numbers from arch.py, never from literals."""
    import ast
    import pathlib
    import ocirun.sys
    for path in pathlib.Path(ocirun.sys.__file__).parent.glob("*.py"):
        if path.name == "arch.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.startswith(("_SYS_", "_NR_")):
                        raise AssertionError(f"{path.name}: {target.id} (use arch.number)")


def test_rlimit_numbers_are_the_kernels() -> None:
    """ocirun.sys sets rlimits by number; Python's `resource` has this host's."""
    import resource

    from ocirun.spec import RLIMITS
    from ocirun.sys import RLIMIT_NUMBERS
    assert set(RLIMIT_NUMBERS) == set(RLIMITS)
    known = [name for name in RLIMIT_NUMBERS if hasattr(resource, name)]
    assert len(known) >= 14  # CPython leaves out RLIMIT_LOCKS (10) and RLIMIT_NICE on some
    for name in known:
        assert getattr(resource, name) == RLIMIT_NUMBERS[name], name
