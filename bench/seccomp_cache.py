#!/usr/bin/env python3
"""Seccomp: compiling podman's default profile vs loading it from the cache.

Each sample runs in a fresh interpreter (as `ocirun create` would), so a miss pays the
`import pyseccomp` too.  Printed: medians over --runs of
  miss     prepare() with an empty cache: import pyseccomp + libseccomp + write the cache
  hit      prepare() with the cache filled: read + checksum, no pyseccomp
  load     load() in a forked child: the one seccomp(2) call
and the miss/hit ratio.  Usage: python3 bench/seccomp_cache.py [--runs N] [--profile F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the fresh interpreter: times one prepare() (and one load() in a child).
_SAMPLE = r"""
import json, os, sys, time
from ocirun.seccomp import prepare, load
from seccomp_profile import load_engine_profile
sc = load_engine_profile(sys.argv[1])
t0 = time.perf_counter()
p = prepare(sc, sys.argv[2])
t1 = time.perf_counter()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    import ctypes
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # no_new_privs
    t = time.perf_counter()
    load(p)
    os.write(w, repr(time.perf_counter() - t).encode())
    os._exit(0)
os.close(w)
load_s = float(os.read(r, 100))
os.waitpid(pid, 0)
print(json.dumps({"prepare": t1 - t0, "load": load_s, "hit": p.cache_hit,
                  "insns": p.instructions, "pyseccomp": "pyseccomp" in sys.modules,
                  "rules": len(sc.syscalls), "names": sum(len(r.names) for r in sc.syscalls)}))
"""


def sample(profile: str, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO + ":" + os.path.join(REPO, "tests"))
    out = subprocess.run([sys.executable, "-c", _SAMPLE, profile, cache], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--profile", default="/usr/share/containers/seccomp.json")
    args = ap.parse_args()
    if not os.path.exists(args.profile):
        print(f"{args.profile} missing: apt-get install golang-github-containers-common",
              file=sys.stderr)
        return 1

    misses, hits, loads = [], [], []
    info: dict = {}
    for _ in range(args.runs):
        cache = tempfile.mkdtemp(prefix="ocirun-seccomp-bench-")
        try:
            miss = sample(args.profile, cache)
            hit = sample(args.profile, cache)
        finally:
            shutil.rmtree(cache)
        assert not miss["hit"] and miss["pyseccomp"], miss
        assert hit["hit"] and not hit["pyseccomp"], hit
        misses.append(miss["prepare"])
        hits.append(hit["prepare"])
        loads.append(hit["load"])
        info = hit

    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    print(f"profile: {args.profile}: {info['rules']} rules, {info['names']} syscall names, "
          f"{info['insns']} BPF instructions; median of {args.runs} fresh interpreters")
    print(f"  miss  (import pyseccomp + compile + write): {ms(misses):8.3f} ms")
    print(f"  hit   (read cache, no pyseccomp):           {ms(hits):8.3f} ms")
    print(f"  load  (seccomp(2) in the child):            {ms(loads):8.3f} ms")
    print(f"  miss / hit = {ms(misses) / ms(hits):.0f}x;  "
          f"miss / (hit + load) = {ms(misses) / (ms(hits) + ms(loads)):.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
