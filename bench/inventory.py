#!/usr/bin/env python3
"""One-shot inventory benchmark: cmdb-agent vs facter vs fusioninventory-inventory.

Runs every tool on this machine in one run: one warm-up, then N measured runs each
(interleaved, so machine noise hits all tools alike), and prints median wall time, median
CPU time (user + sys, including child processes) and median peak RSS, with our/peer ratios.
Peak RSS comes from wait4() on each run, so it is per run, not per session.

    python3 bench/inventory.py [--runs 5] [--no-build] [--no-install]

Peers are Debian packages; the script installs them (apt-get) when missing and run as root.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target", "release", "cmdb-agent")
GNU_TIME = "/usr/bin/time"


def measure(argv):
    """Runs argv with stdout/stderr to /dev/null; returns (wall s, cpu s, peak RSS KiB, rc).

    The tool is started through GNU time, whose own pre-exec footprint is about 1 MiB: a
    tool forked straight from this Python process would inherit Python's ~10 MiB high-water
    mark in its ru_maxrss. Wall time and CPU time (user + sys of the tool and its children,
    microsecond resolution) come from wait4() on the time process; peak RSS from time's %M.
    """
    with tempfile.NamedTemporaryFile("r", prefix="cmdb-bench-time-") as rss_file:
        devnull = os.open(os.devnull, os.O_WRONLY)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                os.execv(GNU_TIME, [GNU_TIME, "-f", "%M %x", "-o", rss_file.name, *argv])
            finally:
                os._exit(127)
        _, status, ru = os.wait4(pid, 0)
        wall = time.monotonic() - t0
        os.close(devnull)
        fields = rss_file.read().split()
    rss_kib, rc = int(fields[-2]), int(fields[-1])
    return wall, ru.ru_utime + ru.ru_stime, rss_kib, rc


def ensure_peers(install):
    missing = [p for p, b in (("facter", "facter"), ("fusioninventory-agent", "fusioninventory-inventory"),
                              ("time", GNU_TIME))
               if shutil.which(b) is None]
    if missing and install and os.geteuid() == 0:
        print(f"installing peers: {' '.join(missing)}", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cmdb-agent"], cwd=ROOT, check=True)
    ensure_peers(not args.no_install)

    state = tempfile.mkdtemp(prefix="cmdb-bench-")
    tools = {
        "cmdb-agent": [AGENT, "inventory", "--format", "json", "--state-dir", state],
        "facter": ["facter", "--json"],
        "fusioninventory": ["fusioninventory-inventory"],
    }
    tools = {k: v for k, v in tools.items() if shutil.which(v[0]) or os.path.exists(v[0])}
    for name in ("facter", "fusioninventory"):
        if name not in tools:
            print(f"note: {name} is not installed; its column is skipped", file=sys.stderr)

    results = {k: [] for k in tools}
    for argv in tools.values():  # warm-up: page cache, Ruby/Perl module caches
        measure(argv)
    for _ in range(args.runs):
        for name, argv in tools.items():
            results[name].append(measure(argv))

    # What each tool found, for the record (packages and listening ports are what peers miss).
    out = subprocess.run(tools["cmdb-agent"], capture_output=True, text=True, check=True).stdout
    import json
    inv = json.loads(out)
    count = lambda c: sum(1 for i in inv["items"] if i["class"] == c)

    size = os.path.getsize(AGENT)
    print(f"machine: {os.cpu_count()} cpus, {os.uname().release}; runs: {args.runs} after 1 warm-up; medians")
    print(f"cmdb-agent release binary: {size / 1e6:.2f} MB; found {count('package')} packages, "
          f"{count('listening_port')} listening ports, {len(inv['items'])} CIs, {len(inv['collectors'])} collectors")
    print()
    print("| tool | wall ms | cpu ms | peak RSS MiB | wall ratio (ours/peer) | RSS ratio (ours/peer) |")
    print("|---|---:|---:|---:|---:|---:|")
    med = {}
    for name, rs in results.items():
        bad = [r[3] for r in rs if r[3] != 0]
        if bad:
            # facter exits 1 when it hits a permission error (e.g. /proc/1/environ in a
            # container) but still prints its facts; the run is measured all the same.
            print(f"note: {name} exited {sorted(set(bad))} in {len(bad)} of {len(rs)} runs", file=sys.stderr)
        med[name] = (statistics.median(r[0] for r in rs) * 1000,
                     statistics.median(r[1] for r in rs) * 1000,
                     statistics.median(r[2] for r in rs) / 1024)
    ours = med["cmdb-agent"]
    for name, (w, c, m) in med.items():
        ratio = "" if name == "cmdb-agent" else f"{ours[0] / w:.3f}"
        rss_ratio = "" if name == "cmdb-agent" else f"{ours[2] / m:.3f}"
        print(f"| {name} | {w:.1f} | {c:.1f} | {m:.1f} | {ratio} | {rss_ratio} |")
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
