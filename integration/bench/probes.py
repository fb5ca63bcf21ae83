"""Probes of the running systems: one HTTP request, the first byte's
time, whether a port answers, and what /proc says of a process tree (RSS,
CPU time, context switches, command line). Stdlib only.
"""

import os
import socket
import time

import loadgen


def http_get(port, host, path, timeout=10):
    """One request on a fresh connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(loadgen.request_bytes(host, path, close=True))
        data = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    return split_response(data)


def split_response(data):
    """A whole HTTP/1.1 response → (status, decoded body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            line, _, rest = rest.partition(b"\r\n")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        body = out
    return status, body


def first_byte_ms(port, host, path):
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(loadgen.request_bytes(host, path, close=True))
        first = s.recv(1)
        ms = (time.perf_counter() - t) * 1000.0
        data = first
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    status, body = split_response(data)
    return ms, status, body


def port_answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, reaped=False):
    """User + system time of `pid`; with `reaped`, also that of the children
    it has waited for (cutime + cstime), where a recycled php-fpm child's
    time goes when it exits."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        n = 4 if reaped else 2
        return sum(int(x) for x in fields[11:11 + n]) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def ctx_switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid`."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_snapshot(parts):
    """CPU seconds per part, {part: [pids]}, taken before and after a run
    with the pids enumerated anew each time (children come and go). Every
    part but the router counts its processes' reaped children too, so a
    child that exits during the run is still counted (by its parent, php-fpm's
    master: put it in the part); the router's own time only (it reaps php-fpm
    masters and workers of every site)."""
    snap = {k: sum(cpu_seconds(p, reaped=k != "router") for p in pids) for k, pids in parts.items()}
    snap["_ctxsw"] = sum(ctx_switches(p) for pids in parts.values() for p in pids)
    return snap


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
