"""`ps`: as runc, ps(1) with the options after the id (default -ef), filtered to the
container's processes by the PID column; a stopped container has none."""

from __future__ import annotations

from ocirun import jsonio
from ocirun import state as st
from ocirun.errors import OciError
from ocirun.pause import cgroup_of


def ps(root: str, container_id: str, fmt: str, ps_args: list[str]) -> None:
    """Print the table (or with fmt "json" the pids); ValueError for options that
    cannot go with the format."""
    if st.load(st.open_container(root, container_id)).status == "stopped":
        pids: list[int] = []
    else:
        pids = cgroup_of(root, container_id, ("created", "running", "paused"),
                         "list processes of").pids()
    if fmt == "json":
        if ps_args:
            raise ValueError("ps: options for ps(1) go with --format table only")
        print(jsonio.dumps(pids, compact=True))
        return
    lines = _ps_output(ps_args or ["-ef"])
    header = lines[0].split() if lines else []
    if "PID" not in header:
        raise OciError("ps: the output of ps(1) has no PID column")
    column = header.index("PID")
    wanted = set(pids)
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in wanted:
            print(line)


def _ps_output(args: list[str]) -> list[str]:
    import subprocess
    try:
        r = subprocess.run(["ps", *args], stdin=subprocess.DEVNULL, capture_output=True)
    except OSError as e:
        raise OciError(f"ps: running ps(1): {(e.strerror or str(e)).lower()}") from None
    if r.returncode != 0:
        raise OciError(f"ps {' '.join(args)}: exit status {r.returncode}: "
                       f"{r.stderr.decode(errors='replace').strip()}")
    return r.stdout.decode(errors="replace").splitlines()
