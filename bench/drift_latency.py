#!/usr/bin/env python3
"""End-to-end drift latency: a watched file is written on the host → the unauthorized-change
incident is visible through the collector's API. p50/p99 over N trials, at DEFAULT settings
(agent file debounce 500 ms, collector feed poll 100 ms), release binaries, loopback mTLS.

Each trial edits a different watched file (so no flapping), polls GET /api/v1/incidents
every 5 ms until an open incident lists that file, then restores the file and waits for the
incident to resolve by itself (so the next trial opens a new one).

The peer: AIDE, the scheduled file-integrity checker a user would pick instead, detects a
change only when its next `aide --check` runs. The script times `aide --init` and
`aide --check` over the same watched directory plus /etc and /usr/bin (the configuration
STACK.md measured), 5 runs each, medians: AIDE's detection latency is at least one check
(plus however long the schedule waits: typically hours).

    python3 bench/drift_latency.py [--trials 100] [--no-build]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def api(base, token, path):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait(what, timeout, f):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def pct(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def aide_times(watched, runs):
    if shutil.which("aide") is None:
        print("aide not installed (apt-get install aide): peer not measured", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="cmdb-aide-") as d:
        conf = os.path.join(d, "aide.conf")
        with open(conf, "w") as f:
            f.write(f"database_in=file:{d}/aide.db\ndatabase_out=file:{d}/aide.db.new\n"
                    f"database_new=file:{d}/aide.db.new\ngzip_dbout=no\n"
                    f"report_url=stdout\n{watched} R+sha256\n/etc R+sha256\n/usr/bin R+sha256\n")
        inits, checks = [], []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run(["aide", "--config", conf, "--init"], capture_output=True)
            inits.append(time.monotonic() - t0)
            os.replace(f"{d}/aide.db.new", f"{d}/aide.db")
            t0 = time.monotonic()
            subprocess.run(["aide", "--config", conf, "--check"], capture_output=True)
            checks.append(time.monotonic() - t0)
        return statistics.median(inits), statistics.median(checks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "cmdb-collector", "-p", "cmdb-agent"],
                       cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="cmdb-latency-")
    data = os.path.join(tmp, "collector")
    state = os.path.join(tmp, "agent")
    watched = os.path.join(tmp, "watched")
    os.makedirs(watched)
    n = args.trials
    for i in range(n):
        with open(os.path.join(watched, f"f{i:03}.conf"), "w") as f:
            f.write(f"setting = {i}\n")
    collector = os.path.join(REL, "cmdb-collector")
    agent = os.path.join(REL, "cmdb-agent")
    run([collector, "pki", "init", "--data-dir", data])
    token = run([collector, "api-token", "create", "--name", "bench", "--role", "admin",
                 "--data-dir", data]).strip()
    grpc, http = free_port(), free_port()
    conf = os.path.join(tmp, "collector.toml")
    with open(conf, "w") as f:
        f.write(f'data_dir = "{data}"\ngrpc_listen = "127.0.0.1:{grpc}"\n'
                f'http_listen = "127.0.0.1:{http}"\n')
    procs = []
    try:
        procs.append(subprocess.Popen([collector, "serve", "--config", conf],
                                      stderr=open(os.path.join(tmp, "collector.log"), "w")))
        base = f"http://127.0.0.1:{http}"
        wait("collector", 20, lambda: _ok(base + "/healthz"))
        enroll = run([collector, "token", "create", "--uses", "1", "--ttl", "10m",
                      "--data-dir", data]).strip().split()[0]
        run([agent, "enroll", "--collector", f"https://127.0.0.1:{grpc}", "--token", enroll,
             "--ca-file", os.path.join(data, "pki", "ca.pem"), "--state-dir", state])
        aconf = os.path.join(state, "agent.toml")
        with open(aconf, "w") as f:
            f.write(f'collectors = ["https://127.0.0.1:{grpc}"]\nstate_dir = "{state}"\n'
                    f'[watch]\nglobs = ["{watched}/*.conf"]\n')
        procs.append(subprocess.Popen([agent, "run", "--config", aconf],
                                      stderr=open(os.path.join(tmp, "agent.log"), "w")))
        wait("initial baseline", 60, lambda: any(
            b["initial"] and b["items"] >= n for b in api(base, token, "/api/v1/baselines")["items"]))
        lat = []
        for i in range(n):
            path = os.path.join(watched, f"f{i:03}.conf")
            original = open(path).read()
            t0 = time.monotonic()
            with open(path, "w") as f:
                f.write(f"setting = tampered {i}\n")
            inc = wait(f"incident {i}", 30, lambda: _incident_for(base, token, path))
            lat.append(time.monotonic() - t0)
            with open(path, "w") as f:
                f.write(original)
            wait(f"resolution {i}", 30, lambda: api(
                base, token, f"/api/v1/incidents/{inc}")["state"] == "resolved")
        print(f"trials: {n}")
        print(f"cmdb write→incident visible: p50 {statistics.median(lat)*1000:.0f} ms, "
              f"p99 {pct(lat, 99)*1000:.0f} ms, max {max(lat)*1000:.0f} ms, "
              f"min {min(lat)*1000:.0f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    peer = aide_times(watched, 5)
    if peer:
        init, check = peer
        print(f"aide --init {init:.2f} s, --check {check:.2f} s (medians of 5; /etc, /usr/bin and "
              f"the watched dir): detection only at the next scheduled check")
        print(f"ratio cmdb p99 / one aide --check: {pct(lat, 99) / check:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


def _ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def _incident_for(base, token, path):
    for inc in api(base, token, "/api/v1/incidents?open=true")["items"]:
        if any(a["key"] == path for a in inc["alerts"]):
            return inc["number"]
    return None


if __name__ == "__main__":
    main()
