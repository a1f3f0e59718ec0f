"""Resource usage snapshots shaped like runc's `events --stats` data (types.Stats).

Missing files give missing keys or zeros rather than errors: stats are best effort,
and a container without, say, a hugetlb controller simply has no hugetlb section.
"""

from __future__ import annotations

import os

from ocirun.cgroups import fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_USER_HZ = 100  # cpuacct.stat counts in clock ticks


def _ints(path: str) -> list[int]:
    return [int(x) for x in (fsutil.read_or_none(path) or "").split() if x.lstrip("-").isdigit()]


def _int(path: str) -> int:
    v = fsutil.read_int(path)
    return 0 if v is None else v


def _limit(path: str) -> int:
    """A limit file: "max" (v2) is reported as the largest u64, as runc does."""
    text = (fsutil.read_or_none(path) or "").strip()
    if text == "max":
        return 2**64 - 1
    try:
        return int(text)
    except ValueError:
        return 0


def _entry(d: str, prefix: str) -> dict[str, int]:
    return {"usage": _int(f"{d}/{prefix}.usage_in_bytes"),
            "max": _int(f"{d}/{prefix}.max_usage_in_bytes"),
            "failcnt": _int(f"{d}/{prefix}.failcnt"),
            "limit": _limit(f"{d}/{prefix}.limit_in_bytes")}


def _page_size(name: str) -> str | None:
    """"2MB" from a file name like hugetlb.2MB.current (hugetlb.<digits><K|M|G>B.*)."""
    parts = name.split(".", 2)
    if len(parts) < 3 or parts[0] != "hugetlb":
        return None
    size = parts[1]
    digits = size[:-2]
    if size[-2:] in ("KB", "MB", "GB") and digits.isascii() and digits.isdigit():
        return size
    return None


def _page_sizes(d: str) -> list[str]:
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return sorted({s for n in names if (s := _page_size(n)) is not None})


def _hugetlb_v2(d: str) -> dict[str, Any]:
    return {size: {"usage": _int(f"{d}/hugetlb.{size}.current"),
                   "max": _limit(f"{d}/hugetlb.{size}.max"),
                   "failcnt": fsutil.read_keyed(f"{d}/hugetlb.{size}.events").get("max", 0)}
            for size in _page_sizes(d)}


def _blkio_v1(path: str) -> list[dict[str, Any]]:
    out = []
    for line in (fsutil.read_or_none(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            out.append({"major": int(major), "minor": int(minor), "op": parts[1],
                        "value": int(parts[2])})
    return out


def v1_stats(dir_for: Callable[[str], str | None],
             version_of: Callable[[str], int | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if (d := dir_for("cpuacct")) is not None:
        ticks = fsutil.read_keyed(f"{d}/cpuacct.stat")
        cpu["usage"] = {"total": _int(f"{d}/cpuacct.usage"),
                        "percpu": _ints(f"{d}/cpuacct.usage_percpu"),
                        "percpu_kernel": _ints(f"{d}/cpuacct.usage_percpu_sys"),
                        "percpu_user": _ints(f"{d}/cpuacct.usage_percpu_user"),
                        "kernel": ticks.get("system", 0) * (10**9 // _USER_HZ),
                        "user": ticks.get("user", 0) * (10**9 // _USER_HZ)}
    if (d := dir_for("cpu")) is not None:
        st = fsutil.read_keyed(f"{d}/cpu.stat")
        cpu["throttling"] = {"periods": st.get("nr_periods", 0),
                             "throttled_periods": st.get("nr_throttled", 0),
                             "throttled_time": st.get("throttled_time", 0)}
    if cpu:
        out["cpu"] = cpu
    if (d := dir_for("memory")) is not None:
        raw = fsutil.read_keyed(f"{d}/memory.stat")
        out["memory"] = {"cache": raw.get("cache", 0), "usage": _entry(d, "memory"),
                         "swap": _entry(d, "memory.memsw"), "kernel": _entry(d, "memory.kmem"),
                         "kernel_tcp": _entry(d, "memory.kmem.tcp"), "raw": raw,
                         "use_hierarchy": _int(f"{d}/memory.use_hierarchy") == 1}
    if (d := dir_for("pids")) is not None:
        out["pids"] = {"current": _int(f"{d}/pids.current"), "limit": _limit(f"{d}/pids.max")}
    if (d := dir_for("blkio")) is not None:
        def pick(name: str) -> list[dict[str, Any]]:
            # CFQ/BFQ files first; the throttle ones count every device otherwise.
            for f in (f"blkio.{name}", f"blkio.bfq.{name}", f"blkio.throttle.{name}"):
                entries = _blkio_v1(f"{d}/{f}")
                if entries:
                    return entries
            return []
        out["blkio"] = {"ioServiceBytesRecursive": pick("io_service_bytes_recursive"),
                        "ioServicedRecursive": pick("io_serviced_recursive")}
    if (d := dir_for("hugetlb")) is not None:
        if version_of("hugetlb") == 2:
            out["hugetlb"] = _hugetlb_v2(d)
        else:
            out["hugetlb"] = {s: {"usage": _int(f"{d}/hugetlb.{s}.usage_in_bytes"),
                                  "max": _int(f"{d}/hugetlb.{s}.max_usage_in_bytes"),
                                  "failcnt": _int(f"{d}/hugetlb.{s}.failcnt")}
                              for s in _page_sizes(d)}
    return out


def v2_stats(d: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    st = fsutil.read_keyed(f"{d}/cpu.stat")
    out["cpu"] = {"usage": {"total": st.get("usage_usec", 0) * 1000,
                            "kernel": st.get("system_usec", 0) * 1000,
                            "user": st.get("user_usec", 0) * 1000,
                            "percpu": [], "percpu_kernel": [], "percpu_user": []},
                  "throttling": {"periods": st.get("nr_periods", 0),
                                 "throttled_periods": st.get("nr_throttled", 0),
                                 "throttled_time": st.get("throttled_usec", 0) * 1000}}
    if os.path.exists(f"{d}/memory.current"):
        raw = fsutil.read_keyed(f"{d}/memory.stat")
        events = fsutil.read_keyed(f"{d}/memory.events")
        out["memory"] = {
            "cache": raw.get("file", 0), "raw": raw,
            "usage": {"usage": _int(f"{d}/memory.current"), "max": _int(f"{d}/memory.peak"),
                      "limit": _limit(f"{d}/memory.max"), "failcnt": events.get("max", 0)},
            "swap": {"usage": _int(f"{d}/memory.swap.current"),
                     "max": _int(f"{d}/memory.swap.peak"),
                     "limit": _limit(f"{d}/memory.swap.max"), "failcnt": 0},
        }
    if os.path.exists(f"{d}/pids.current"):
        out["pids"] = {"current": _int(f"{d}/pids.current"), "limit": _limit(f"{d}/pids.max")}
    if os.path.exists(f"{d}/io.stat"):
        served_bytes, served = [], []
        for line in (fsutil.read_or_none(f"{d}/io.stat") or "").splitlines():
            dev, *fields = line.split()
            major, minor = (int(x) for x in dev.split(":"))
            kv = dict(f.split("=", 1) for f in fields if "=" in f)
            for key, op, dest in (("rbytes", "Read", served_bytes), ("wbytes", "Write", served_bytes),
                                  ("rios", "Read", served), ("wios", "Write", served)):
                if key in kv:
                    dest.append({"major": major, "minor": minor, "op": op,
                                 "value": int(kv[key])})
        out["blkio"] = {"ioServiceBytesRecursive": served_bytes, "ioServicedRecursive": served}
    hugetlb = _hugetlb_v2(d)
    if hugetlb:
        out["hugetlb"] = hugetlb
    return out
