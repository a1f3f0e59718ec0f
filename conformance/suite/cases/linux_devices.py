"""config-linux.md#devices, #default-devices and the device allowlist of #control-groups."""

from __future__ import annotations

import os

from suite.cases.common import dev_numbers, expect_create_error, stat_line
from suite.harness import MUST, Ctx, Fail, case, check, expect_eq, kv_lines

DEFAULTS = {"/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/full": (1, 7),
            "/dev/random": (1, 8), "/dev/urandom": (1, 9), "/dev/tty": (5, 0)}


@case("linux/devices", "default-devices", MUST, "config-linux.md#default-devices",
      "In addition to any devices configured with this setting, the runtime MUST also "
      "supply: /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom, /dev/tty, ... "
      "/dev/ptmx. A bind-mount or symlink of the container's ptmx.")
def default_devices(t: Ctx) -> None:
    script = "; ".join(stat_line(p) for p in [*DEFAULTS, "/dev/ptmx"])
    script += ("; echo usable=$(head -c 4 /dev/zero | wc -c)$(head -c 4 /dev/urandom | wc -c)"
               "$(echo x > /dev/null && echo ok)")
    out, _ = t.run_script(script)
    got = kv_lines(out)
    for path, (major, minor) in DEFAULTS.items():
        fields = got.get(path, "missing").split()
        check(fields[0] != "missing", f"{path} is missing")
        check(" ".join(fields[:3]) == "character special file",
              f"{path}: expected a character device, got {' '.join(fields)}")
        expect_eq(f"{path} device number", (major, minor), dev_numbers(fields[3]))
    ptmx = got.get("/dev/ptmx", "missing")
    check(ptmx.startswith("symbolic link") or
          (ptmx.startswith("character special file") and
           dev_numbers(ptmx.split()[3]) == (5, 2)),
          f"/dev/ptmx: expected a symlink to pts/ptmx or the 5:2 device, got {ptmx}")
    expect_eq("reading /dev/zero and /dev/urandom, writing /dev/null", "44ok", got.get("usable"))


@case("linux/devices", "listed-devices", MUST, "config-linux.md#devices",
      "devices (array of objects, OPTIONAL) lists devices that MUST be available in the "
      "container. ... type, path, major, minor, fileMode (file mode for the device), uid "
      "(id of device owner in the container namespace), gid (id of device group in the "
      "container namespace).")
def listed_devices(t: Ctx) -> None:
    devs = [
        {"path": "/dev/conf-null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
         "uid": 1000, "gid": 1001},
        {"path": "/dev/conf-loop", "type": "b", "major": 7, "minor": 0, "fileMode": 0o600,
         "uid": 0, "gid": 0},
        {"path": "/dev/conf-fifo", "type": "p", "fileMode": 0o644, "uid": 0, "gid": 0},
    ]

    def mutate(cfg: dict) -> None:
        cfg["linux"]["devices"] = devs
    out, _ = t.run_script("; ".join(stat_line(d["path"]) for d in devs), mutate)
    got = kv_lines(out)
    kinds = {"c": "character special file", "b": "block special file", "p": "fifo"}
    for d in devs:
        fields = got.get(d["path"], "missing")
        check(fields != "missing", f"{d['path']} is missing")
        check(fields.startswith(kinds[d["type"]]),
              f"{d['path']}: expected a {kinds[d['type']]}, got {fields}")
        rest = fields[len(kinds[d["type"]]):].split()
        if d["type"] != "p":
            expect_eq(f"{d['path']} device number", (d["major"], d["minor"]),
                      dev_numbers(rest[0]))
        expect_eq(f"{d['path']} mode", oct(d["fileMode"])[2:], rest[1])
        expect_eq(f"{d['path']} owner", f"{d['uid']}:{d['gid']}", rest[2])


@case("linux/devices", "existing-file-mismatch", MUST, "config-linux.md#devices",
      "path (string, REQUIRED) - full path to device inside container. If a file already "
      "exists at path that does not match the requested device, the runtime MUST generate "
      "an error.")
def device_mismatch(t: Ctx) -> str:
    cfg = t.config(["true"])
    cfg["linux"]["devices"] = [{"path": "/conformance-devfile", "type": "c", "major": 1,
                                "minor": 3}]

    def prepare(rootfs: str) -> None:
        with open(f"{rootfs}/conformance-devfile", "w") as f:
            f.write("a regular file, not 1:3\n")
    return expect_create_error(t, cfg, "a device path where a regular file exists", prepare)


OPEN = ('r=$( (exec 3<{0}) 2>&1 && echo ok); echo "{1}_read=$r"; '
        'w=$( (exec 3>{0}) 2>&1 && echo ok); echo "{1}_write=$w"')


@case("linux/cgroups", "device-allowlist-order", MUST, "config-linux.md#allowed-device-list",
      "devices (array of objects, OPTIONAL) configures the allowed device list. The runtime "
      "MUST apply entries in the listed order.")
def device_allowlist(t: Ctx) -> None:
    if not os.path.exists("/sys/dev/char/10:237") or not os.path.exists("/sys/dev/char/10:235"):
        from suite.harness import Skip
        raise Skip("needs the loop-control (10:237) and autofs (10:235) drivers")

    def mutate(cfg: dict) -> None:
        cfg["linux"]["devices"] = [
            {"path": "/dev/conf-a", "type": "c", "major": 10, "minor": 237, "fileMode": 0o666},
            {"path": "/dev/conf-b", "type": "c", "major": 10, "minor": 235, "fileMode": 0o666}]
        cfg["linux"]["resources"]["devices"] = [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 10, "minor": 237, "access": "rwm"},
            {"allow": False, "type": "c", "major": 10, "minor": 237, "access": "w"}]
    out, _ = t.run_script(OPEN.format("/dev/conf-a", "a") + "; " +
                          OPEN.format("/dev/conf-b", "b"), mutate)
    got = kv_lines(out)

    def denied(key: str) -> bool:
        v = got.get(key)
        if v is None:
            raise Fail(f"no result for {key}: {out!r}")
        return "not permitted" in v.lower()
    check(not denied("a_read"), f"10:237 read: allowed by rule 2, got {got.get('a_read')!r}")
    check(denied("a_write"), f"10:237 write: allowed by rule 2 then denied by rule 3, the "
                             f"open succeeded ({got.get('a_write')!r})")
    check(denied("b_read"), f"10:235 read: denied by rule 1, got {got.get('b_read')!r}")
