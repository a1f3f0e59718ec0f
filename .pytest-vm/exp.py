import json, subprocess, sys, os
sys.path.insert(0, "/work/main")
from ocirun.specgen import default_spec
subprocess.run(["/work/main/bundles/build-busybox.sh", "/tmp/bb"], stdout=subprocess.DEVNULL, check=True)
print(open("/proc/self/cgroup").read(), open("/sys/fs/cgroup/cgroup.subtree_control").read())
for ns in (True, False):
    s = default_spec()
    s["root"] = {"path": "/tmp/bb/rootfs", "readonly": True}
    s["process"]["terminal"] = False
    s["process"]["args"] = ["sh", "-c", "cat /proc/self/cgroup; ls /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.procs; cat /sys/fs/cgroup/memory.max; find /sys/fs/cgroup -type d; mount | grep cgroup"]
    s["linux"]["cgroupsPath"] = "exp-ctr"
    s["linux"]["resources"]["memory"] = {"limit": 100<<20}
    if not ns:
        s["linux"]["namespaces"] = [n for n in s["linux"]["namespaces"] if n["type"] != "cgroup"]
    os.makedirs("/tmp/b", exist_ok=True)
    json.dump(s, open("/tmp/b/config.json", "w"))
    r = subprocess.run([sys.executable, "-m", "ocirun", "--root", "/tmp/state", "run", "--bundle", "/tmp/b", "exp1"], capture_output=True, text=True, cwd="/work/main")
    print("=== cgroupns", ns, r.returncode); print(r.stdout); print(r.stderr)
print(os.listdir("/sys/fs/cgroup"))
