"""The seed demonstrations, against a plain process placed in a test cgroup.

Each workload is started held at `read`, placed into the cgroup (with its limits
already written), and only then released, so it never runs unconfined.  The same
checks belong at container level once the lifecycle exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from ocirun.cgroups.base import BaseManager
from test_cgroups_support import (  # noqa: F401  (cgroups is a fixture)
    Cgroups, cgroups, needs_root, read, require, resources, wait_for)

pytestmark = needs_root


def _release(p: subprocess.Popen) -> None:
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()


def test_fork_bomb_is_held_by_pids_limit(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    require(m, "pids")
    m.apply(resources({"pids": {"limit": 20}}))
    bomb = cgroups.spawn(m, ["sh", "-c", "read go; f() { f | f & }; f; sleep 1000"], stdin=True)
    _release(bomb)
    time.sleep(2)
    current = int(read(m, "pids", "pids.current"))
    assert 1 < current <= 20
    # The host can still fork.
    assert subprocess.run(["true"], timeout=30).returncode == 0
    m.kill_all(signal.SIGKILL)  # frozen while signalled, so no child escapes
    assert wait_for(lambda: m.pids() == [], timeout=15)


def test_memory_hog_is_oom_killed(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "memory")
    limit = 80 << 20
    mem: dict = {"limit": limit}
    swap_file = "memory.memsw.limit_in_bytes" if v == 1 else "memory.swap.max"
    if os.path.exists(os.path.join(m.dir_for("memory") or "", swap_file)):
        mem["swap"] = limit  # memory+swap == memory: no swap to hide in
    m.apply(resources({"memory": mem}))
    hog = cgroups.spawn(m, ["sh", "-c", "read go; yes | tr \\\\n x | head -c 1000m | grep n"],
                        stdin=True)
    _release(hog)
    _, _ = hog.communicate(timeout=300)
    # grep holds the one long line in memory until the OOM killer ends it.
    assert hog.returncode in (128 + signal.SIGKILL, -signal.SIGKILL), hog.returncode
    assert m.oom_kill_count() >= 1
    stats = m.stats()
    assert stats["memory"]["usage"]["limit"] == limit
    assert subprocess.run(["true"], timeout=30).returncode == 0


def _cpu_usage_ns(m: BaseManager) -> int:
    if m.version_of("cpu") == 2:
        d = m.dir_for("cpu")
        assert d is not None
        with open(os.path.join(d, "cpu.stat")) as f:
            stat = dict(line.split() for line in f)
        return int(stat["usage_usec"]) * 1000
    return int(read(m, "cpuacct", "cpuacct.usage"))


def test_cpu_quota_holds_a_busy_loop_near_five_percent(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    require(m, "cpu")
    if m.version_of("cpu") == 1:
        require(m, "cpuacct")
    m.apply(resources({"cpu": {"quota": 5000, "period": 100000}}))
    busy = cgroups.spawn(m, ["sh", "-c", "read go; exec yes > /dev/null"], stdin=True)
    _release(busy)
    time.sleep(0.5)  # let it reach the steady state
    start_ns, start = _cpu_usage_ns(m), time.monotonic()
    time.sleep(4)
    used = (_cpu_usage_ns(m) - start_ns) / 1e9 / (time.monotonic() - start)
    # 5% of one CPU, with room for timer slack (and emulated guests).
    assert 0.02 <= used <= 0.09, f"busy loop got {used:.1%} of a CPU"
    stats = m.stats()
    assert stats["cpu"]["throttling"]["throttled_periods"] > 0
