#!/usr/bin/env python3
"""Helpers for benches/load/run.sh (standard library only).

Subcommands, each bounded in time and stopping by itself:

  free-ports N          print N free TCP ports on 127.0.0.1 (below the ephemeral range)
  wait-http URL         poll URL until it answers the expected status, or fail
  measure -- CMD...     run one load generator (wrk or h2load) and record, around it,
                        the CPU time of the proxy's and upstreams' processes and of the
                        whole machine; parse its output into one JSON line of results
  flips                 POST /models/iris/flip to switchyard's admin every interval
  rss                   open N keep-alive connections (one GET each) to a proxy and
                        read the proxy's resident memory with them open
  paced                 clients that pause between requests (a parked connection
                        resumes on each one if the pause is over 50 ms): the proxy's
                        CPU per request
  sse                   time to first byte and per-event delay of /sse streams, per target
  check-infer URL BODY  POST BODY to URL once; fail unless 200 with an inference answer
  get URL OUT           save one GET answer (switchyard's metrics)
  post URL              POST once (switchyard's weight); fail unless 200
  meta KEY=VALUE...     add facts about the run to meta.json for the report
  report                the markdown report from everything the steps above wrote
"""

import argparse
import glob
import http.client
import json
import os
import platform
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict

HZ = os.sysconf("SC_CLK_TCK")


# === /proc readers ===

def proc_cpu_seconds(pids):
    """utime + stime of `pids` (each process's threads included), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        # Fields after "(comm) ": index 0 is field 3 (state); utime is field 14.
        fields = data[data.rindex(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / HZ


def proc_rss_kib(pids):
    """VmRSS summed over `pids`, in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def is_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def cpu_times():
    """/proc/stat: {"cpu": [...], "cpu0": [...], ...} in ticks."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def busy_split(before, after):
    """(task ticks: user+nice+system, irq ticks: irq+softirq, total ticks) between two samples."""
    d = [a - b for a, b in zip(after, before)]
    # user nice system idle iowait irq softirq steal guest guest_nice
    task = d[0] + d[1] + d[2]
    irq = d[5] + d[6]
    total = sum(d[:8])
    return task, irq, total


def process_table():
    """{pid: (ppid, comm, own ticks, reaped children's ticks)} of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        table[int(name)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]),
                            int(fields[13]) + int(fields[14]))
    return table


def others_cpu(before, after, ours_root):
    """CPU ticks of processes that are neither `ours_root`'s descendants nor
    kernel threads, between two process tables, by command name.

    Processes alive at both ends count their own delta; ones that started in
    between count whole; ones that ended in between are found in their
    parent's reaped-children time (minus what they had used before)."""

    def ours(table, pid):
        seen = 0
        while pid > 2 and seen < 64:
            if pid == ours_root:
                return True
            pid = table.get(pid, (0,))[0]
            seen += 1
        return False

    def kernel(table, pid):
        return pid == 2 or table.get(pid, (0,))[0] == 2

    by_name = defaultdict(int)
    for pid, (ppid, comm, own, reaped) in after.items():
        if ours(after, pid) or kernel(after, pid):
            continue
        if pid in before and before[pid][1] == comm:
            delta = own - before[pid][2] + reaped - before[pid][3]
        else:
            delta = own + reaped
        by_name[comm] += delta
    for pid, (ppid, comm, own, reaped) in before.items():
        if pid not in after and not ours(before, pid) and not kernel(before, pid):
            # Its whole life is in the parent's reaped time now; take off
            # the part it had used before the run started.
            parent = before.get(ppid, (0, ""))[1]
            by_name[parent] -= own + reaped
    return {k: v for k, v in by_name.items() if v > 0}


def tcp_active_opens():
    """Connections this machine has opened (connect) since boot: /proc/net/snmp."""
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Tcp:")]
    return int(rows[1][rows[0].index("ActiveOpens")])


def pids_arg(text):
    return [int(p) for p in text.split()] if text else []


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# === free-ports, wait-http ===

def cmd_free_ports(a):
    ports = []
    rng = random.Random()
    start = rng.randrange(20000, 30000)
    for port in range(start, start + 2000):
        if len(ports) == a.n:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            ports.append(port)
        except OSError:
            pass
        finally:
            s.close()
    if len(ports) < a.n:
        sys.exit(f"error: found only {len(ports)} free ports of {a.n}")
    print(" ".join(map(str, ports)))


def cmd_wait_http(a):
    host, port, path = split_url(a.url)
    deadline = time.monotonic() + a.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=1)
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            conn.close()
            if r.status == a.status:
                return
            last = f"status {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    sys.exit(f"error: {a.url} did not answer {a.status} within {a.timeout}s ({last})")


def split_url(url):
    m = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    if not m:
        sys.exit(f"error: cannot parse url {url}")
    return m.group(1), int(m.group(2)), m.group(3) or "/"


def cmd_check_infer(a):
    host, port, path = split_url(a.url)
    with open(a.body, "rb") as f:
        body = f.read()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        answer = r.read()
    except (OSError, http.client.HTTPException) as e:
        sys.exit(f"error: POST {a.url}: {e}")
    if r.status != 200 or b'"model_name":"iris"' not in answer:
        sys.exit(f"error: POST {a.url} answered {r.status}: {answer[:300]!r}")
    pool = r.getheader("x-switchyard-pool")
    print(f"  POST {a.url}: {r.status}, {len(answer)} bytes" + (f", x-switchyard-pool: {pool}" if pool else ""),
          file=sys.stderr)


def cmd_get(a):
    host, port, path = split_url(a.url)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", path)
        r = conn.getresponse()
        with open(a.out, "wb") as f:
            f.write(r.read())
    except (OSError, http.client.HTTPException) as e:
        print(f"warning: GET {a.url}: {e}", file=sys.stderr)


def cmd_post(a):
    host, port, path = split_url(a.url)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("POST", path, body=b"")
        r = conn.getresponse()
        answer = r.read()
    except (OSError, http.client.HTTPException) as e:
        sys.exit(f"error: POST {a.url}: {e}")
    if r.status != 200:
        sys.exit(f"error: POST {a.url}: {r.status} {answer[:300]!r}")
    print(f"  POST {a.url}: {answer.decode(errors='replace').strip()}")


def cmd_meta(a):
    path = os.path.join(a.dir, "meta.json")
    meta = load_json(path, {})
    for kv in a.pairs:
        k, _, v = kv.partition("=")
        meta[k] = v
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)


# === measure ===

class Stop(Exception):
    pass


def on_term(_signum, _frame):
    raise Stop()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def parse_wrk(text):
    line = next((l for l in text.splitlines() if l.startswith("JSON ")), None)
    if line is None:
        raise ValueError("no JSON summary line in wrk's output (did post.lua's done() run?)")
    w = json.loads(line[5:])
    secs = w["duration_us"] / 1e6
    errors = {k: w[k] for k in ("status", "connect", "read", "write", "timeout")}
    return {
        "requests": w["requests"],
        "rps": w["requests"] / secs if secs else 0.0,
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "errors": errors,
        "errors_total": sum(errors.values()),
    }


def parse_h2load(text, log_path):
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (m and r and s):
        raise ValueError("cannot find h2load's summary lines")
    durations = []
    non2xx_log = 0
    with open(log_path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                durations.append(int(parts[2]))
                if not parts[1].startswith("2"):
                    non2xx_log += 1
    durations.sort()
    done, failed, errored, timeout = (int(r.group(i)) for i in (3, 5, 6, 7))
    s3, s4, s5 = (int(s.group(i)) for i in (2, 3, 4))
    # h2load's "failed" counts non-2xx/3xx answers and transport errors
    # ("errored", "timeout") alike; 3xx counts as success there, not here.
    errors = {"failed": failed, "errored": errored, "timeout": timeout,
              "3xx": s3, "4xx": s4, "5xx": s5}
    return {
        "requests": done,
        "rps": float(m.group(3)),
        "p50_ms": percentile(durations, 50) / 1000 if durations else None,
        "p90_ms": percentile(durations, 90) / 1000 if durations else None,
        "p99_ms": percentile(durations, 99) / 1000 if durations else None,
        "max_ms": durations[-1] / 1000 if durations else None,
        "logged": len(durations),
        "errors": errors,
        "errors_total": failed + s3,
    }


def others_share(ours_root, window):
    """Fraction of one CPU that processes outside the run used over `window` seconds."""
    t0 = process_table()
    time.sleep(window)
    return sum(others_cpu(t0, process_table(), ours_root).values()) / HZ / window


def wait_for_quiet(a):
    """Waits until other processes use less than the threshold of a CPU over
    one second, for at most --quiet-max-wait and what is left of the shared
    budget; returns (seconds waited, last share seen)."""
    budget = a.quiet_max_wait
    if a.quiet_budget_file:
        try:
            with open(a.quiet_budget_file) as f:
                budget = min(budget, float(f.read().strip() or 0))
        except (OSError, ValueError):
            budget = 0
    start = time.monotonic()
    share = others_share(a.ours_root, 1.0)
    while share > a.quiet_threshold and time.monotonic() - start < budget:
        share = others_share(a.ours_root, 1.0)
    waited = time.monotonic() - start
    if a.quiet_budget_file:
        # The first one-second sample is always taken and not charged.
        spent = max(0.0, waited - 1.0)
        try:
            with open(a.quiet_budget_file) as f:
                left = float(f.read().strip() or 0)
            with open(a.quiet_budget_file, "w") as f:
                f.write(f"{max(0.0, left - spent):.1f}\n")
        except (OSError, ValueError):
            pass
    return waited, share


def cmd_measure(a):
    signal.signal(signal.SIGTERM, on_term)
    try:
        waited, share = wait_for_quiet(a) if a.quiet_threshold > 0 else (0.0, None)
    except Stop:
        sys.exit(143)
    proxy_pids = pids_arg(a.proxy_pids)
    upstream_pids = pids_arg(a.upstream_pids)
    record = {"target": a.target, "mode": a.mode, "rep": a.rep, "ok": False,
              "quiet_wait_s": round(waited, 1),
              "other_share_before": round(share, 3) if share is not None else None,
              "proxy_alive_before": all(is_alive(p) for p in proxy_pids)}
    table0 = process_table()
    stat0 = cpu_times()
    proxy0, up0 = proc_cpu_seconds(proxy_pids), proc_cpu_seconds(upstream_pids)
    opens0 = tcp_active_opens()
    t0 = time.monotonic()
    child = None
    rusage = None
    try:
        with open(a.raw, "w") as out:
            child = subprocess.Popen(a.command, stdout=out, stderr=subprocess.STDOUT)
            deadline = t0 + a.timeout
            while True:
                pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    child.kill()
                    _, status, rusage = os.wait4(child.pid, 0)
                    child.returncode = os.waitstatus_to_exitcode(status)
                    record["error"] = f"killed after the {a.timeout}s time limit"
                    break
                time.sleep(0.02)
    except Stop:
        if child and child.returncode is None:
            child.kill()
            child.wait()
        sys.exit(143)
    wall = time.monotonic() - t0
    opens = tcp_active_opens() - opens0
    stat1 = cpu_times()
    table1 = process_table()
    proxy_cpu = proc_cpu_seconds(proxy_pids) - proxy0
    up_cpu = proc_cpu_seconds(upstream_pids) - up0
    gen_cpu = (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0
    _, irq, _ = busy_split(stat0["cpu"], stat1["cpu"])
    others = others_cpu(table0, table1, a.ours_root)
    per_cpu = {}
    for name in sorted(k for k in stat1 if k != "cpu"):
        t, i, tot = busy_split(stat0[name], stat1[name])
        per_cpu[name] = round(100 * (t + i) / tot, 1) if tot else None
    record.update({
        "wall_s": round(wall, 3),
        "exit": child.returncode,
        "proxy_cpu_s": round(proxy_cpu, 3),
        "upstream_cpu_s": round(up_cpu, 3),
        "loadgen_cpu_s": round(gen_cpu, 3),
        # CPU time of processes that are not part of this run: another
        # build or bench running at the same time shows here.
        "other_cpu_s": round(sum(others.values()) / HZ, 2),
        "other_top": ", ".join(f"{name} {ticks / HZ:.1f}" for name, ticks in
                               sorted(others.items(), key=lambda kv: -kv[1])[:3] if ticks / HZ >= 0.1),
        "irq_cpu_s": round(irq / HZ, 2),
        "cpu_busy_pct": per_cpu,
        "proxy_alive_after": all(is_alive(p) for p in proxy_pids),
        # Every TCP connect on the machine during the run: the load
        # generator's own, plus any the proxy opens to the upstreams.
        "tcp_connects": opens,
    })
    with open(a.raw) as f:
        text = f.read()
    try:
        parsed = parse_h2load(text, a.h2_log) if a.mode.startswith("h2") else parse_wrk(text)
        record.update(parsed)
        record["ok"] = child.returncode == 0 and "error" not in record
        if child.returncode != 0:
            record["error"] = f"load generator exited with {child.returncode}"
    except (ValueError, OSError, KeyError) as e:
        record["error"] = f"cannot parse the load generator's output ({e}); see {a.raw}"
    if a.h2_log and not a.keep_log:
        try:
            os.remove(a.h2_log)
        except OSError:
            pass
    with open(a.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    if record.get("requests"):
        per100k = proxy_cpu / record["requests"] * 1e5
        print(f"  {a.mode:<8} {a.target:<11} rep {a.rep}: {record['rps']:>9.0f} req/s  "
              f"p50 {record['p50_ms']:.3f} ms  p99 {record['p99_ms']:.3f} ms  "
              f"errors {record['errors_total']}  proxy cpu {per100k:.2f} s/100k  "
              f"other cpu {record['other_cpu_s']:.1f} s", file=sys.stderr)
    else:
        print(f"  {a.mode:<8} {a.target:<11} rep {a.rep}: FAILED: {record.get('error')}", file=sys.stderr)


# === flips ===

def cmd_flips(a):
    # A raw keep-alive socket and prebuilt requests: this loop shares the
    # load generator's CPU, and http.client's per-call work there (a few
    # hundred microseconds of Python each) showed up in the proxy's p99 as
    # if the switch had cost it.
    host, port = a.admin.rsplit(":", 1)
    request = (b"GET /models/iris HTTP/1.1\r\nHost: admin\r\n\r\n" if a.noop else
               b"POST /models/iris/flip HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
    statuses = defaultdict(int)
    latencies = []
    errors = []
    switched = 0
    interval = a.interval_ms / 1000
    start = time.monotonic()
    deadline = start + a.count * interval + 5
    conn = None
    for i in range(a.count):
        if time.monotonic() > deadline:
            break
        t = time.monotonic()
        try:
            if conn is None:
                conn = socket.create_connection((host, int(port)), timeout=2)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(request)
            status, body = read_response_body(conn)
            statuses[str(status)] += 1
            if a.noop and status == 200:
                pass
            elif status == 200 and json.loads(body).get("switched"):
                switched += 1
            elif len(errors) < 5:
                errors.append(f"{status} {body[:200].decode(errors='replace')}")
        except (OSError, ValueError) as e:
            statuses["error"] += 1
            if len(errors) < 5:
                errors.append(str(e))
            if conn is not None:
                conn.close()
            conn = None
        latencies.append((time.monotonic() - t) * 1000)
        next_at = start + (i + 1) * interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    if conn is not None:
        conn.close()
    latencies.sort()
    with open(a.out, "w") as f:
        json.dump({"sent": sum(statuses.values()), "switched": switched, "statuses": statuses,
                   "first_errors": errors,
                   "flip_p50_ms": percentile(latencies, 50), "flip_max_ms": latencies[-1] if latencies else None},
                  f)


# === rss ===

REQUEST = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: switchyard-load-rss\r\n\r\n"


def read_response(s):
    """Reads one HTTP/1.1 response; returns its status."""
    return read_response_body(s)[0]


def read_response_body(s):
    """Reads one HTTP/1.1 response; returns its status and body (a chunked
    body as it came, framing included)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("connection closed before the response headers")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(body) < need:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("connection closed inside the body")
            body += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("connection closed inside the chunked body")
            body += chunk
    return status, body


def count_open(socks):
    """Connections the proxy has not closed (a peek would see EOF)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK) != b"":
                n += 1
        except BlockingIOError:
            n += 1
        except OSError:
            pass
        s.setblocking(True)
    return n


def cmd_rss(a):
    limit = raise_nofile()
    pids = pids_arg(a.pids)
    counts = [int(c) for c in a.counts.split(",")]
    result = {"target": a.target, "nofile": limit, "idle_kib": proc_rss_kib(pids), "levels": [],
              "settle_s": a.settle}
    socks = []
    not_200 = 0
    deadline = time.monotonic() + a.timeout
    try:
        for count in counts:
            while len(socks) < count and time.monotonic() < deadline:
                batch = []
                for _ in range(min(a.batch, count - len(socks))):
                    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
                    s.sendall(REQUEST)
                    batch.append(s)
                for s in batch:
                    if read_response(s) != 200:
                        not_200 += 1
                socks.extend(batch)
            time.sleep(a.settle)
            result["levels"].append({"connections": count, "opened": len(socks),
                                     "still_open": count_open(socks), "rss_kib": proc_rss_kib(pids)})
    except OSError as e:
        result["error"] = f"after {len(socks)} connections: {e}"
    finally:
        for s in socks:
            s.close()
    result["not_200"] = not_200
    time.sleep(a.settle * 2)
    result["after_close_kib"] = proc_rss_kib(pids)
    with open(a.out, "w") as f:
        json.dump(result, f)
    levels = ", ".join(f"{l['connections']}: {l['rss_kib'] / 1024:.1f} MiB ({l['still_open']} open)"
                       for l in result["levels"])
    print(f"  rss {a.target:<11} idle {result['idle_kib'] / 1024:.1f} MiB, {levels}"
          + (f"  ERROR {result['error']}" if "error" in result else ""), file=sys.stderr)


# === paced ===

def cmd_paced(a):
    import asyncio
    with open(a.body, "rb") as f:
        body = f.read()
    request = (f"POST {a.path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    pids = pids_arg(a.pids)
    done = 0

    async def client(stop):
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        try:
            while time.monotonic() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                done += 1
                await asyncio.sleep(a.interval_ms / 1000)
        finally:
            writer.close()

    async def run(seconds):
        stop = time.monotonic() + seconds
        await asyncio.gather(*(client(stop) for _ in range(a.conns)))

    asyncio.run(run(a.warmup))
    done = 0
    before = proc_cpu_seconds(pids)
    asyncio.run(run(a.duration))
    cpu = proc_cpu_seconds(pids) - before
    per_request = cpu / done * 1e6 if done else None
    print(f"  paced {a.conns} connections, {a.interval_ms:g} ms apart: {done} requests "
          f"({done / a.duration:.0f}/s), proxy CPU {fmt(per_request, 1)} us per request")


# === sse ===

EVENT = re.compile(rb"data: [^\n]*\n\n")


def one_stream(port, events, interval_ms, timeout):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (f"GET /sse?events={events}&interval_ms={interval_ms} HTTP/1.1\r\n"
           f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n").encode()
    buf = b""
    body_at = None
    status = None
    ttfb = None
    arrivals = []
    deadline = time.perf_counter() + timeout
    t0 = time.perf_counter()
    s.sendall(req)
    try:
        while len(arrivals) < events and time.perf_counter() < deadline:
            data = s.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            if ttfb is None:
                ttfb = now - t0
            buf += data
            if body_at is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                body_at = end + 4
                status = int(buf.split(b" ", 2)[1])
            # Chunk-size lines are "xx\r\n": they never hold "\n\n", so events
            # can be counted in the raw bytes, chunked or not.
            n = len(EVENT.findall(buf, body_at))
            arrivals.extend([now] * (n - len(arrivals)))
    finally:
        s.close()
    delays = [(t - t0) * 1000 - i * interval_ms for i, t in enumerate(arrivals)]
    return {
        "status": status,
        "events": len(arrivals),
        "ttfb_ms": ttfb * 1000 if ttfb is not None else None,
        "mean_delay_ms": statistics.fmean(delays) if delays else None,
        "max_delay_ms": max(delays) if delays else None,
    }


def cmd_sse(a):
    targets = []
    for t in a.target:
        name, port = t.split("=")
        targets.append((name, int(port)))
    results = {name: [] for name, _ in targets}
    deadline = time.monotonic() + a.timeout
    for _ in range(a.streams):
        for name, port in targets:
            if time.monotonic() > deadline:
                break
            try:
                results[name].append(one_stream(port, a.events, a.interval_ms, 10))
            except OSError as e:
                results[name].append({"error": str(e)})
            time.sleep(0.05)
    with open(a.out, "w") as f:
        json.dump({"events": a.events, "interval_ms": a.interval_ms, "streams": results}, f)


# === report ===

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2, unit=""):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    return a / b if a is not None and b else None


def first_line(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        out = (p.stdout + p.stderr).strip().splitlines()
        return out[0].strip() if out else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def metric_lines(path, names):
    out = []
    try:
        with open(path) as f:
            for line in f:
                if any(line.startswith(n) for n in names):
                    out.append(line.rstrip())
    except OSError:
        pass
    return out


def log_findings(path, pattern, limit=5):
    """(count, first lines) of lines matching `pattern` in a log file."""
    try:
        with open(path, errors="replace") as f:
            hits = [l.rstrip() for l in f if re.search(pattern, l)]
    except OSError:
        return 0, []
    return len(hits), hits[:limit]


def paired(by, mode, num, den, value, combine):
    """`combine(value(num's run), value(den's run))` for each repeat where
    both ran well, in repeat order."""
    def per_rep(target):
        return {r["rep"]: r for r in by.get((mode, target), []) if r.get("requests")}
    a, b = per_rep(num), per_rep(den)
    out = []
    for rep in sorted(a.keys() & b.keys()):
        x, y = value(a[rep]), value(b[rep])
        if x is not None and y:
            out.append(combine(x, y))
    return out


def paired_section(w, by):
    """The comparison within each repeat: the targets of one repeat ran
    minutes apart, so a ratio taken within it cancels what the VM did to
    that repeat as a whole, which a ratio of medians over repeats keeps."""
    def rps(r):
        return r.get("rps")

    def cpu(r):
        return r["proxy_cpu_s"] / r["requests"] * 1e5 if r.get("proxy_cpu_s") else None

    def div(x, y):
        return x / y

    def sub(x, y):
        return x - y

    w("## Within each repeat")
    w("")
    w("Each repeat runs every target once, minutes apart: a comparison within a repeat cancels what "
      "the VM did to that repeat as a whole, which the medians above keep. Per repeat: switchyard's "
      "req/s and CPU per request over the other proxy's, and switchyard's added p99 (over that "
      "repeat's direct run) minus the other's, in ms. Then the median over the repeats, the lowest "
      "and highest, and in how many repeats switchyard came out ahead (more req/s, less CPU per "
      "request, less added p99).")
    w("")
    w("| switchyard against | | HTTP/1.1 median | range | ahead | HTTP/2 median | range | ahead |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for den in ("nginx", "haproxy"):
        for what, value, combine, ahead, digits in (
                ("req/s, ratio", rps, div, lambda v: v >= 1.0, 2),
                ("CPU per request, ratio", cpu, div, lambda v: v <= 1.0, 2),
                ("added p99, ms more", lambda r: r.get("p99_ms"), sub, lambda v: v <= 0.0, 3)):
            cells = []
            for mode in ("h1", "h2"):
                values = paired(by, mode, "switchyard", den, value, combine)
                if values:
                    cells += [fmt(med(values), digits), f"{fmt(min(values), digits)} to {fmt(max(values), digits)}",
                              f"{sum(1 for v in values if ahead(v))} of {len(values)}"]
                else:
                    cells += ["n/a", "n/a", "n/a"]
            w(f"| {den} | {what} | " + " | ".join(cells) + " |")
    w("")


def cmd_within(a):
    """The report's "Within each repeat" table over the repeats of several
    runs at once: each DIR is a copy of a run's target/load (its
    results.jsonl)."""
    by = defaultdict(list)
    for i, out_dir in enumerate(a.dirs):
        with open(os.path.join(out_dir, "results.jsonl")) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    # A repeat is a repeat of one run.
                    r["rep"] = (i, r["rep"])
                    by[(r["mode"], r["target"])].append(r)
    lines = []
    paired_section(lines.append, by)
    print("\n".join(lines[4:]))


def cmd_report(a):
    out_dir = a.dir
    runs = []
    try:
        with open(os.path.join(out_dir, "results.jsonl")) as f:
            runs = [json.loads(l) for l in f if l.strip()]
    except OSError:
        pass
    meta = load_json(os.path.join(out_dir, "meta.json"), {})
    proxies = ["nginx", "haproxy", "switchyard"]
    targets = ["direct"] + proxies
    by = defaultdict(list)
    for r in runs:
        by[(r["mode"], r["target"])].append(r)
    # switchyard with a 50 % split: in the load tables only (its memory and
    # streams are switchyard's).
    split = "switchyard-split"
    load_targets = targets + ([split] if any(t == split for _, t in by) else [])

    def agg(mode, target):
        rs = by.get((mode, target), [])
        ok = [r for r in rs if r.get("requests")]
        per100k = [r["proxy_cpu_s"] / r["requests"] * 1e5 for r in ok if target != "direct"]
        return {
            "runs": len(rs), "ok": len(ok),
            "rps": med([r["rps"] for r in ok]),
            "p50": med([r["p50_ms"] for r in ok]),
            "p99": med([r["p99_ms"] for r in ok]),
            "errors": sum(r.get("errors_total", 0) for r in ok),
            "error_detail": merge_errors(ok),
            "failed_runs": [r.get("error", "no result") for r in rs if not r.get("ok")],
            "cpu100k": med(per100k),
            "disturbed": sum(1 for r in rs if disturbed(r)),
        }

    L = []
    w = L.append
    w("# Load comparison: switchyard vs nginx vs HAProxy")
    w("")
    w(f"Run {meta.get('date', '?')} with `{meta.get('command', 'benches/load/run.sh')}`: "
      f"{meta.get('repeat', '?')} repeat(s) of {meta.get('duration', '?')} s per run, interleaved "
      f"(direct, nginx, haproxy, switchyard, switchyard with a 50 % split, then again); every figure is "
      f"the median over the repeats.")
    w("")
    w("## Machine and setup")
    w("")
    w("| | |")
    w("| --- | --- |")
    rows = [
        ("date (UTC)", meta.get("date")),
        ("nproc", first_line(["nproc"])),
        ("CPU", cpu_model()),
        ("kernel", platform.release()),
        ("OS", meta.get("os")),
        ("nginx", first_line(["nginx", "-v"])),
        ("HAProxy", first_line(["haproxy", "-v"])),
        ("wrk", first_line(["wrk", "-v"])),
        ("h2load", first_line(["h2load", "--version"])),
        ("rustc", first_line(["rustc", "--version"])),
        ("switchyard", meta.get("switchyard")),
        ("pinning", meta.get("pinning")),
        ("open files (ulimit -n)", meta.get("nofile")),
        ("load average before / after", f"{meta.get('loadavg_before', '?')} / {meta.get('loadavg_after', '?')}"),
    ]
    for k, v in rows:
        w(f"| {k} | {v} |")
    w("")
    w("Settings: " + meta.get("settings", ""))
    w("")

    for mode, title, tool in (("h1", "HTTP/1.1 keep-alive", meta.get("h1_tool", "wrk")),
                              ("h2", "HTTP/2 cleartext (prior knowledge)", meta.get("h2_tool", "h2load"))):
        direct = agg(mode, "direct")
        w(f"## {title}")
        w("")
        w(f"`{tool}`")
        w("")
        w("| target | req/s | p50 ms | p99 ms | errors | req/s vs direct | added p99 ms | proxy CPU s per 100k req | disturbed runs |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in load_targets:
            g = agg(mode, t)
            added = g["p99"] - direct["p99"] if g["p99"] is not None and direct["p99"] is not None else None
            errs = str(g["errors"]) + (f" ({g['error_detail']})" if g["errors"] else "")
            if g["failed_runs"]:
                errs += f"; {len(g['failed_runs'])} failed run(s)"
            w(f"| {t} | {fmt(g['rps'], 0)} | {fmt(g['p50'], 3)} | {fmt(g['p99'], 3)} | {errs} | "
              f"{fmt(ratio(g['rps'], direct['rps']), 2) if t != 'direct' else '1.00'} | "
              f"{fmt(added, 3) if t != 'direct' else '—'} | {fmt(g['cpu100k'], 2) if t != 'direct' else '—'} | "
              f"{g['disturbed']}/{g['runs']} |")
        w("")

    w(f"Disturbed runs: other processes on the machine (not part of the comparison) used more than "
      f"{DISTURBED:.0%} of one CPU during the run; see the last table.")
    w("")
    w("## Ratios (median req/s)")
    w("")
    w("| ratio | HTTP/1.1 | HTTP/2 |")
    w("| --- | ---: | ---: |")
    pairs = [("switchyard", "nginx"), ("switchyard", "haproxy"),
             ("nginx", "direct"), ("haproxy", "direct"), ("switchyard", "direct")]
    if split in load_targets:
        pairs.append((split, "switchyard"))
    for num, den in pairs:
        w(f"| {num} / {den} | " + " | ".join(
            fmt(ratio(agg(m, num)["rps"], agg(m, den)["rps"]), 2) for m in ("h1", "h2")) + " |")
    w("")
    paired_section(w, by)

    if split in load_targets:
        w("## switchyard: a 50 % split against none")
        w("")
        w("A second switchyard, configured as the first, with `POST /models/iris/weight?green=50` "
          "set before the runs: every request is picked for blue or green (one upstream each) on the "
          "request path. Same interleaving, same pinning.")
        w("")
        w("| | HTTP/1.1 req/s | HTTP/1.1 p99 ms | HTTP/2 req/s | HTTP/2 p99 ms |")
        w("| --- | ---: | ---: | ---: | ---: |")
        for t in ("switchyard", split):
            h1, h2 = agg("h1", t), agg("h2", t)
            w(f"| {'no split' if t == 'switchyard' else '50 % split'} | {fmt(h1['rps'], 0)} | "
              f"{fmt(h1['p99'], 3)} | {fmt(h2['rps'], 0)} | {fmt(h2['p99'], 3)} |")
        served = metric_lines(os.path.join(out_dir, "switchyard-split-metrics.txt"),
                              ("switchyard_requests_total",))
        served = [l for l in served if not l.endswith(" 0")]
        if served:
            w("")
            w("Requests the split switchyard counted per pool at the end of the run:")
            w("")
            w("```")
            L.extend(served)
            w("```")
        w("")

    # Flip under load.
    w("## switchyard: flip under load (HTTP/1.1, same wrk run)")
    w("")
    plain, flip = agg("h1", "switchyard"), agg("h1-flip", "switchyard")
    calls = agg("h1-calls", "switchyard")
    def loop_files(pattern):
        return [load_json(p, {}) for p in sorted(glob.glob(os.path.join(out_dir, pattern)))]
    flips, noops = loop_files("flips-*.json"), loop_files("calls-*.json")
    sent = sum(f.get("sent", 0) for f in flips)
    switched = sum(f.get("switched", 0) for f in flips)
    statuses = defaultdict(int)
    for f in flips:
        for k, v in f.get("statuses", {}).items():
            statuses[k] += v
    interval = meta.get('flip_interval_ms', 100)
    w(f"A loop POSTs `/models/iris/flip` to the admin listener every {interval} ms "
      f"during the run; the two pools are two upstream processes (blue, green). The control run "
      f"makes the same admin calls at the same pace from the same client, but `GET /models/iris`, "
      f"which switches nothing: what it adds to p99 is the harness's and the admin call's, "
      f"not the switch's.")
    w("")
    w("| run | req/s | p50 ms | p99 ms | errors (non-2xx + socket) | flips switched / sent | disturbed runs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    w(f"| without flips | {fmt(plain['rps'], 0)} | {fmt(plain['p50'], 3)} | {fmt(plain['p99'], 3)} | {plain['errors']} | — | "
      f"{plain['disturbed']}/{plain['runs']} |")
    if calls["runs"]:
        noop_sent = sum(f.get("sent", 0) for f in noops)
        w(f"| status call every {interval} ms | {fmt(calls['rps'], 0)} | {fmt(calls['p50'], 3)} | "
          f"{fmt(calls['p99'], 3)} | {calls['errors']} | 0 / {noop_sent} | {calls['disturbed']}/{calls['runs']} |")
    errs = str(flip["errors"]) + (f" ({flip['error_detail']})" if flip["errors"] else "")
    w(f"| flip every {interval} ms | {fmt(flip['rps'], 0)} | {fmt(flip['p50'], 3)} | "
      f"{fmt(flip['p99'], 3)} | {errs} | {switched} / {sent} | {flip['disturbed']}/{flip['runs']} |")
    w("")
    def connects(mode):
        return med([r.get("tcp_connects") for r in by.get((mode, "switchyard"), [])])
    w(f"TCP connects per run (wrk's {meta.get('conns', 64)} included): {fmt(connects('h1'), 0)} without flips, "
      f"{fmt(connects('h1-flip'), 0)} with flips.")
    w("")
    control = ""
    if calls["runs"]:
        control = (f"p99 with status calls / without: {fmt(ratio(calls['p99'], plain['p99']), 2)}; "
                   f"with flips / with status calls: {fmt(ratio(flip['p99'], calls['p99']), 2)}. ")
    w(f"p99 with flips / without: {fmt(ratio(flip['p99'], plain['p99']), 2)}. {control}"
      f"Flip answers: {dict(statuses) or 'none'}; median flip call "
      f"{fmt(med([f.get('flip_p50_ms') for f in flips]), 1)} ms, slowest "
      f"{fmt(max([f.get('flip_max_ms') or 0 for f in flips] or [0]), 1)} ms.")
    bad = [e for f in flips for e in f.get("first_errors", [])]
    if bad:
        w("")
        w("First refused or failed flips: " + "; ".join(f"`{e}`" for e in bad[:3]))
    w("")

    # Memory.
    w("## Resident memory (VmRSS summed over the proxy's processes)")
    w("")
    settle = {load_json(os.path.join(out_dir, f"rss-{p}.json"), {}).get("settle_s") for p in targets} - {None}
    read_at = (f", {fmt(max(settle), 1)} s after the last of them opened" if settle else "")
    w("Each connection sent one `GET /v2/health/ready` (proxied to the upstream) and stays open, idle, "
      f"while the memory is read{read_at}; after closing: twice that after they closed. nginx: master + "
      "worker. direct: the upstream alone (the same accept loop as switchyard's, `switchyard::server::serve`, "
      "with no proxying), for comparison.")
    w("")
    w("| proxy | idle | 1,000 conns | 10,000 conns | per conn at 10k | after closing | idle after the load runs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    after_load = load_json(os.path.join(out_dir, "rss-after-load.json"), {})
    for p in targets:
        r = load_json(os.path.join(out_dir, f"rss-{p}.json"), {})
        levels = {l["connections"]: l for l in r.get("levels", [])}

        def lv(n):
            l = levels.get(n)
            if not l:
                return "n/a"
            s = f"{l['rss_kib'] / 1024:.1f} MiB"
            if l["still_open"] != n:
                s += f" ({l['still_open']} of {n} open)"
            return s
        top = max(levels) if levels else None
        per = ((levels[top]["rss_kib"] - r["idle_kib"]) / top) if top else None
        w(f"| {p} | {fmt(r.get('idle_kib', 0) / 1024, 1, ' MiB') if r else 'n/a'} | {lv(1000)} | {lv(10000)} | "
          f"{fmt(per, 1, ' KiB')} | {fmt(r.get('after_close_kib', 0) / 1024, 1, ' MiB') if r else 'n/a'} | "
          f"{fmt(after_load.get(p, 0) / 1024, 1, ' MiB') if after_load.get(p) else 'n/a'} |")
        if r.get("error") or r.get("not_200"):
            w(f"|   ↳ {p}: {r.get('error', '')} {r.get('not_200', 0)} non-200 answers | | | | | | |")
    w("")

    # Streaming.
    sse = load_json(os.path.join(out_dir, "sse.json"), {})
    if sse:
        w(f"## Streaming: `/sse?events={sse['events']}&interval_ms={sse['interval_ms']}` (HTTP/1.1, raw sockets)")
        w("")
        w("Event i is due at i × interval after the request was sent; its delay is its arrival minus that. "
          "Per stream: the mean over its events; the table gives the median over streams.")
        w("")
        w("| target | streams | TTFB ms | mean event delay ms | added vs direct ms | max event delay ms | events received |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        streams = sse["streams"]
        d_mean = med([s.get("mean_delay_ms") for s in streams.get("direct", [])])
        for t in targets:
            ss = streams.get(t, [])
            good = [s for s in ss if s.get("status") == 200]
            mean = med([s.get("mean_delay_ms") for s in good])
            added = mean - d_mean if mean is not None and d_mean is not None else None
            got = sum(s.get("events", 0) for s in good)
            w(f"| {t} | {len(good)}/{len(ss)} | {fmt(med([s.get('ttfb_ms') for s in good]), 3)} | {fmt(mean, 3)} | "
              f"{fmt(added, 3) if t != 'direct' else '—'} | {fmt(max([s.get('max_delay_ms') or 0 for s in good] or [0]), 3)} | "
              f"{got}/{len(ss) * sse['events']} |")
        w("")

    # What switchyard and the others said.
    w("## Errors and logs")
    w("")
    lines = metric_lines(os.path.join(out_dir, "switchyard-metrics.txt"),
                         ("switchyard_requests_total", "switchyard_upstream_errors_total",
                          "switchyard_switches_total", "switchyard_ejections_total",
                          "switchyard_failovers_total", "switchyard_unrouted_requests_total"))
    if lines:
        w("switchyard's metrics at the end of the run:")
        w("")
        w("```")
        L.extend(lines)
        w("```")
        w("")
    for name, path, pattern in (("switchyard", "switchyard/switchyard.log", r"WARN|ERROR"),
                                ("nginx", "nginx/error.log", r"\[(warn|error|crit|alert|emerg)\]"),
                                ("HAProxy", "haproxy/haproxy.log", r"WARNING|ALERT")):
        n, first = log_findings(os.path.join(out_dir, path), pattern)
        w(f"- {name} log (`target/load/{path}`): {n} warning/error line(s)" + (":" if first else "."))
        for l in first:
            w(f"  - `{l[:240]}`")
    w("")

    w("## Every run")
    w("")
    w("In run order. TCP connects: all connects on the machine during the run (the load generator's "
      f"{meta.get('conns', 64)}, plus any a proxy opens to the upstreams). CPU seconds: the proxy's utime+stime (/proc/PID/stat; nginx: its worker), the two "
      "upstreams', the load generator's; `other`: processes that are not part of the comparison (another "
      "build or bench on the machine), with the largest by name; busy % per CPU includes irq/softirq. "
      "Before each run the script waits (at most 20 s, 150 s in all) until other processes use less than "
      f"{DISTURBED:.0%} of a CPU; `waited` is that time.")
    w("")
    cpus = sorted({c for r in runs for c in r.get("cpu_busy_pct", {})})
    w("| mode | rep | target | req/s | p50 ms | p99 ms | errors | TCP connects | proxy CPU s | upstream CPU s | loadgen CPU s | waited s | other CPU s | "
      + " | ".join(f"{c} busy %" for c in cpus) + " |")
    w("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | " + " | ".join("---:" for _ in cpus) + " |")
    for r in runs:
        errs = str(r.get("errors_total", "n/a"))
        if not r.get("ok"):
            errs += f" ({r.get('error', 'failed')})"
        w(f"| {r['mode']} | {r['rep']} | {r['target']} | {fmt(r.get('rps'), 0)} | {fmt(r.get('p50_ms'), 3)} | "
          f"{fmt(r.get('p99_ms'), 3)} | {errs} | {r.get('tcp_connects', 'n/a')} | {fmt(r.get('proxy_cpu_s'), 2)} | {fmt(r.get('upstream_cpu_s'), 2)} | "
          f"{fmt(r.get('loadgen_cpu_s'), 2)} | {fmt(r.get('quiet_wait_s'), 0)} | "
          f"{fmt(r.get('other_cpu_s'), 1)}{' ⚠' if disturbed(r) else ''}{' (' + r['other_top'] + ')' if r.get('other_top') and disturbed(r) else ''} | "
          + " | ".join(fmt(r.get("cpu_busy_pct", {}).get(c), 0) for c in cpus) + " |")
    w("")
    text = "\n".join(L) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


DISTURBED = 0.10


def disturbed(r):
    """More than DISTURBED of one CPU went to processes outside the comparison."""
    wall = r.get("wall_s") or 0
    return bool(wall) and (r.get("other_cpu_s") or 0) / wall > DISTURBED


def merge_errors(records):
    total = defaultdict(int)
    for r in records:
        for k, v in (r.get("errors") or {}).items():
            total[k] += v
    return ", ".join(f"{k} {v}" for k, v in total.items() if v)


# === command line ===

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("free-ports")
    s.add_argument("n", type=int)
    s.set_defaults(func=cmd_free_ports)

    s = sub.add_parser("wait-http")
    s.add_argument("url")
    s.add_argument("--status", type=int, default=200)
    s.add_argument("--timeout", type=float, default=15)
    s.set_defaults(func=cmd_wait_http)

    s = sub.add_parser("measure")
    s.add_argument("--out", required=True, help="results file (JSON lines, appended)")
    s.add_argument("--raw", required=True, help="where the load generator's output goes")
    s.add_argument("--target", required=True)
    s.add_argument("--mode", required=True, help="h1, h1-flip, h1-calls or h2")
    s.add_argument("--rep", type=int, required=True)
    s.add_argument("--proxy-pids", default="")
    s.add_argument("--upstream-pids", default="")
    s.add_argument("--h2-log", default="", help="h2load --log-file path (h2 modes)")
    s.add_argument("--keep-log", action="store_true")
    s.add_argument("--quiet-threshold", type=float, default=0.0,
                   help="wait until other processes use less than this share of one CPU (0: do not wait)")
    s.add_argument("--quiet-max-wait", type=float, default=20)
    s.add_argument("--quiet-budget-file", default="",
                   help="file holding the seconds all runs together may still wait")
    s.add_argument("--ours-root", type=int, default=os.getppid(),
                   help="PID whose descendants are part of the run (default: the parent)")
    s.add_argument("--timeout", type=float, required=True)
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- the load generator and its arguments")
    s.set_defaults(func=cmd_measure)

    s = sub.add_parser("flips")
    s.add_argument("--admin", required=True, help="host:port")
    s.add_argument("--interval-ms", type=int, default=100)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--noop", action="store_true",
                   help="GET /models/iris instead: the same admin calls at the same pace, no switch (the control)")
    s.set_defaults(func=cmd_flips)

    s = sub.add_parser("rss")
    s.add_argument("--target", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pids", required=True)
    s.add_argument("--counts", default="1000,10000")
    s.add_argument("--batch", type=int, default=50)
    s.add_argument("--settle", type=float, default=0.5)
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_rss)

    s = sub.add_parser("paced")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pids", required=True, help="the proxy's PIDs, for its CPU time")
    s.add_argument("--conns", type=int, default=200)
    s.add_argument("--interval-ms", type=float, required=True, help="pause after each answer")
    s.add_argument("--duration", type=float, default=10)
    s.add_argument("--warmup", type=float, default=2)
    s.add_argument("--path", default="/v2/models/iris/infer")
    s.add_argument("--body", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "body.json"))
    s.set_defaults(func=cmd_paced)

    s = sub.add_parser("rss-now")
    s.add_argument("--pids", action="append", default=[], help="name=PID PID ...")
    s.add_argument("--out", required=True)
    s.set_defaults(func=lambda a: json.dump(
        {k: proc_rss_kib(pids_arg(v)) for k, v in (x.split("=", 1) for x in a.pids)}, open(a.out, "w")))

    s = sub.add_parser("sse")
    s.add_argument("--target", action="append", required=True, help="name=port")
    s.add_argument("--streams", type=int, default=10)
    s.add_argument("--events", type=int, default=20)
    s.add_argument("--interval-ms", type=int, default=20)
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_sse)

    s = sub.add_parser("check-infer")
    s.add_argument("url")
    s.add_argument("body")
    s.set_defaults(func=cmd_check_infer)

    s = sub.add_parser("get")
    s.add_argument("url")
    s.add_argument("out")
    s.set_defaults(func=cmd_get)

    s = sub.add_parser("post")
    s.add_argument("url")
    s.set_defaults(func=cmd_post)

    s = sub.add_parser("meta")
    s.add_argument("--dir", required=True)
    s.add_argument("pairs", nargs="*")
    s.set_defaults(func=cmd_meta)

    s = sub.add_parser("report")
    s.add_argument("--dir", required=True)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("within", help="the within-repeat comparison over several runs")
    s.add_argument("dirs", nargs="+", metavar="DIR")
    s.set_defaults(func=cmd_within)

    a = p.parse_args()
    if a.cmd == "measure":
        a.command = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not a.command:
            p.error("measure: give the load generator after --")
    a.func(a)


if __name__ == "__main__":
    main()
