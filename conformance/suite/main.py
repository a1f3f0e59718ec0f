"""conformance/run: grade an OCI runtime against the runtime spec, case by case."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from suite import cases  # noqa: F401 - registers every case
from suite.harness import (REPO, Case, Ctx, Fail, Runtime, Skip, Suite, Template,
                           iter_cases)

PR_SET_CHILD_SUBREAPER = 36


def resolve_runtime(spec: str) -> Runtime:
    """'ocirun' is this checkout run by the current interpreter; anything else is a
    command (a path, a name on PATH, or a quoted command line)."""
    if spec == "ocirun":
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return Runtime([os.path.realpath(sys.executable), "-m", "ocirun"], env, "ocirun")
    argv = shlex.split(spec)
    exe = shutil.which(argv[0]) or argv[0]
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"conformance: runtime {argv[0]!r} not found or not executable")
    return Runtime([os.path.abspath(exe), *argv[1:]], None, os.path.basename(argv[0]))


def run_case(suite: Suite, c: Case) -> dict[str, Any]:
    t0 = time.monotonic()
    ctx = Ctx(suite, c)
    outcome, msg = "PASS", ""
    try:
        ret = c.fn(ctx)
        if isinstance(ret, str):
            msg = ret
    except Fail as e:
        outcome, msg = "FAIL", str(e)
    except Skip as e:
        outcome, msg = "SKIP", str(e)
    except Exception as e:  # noqa: BLE001 - a harness bug must not stop the run
        outcome, msg = "FAIL", f"harness error: {type(e).__name__}: {e}"
        with open(ctx.path("traceback.txt"), "w") as f:
            traceback.print_exc(file=f)
    try:
        ctx.cleanup()
    except Exception as e:  # noqa: BLE001
        ctx.leaks.append(f"cleanup error: {type(e).__name__}: {e}")
    if ctx.leaks:
        leak = "left behind: " + "; ".join(ctx.leaks)
        if outcome == "FAIL":
            msg = f"{msg}; {leak}"
        else:
            outcome, msg = "FAIL", leak + (f" (case itself: {outcome} {msg})".rstrip() if msg else "")
    if ctx.notes:
        msg = (msg + "; " if msg else "") + "; ".join(ctx.notes)
    return {"id": c.id, "section": c.section, "name": c.name, "level": c.level, "ref": c.ref,
            "sentence": c.sentence, "outcome": outcome, "message": msg,
            "seconds": round(time.monotonic() - t0, 3), "dir": ctx.dir}


def line(r: dict[str, Any], verbose: bool) -> str:
    cite = f"[{r['level']} {r['ref']}]"
    if r["outcome"] == "PASS":
        text = f"PASS {r['id']}: {cite}" + (f" {r['message']}" if r["message"] else "")
    elif r["outcome"] == "FAIL":
        text = f"FAIL {r['id']}: {r['message']} {cite}"
    else:
        text = f"SKIP {r['id']}: {r['message']}"
    if verbose:
        text += f"\n     {r['level']}: \"{r['sentence']}\" ({r['seconds']:.2f}s, {r['dir']})"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="conformance/run", description=__doc__)
    ap.add_argument("--runtime", default="ocirun",
                    help="runtime to grade: 'ocirun' (this checkout), a name on PATH, a path, "
                         "or a quoted command line (default: ocirun)")
    ap.add_argument("--filter", action="append", default=[],
                    help="only cases whose id contains this text (repeatable)")
    ap.add_argument("--jobs", "-j", type=int, default=2, help="cases run in parallel (2)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--known-failures", metavar="FILE",
                    help="case ids (one a line, # comments) expected to fail: they are "
                         "still printed and counted as failed, but alone do not make the "
                         "exit status non-zero (for CI); a listed case that passes is "
                         "reported so the list can shrink")
    ap.add_argument("--list", action="store_true", help="list the cases and their sentences")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="print the cited sentence, time and work dir of every case")
    args = ap.parse_args(argv)

    selected = list(iter_cases(args.filter))
    if args.list:
        for c in selected:
            print(f"{c.id}  [{c.level} {c.ref}]\n    {c.sentence}")
        print(f"{len(selected)} cases")
        return 0
    if os.geteuid() != 0:
        print("conformance: needs root (containers with namespaces, cgroups, mounts)",
              file=sys.stderr)
        return 2
    if not selected:
        print(f"conformance: no case matches {args.filter}", file=sys.stderr)
        return 2
    runtime = resolve_runtime(args.runtime)
    # Like conmon or containerd-shim: the containers' processes are re-parented to us.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.umask(0o022)
    workdir = tempfile.mkdtemp(prefix="oci-conformance-")
    os.chmod(workdir, 0o755)
    started = time.monotonic()
    print(f"# runtime: {' '.join(runtime.argv)} ({runtime.version()})")
    print(f"# host: {platform.node()} {platform.release()}; {len(selected)} cases, "
          f"{args.jobs} at a time; work dir {workdir}", flush=True)
    results: list[dict[str, Any]] = []
    try:
        suite = Suite(runtime, workdir, Template(workdir))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_case, suite, c) for c in selected]
            for fut in futures:  # printed in registry order, as soon as each is known
                r = fut.result()
                results.append(r)
                print(line(r, args.verbose), flush=True)
    finally:
        _reap_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("PASS", "FAIL", "SKIP")}
    must_fail = sum(r["outcome"] == "FAIL" and r["level"] == "MUST" for r in results)
    elapsed = time.monotonic() - started
    print(f"# failed MUST: {must_fail}, failed SHOULD: {counts['FAIL'] - must_fail}; "
          f"{elapsed:.1f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runtime": runtime.argv, "version": runtime.version(),
                       "host": platform.node(), "kernel": platform.release(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                       "seconds": round(elapsed, 1), "counts": counts,
                       "results": results}, f, indent=1)
    failed = {r["id"] for r in results if r["outcome"] == "FAIL"}
    status = 1 if failed else 0
    if args.known_failures:
        known = _known(args.known_failures)
        fixed = sorted(k for k in known if k in {r["id"] for r in results} and k not in failed)
        new_failures = sorted(failed - known)
        print(f"# known failures: {len(failed & known)} still failing; new failures: "
              f"{', '.join(new_failures) or 'none'}; now passing (drop from "
              f"{args.known_failures}): {', '.join(fixed) or 'none'}")
        status = 1 if new_failures else 0
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return status


def _known(path: str) -> set[str]:
    with open(path) as f:
        return {line.split("#", 1)[0].strip() for line in f} - {""}


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(main())
