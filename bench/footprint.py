#!/usr/bin/env python3
"""Resident footprint: cmdb-agent vs prometheus-node-exporter vs zabbix-agent2, side by side.

Starts a collector (quickstart-style data dir) and an enrolled cmdb-agent at DEFAULT
intervals, plus node_exporter and zabbix_agent2 bound to 127.0.0.1, all at the same time.
node_exporter is scraped every 15 s (what Prometheus would do) and zabbix_agent2 is asked
for a few items every 15 s (what a Zabbix server would do). Every 5 s the script reads each
process's RSS (/proc/PID/status VmRSS, including children for the agents that fork) and CPU
time (/proc/PID/stat utime+stime). At the end it prints, per tool: RSS at start and end,
peak RSS, and average CPU as % of one core over the run, with our/peer ratios.

    python3 bench/footprint.py [--seconds 300] [--no-build] [--agent-only] [--smaps] [--bin-dir DIR]

`--smaps` also prints where the agent's RSS is (/proc/PID/smaps_rollup: file-backed vs
anonymous) at start and end; `--agent-only` leaves the peers out (quick iterations).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
# The agent as packaged: `cargo build --profile release-agent -p cmdb-agent` (Cargo.toml).
AGENT_REL = os.path.join(ROOT, "target", "release-agent")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def free_port_below(limit):
    """A free port in [10000, limit]: zabbix_agent2 accepts ListenPort up to 32767 only."""
    for port in range(10050, limit):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime: fields 14-17 (1-based), i.e. index 11..14 after ')'
        return sum(int(x) for x in fields[11:15]) / TICK
    except OSError:
        return 0.0


def host_tcp_sockets():
    """TCP sockets in this network namespace: the agent's port/connection refresh reads all
    of them (and every process's fd table), so its CPU depends on this."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                n += max(sum(1 for _ in f) - 1, 0)
        except OSError:
            pass
    return n


def rss_split_kib(pid):
    """(file-backed, anonymous) resident KiB from /proc/PID/smaps_rollup."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        return (0, 0)
    anon = fields.get("Anonymous", 0)
    return (fields.get("Rss", 0) - anon, anon)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bin-dir", default=None,
                    help="where cmdb-agent and cmdb-collector both are (implies --no-build); default: "
                         "the agent from target/release-agent, the collector from target/release")
    ap.add_argument("--agent-only", action="store_true", help="leave the peers out")
    ap.add_argument("--smaps", action="store_true", help="print the agent's file/anon RSS split")
    args = ap.parse_args()
    rel = args.bin_dir or REL
    agent_rel = args.bin_dir or AGENT_REL
    if not args.no_build and args.bin_dir is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cmdb-collector"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--profile", "release-agent", "-q", "-p", "cmdb-agent"],
                       cwd=ROOT, check=True)
    if os.geteuid() == 0 and (shutil.which("prometheus-node-exporter") is None or shutil.which("zabbix_agent2") is None):
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "prometheus-node-exporter", "zabbix-agent2"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)

    work = tempfile.mkdtemp(prefix="cmdb-footprint-")
    procs = {}
    try:
        data = os.path.join(work, "collector")
        grpc, http = free_port(), free_port()
        subprocess.run([f"{rel}/cmdb-collector", "pki", "init", "--data-dir", data], check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(work, "collector.toml"), "w") as f:
            f.write(f'data_dir = "{data}"\ngrpc_listen = "127.0.0.1:{grpc}"\nhttp_listen = "127.0.0.1:{http}"\n')
        collector = subprocess.Popen([f"{rel}/cmdb-collector", "serve", "--config", os.path.join(work, "collector.toml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        token = subprocess.run([f"{rel}/cmdb-collector", "token", "create", "--data-dir", data],
                               check=True, capture_output=True, text=True).stdout.strip()
        state = os.path.join(work, "agent")
        subprocess.run([f"{agent_rel}/cmdb-agent", "enroll", "--collector", f"https://127.0.0.1:{grpc}", "--token", token,
                        "--ca-file", os.path.join(data, "pki", "ca.pem"), "--state-dir", state],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(state, "agent.toml"), "w") as f:
            f.write(f'collectors = ["https://127.0.0.1:{grpc}"]\nstate_dir = "{state}"\n')
        procs["cmdb-agent"] = subprocess.Popen([f"{agent_rel}/cmdb-agent", "run", "--config", os.path.join(state, "agent.toml")],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ne_port = free_port()
        if not args.agent_only and shutil.which("prometheus-node-exporter"):
            procs["node_exporter"] = subprocess.Popen(
                ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{ne_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        zb_port = free_port_below(32767)
        if not args.agent_only and shutil.which("zabbix_agent2"):
            conf = os.path.join(work, "zabbix_agent2.conf")
            with open(conf, "w") as f:
                f.write(f"ListenIP=127.0.0.1\nListenPort={zb_port}\nServer=127.0.0.1\nLogType=file\n"
                        f"LogFile={work}/zabbix_agent2.log\nPidFile={work}/zabbix_agent2.pid\n"
                        f"ControlSocket={work}/zabbix.sock\nHostname=bench\n")
            zlog = open(os.path.join(work, "zabbix_agent2.out"), "w")
            procs["zabbix_agent2"] = subprocess.Popen(["zabbix_agent2", "-c", conf, "-f"],
                                                      stdout=zlog, stderr=zlog)

        time.sleep(5)  # start-up settles (the agent's first inventory, the peers' init)
        for n, p in list(procs.items()):
            if p.poll() is not None:
                print(f"note: {n} exited with {p.returncode} during start-up; left out", file=sys.stderr)
                for f in ("zabbix_agent2.out", "zabbix_agent2.log"):
                    path = os.path.join(work, f)
                    if n == "zabbix_agent2" and os.path.exists(path):
                        print(open(path).read()[-2000:], file=sys.stderr)
                del procs[n]
        start = {n: (rss_kib(p.pid), cpu_seconds(p.pid)) for n, p in procs.items()}
        split_start = rss_split_kib(procs["cmdb-agent"].pid)
        sockets_start = host_tcp_sockets()
        peak = {n: r for n, (r, _) in start.items()}
        t0 = time.monotonic()
        next_scrape = t0
        while time.monotonic() - t0 < args.seconds:
            now = time.monotonic()
            if now >= next_scrape:
                next_scrape += 15
                if "node_exporter" in procs:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{ne_port}/metrics", timeout=5).read()
                    except OSError:
                        pass
                if "zabbix_agent2" in procs and shutil.which("zabbix_get"):
                    for key in ("system.cpu.load", "vm.memory.size[available]", "vfs.fs.size[/,used]"):
                        subprocess.run(["zabbix_get", "-s", "127.0.0.1", "-p", str(zb_port), "-k", key],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n, p in procs.items():
                peak[n] = max(peak[n], rss_kib(p.pid))
            time.sleep(5)
        elapsed = time.monotonic() - t0
        end = {n: (rss_kib(p.pid), cpu_seconds(p.pid)) for n, p in procs.items()}
        split_end = rss_split_kib(procs["cmdb-agent"].pid)
        sockets_end = host_tcp_sockets()

        print(f"resident footprint over {elapsed:.0f} s, default intervals, {os.cpu_count()} cores; "
              f"host TCP sockets {sockets_start} at start, {sockets_end} at end")
        print()
        print("| tool | RSS start MiB | RSS end MiB | RSS peak MiB | CPU % of one core | RSS ratio (ours/peer) | CPU ratio (ours/peer) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows = {}
        for n in procs:
            cpu = (end[n][1] - start[n][1]) / elapsed * 100
            rows[n] = (start[n][0] / 1024, end[n][0] / 1024, peak[n] / 1024, cpu)
        ours = rows["cmdb-agent"]
        for n, (s, e, pk, cpu) in rows.items():
            rr = "" if n == "cmdb-agent" else f"{ours[1] / e:.2f}" if e else ""
            cr = "" if n == "cmdb-agent" else (f"{ours[3] / cpu:.2f}" if cpu > 0 else "n/a")
            print(f"| {n} | {s:.1f} | {e:.1f} | {pk:.1f} | {cpu:.3f} | {rr} | {cr} |")
        if args.smaps:
            print()
            for label, (file_kib, anon_kib) in (("start", split_start), ("end", split_end)):
                print(f"cmdb-agent RSS at {label}: {file_kib / 1024:.1f} MiB file-backed, "
                      f"{anon_kib / 1024:.1f} MiB anonymous")
        collector.terminate()
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
