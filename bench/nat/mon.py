#!/usr/bin/env python3
"""mon.py PID[,PID...] -- RSS and CPU of the stack processes around one benchmark step.

Samples VmRSS of every PID every 100 ms until SIGTERM/SIGINT (or 900 s), then prints one JSON object:
per-pid peak RSS (KiB) and CPU seconds (utime+stime from /proc/PID/stat, including reaped threads),
the busy CPU seconds of each CPU of the machine (every process and the kernel, from /proc/stat),
plus the wall time. The harness starts it before a client and stops it right after.
Adapted from shared/baselines/nbmon.py.
"""
import json, os, signal, sys, time

pids = [int(p) for p in sys.argv[1].split(",") if p]
TCK = os.sysconf("SC_CLK_TCK")


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TCK
    except OSError:
        return 0.0


def cpu_busy():
    """CPU seconds each CPU spent on anything but idle and iowait since boot (/proc/stat `cpuN`
    lines): the whole path's cost, clients, servers, every stack process and the kernel alike."""
    busy = []
    with open("/proc/stat") as f:
        for line in f:
            name, *v = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in v]
                busy.append((sum(v[:7]) - v[3] - v[4]) / TCK)  # user nice system (idle iowait) irq softirq; not steal
    return busy


stop = False


def on_sig(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_sig)
signal.signal(signal.SIGINT, on_sig)
c0 = {p: cpu(p) for p in pids}
b0 = cpu_busy()
r0 = {p: rss(p) for p in pids}
if os.environ.get("MON_READY"):  # tell the harness the baseline is taken and SIGTERM is handled
    open(os.environ["MON_READY"], "w").close()
peak = dict(r0)
t0 = time.monotonic()
while not stop and time.monotonic() - t0 < 900:
    for p in pids:
        peak[p] = max(peak[p], rss(p))
    time.sleep(0.1)
wall = time.monotonic() - t0
print(json.dumps({
    "wall_s": round(wall, 2),
    "cpu_busy_s": [round(b - a, 3) for a, b in zip(b0, cpu_busy())],
    "per_pid": {str(p): {"start_rss_kib": r0[p], "peak_rss_kib": peak[p], "end_rss_kib": rss(p),
                         "cpu_s": round(cpu(p) - c0[p], 3)} for p in pids},
}))
