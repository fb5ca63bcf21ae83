#!/usr/bin/python3.11
"""PHP hello at several concurrencies: where the time of polyhost + php-fpm
and nginx + php-fpm goes (issue 19, "PHP at c >= 64").

Starts polyhost (a PHP site: `static`, 8 children) and nginx + php-fpm
(the same pool: `pm = static`, 8 children, a connection per request as the
benchmark's tuned nginx) on loopback ports of their own, then, for each
concurrency and system in turn (interleaved, `--reps` times), runs wrk and
reads /proc before and after:

- req/s, p50, p99 (wrk with the benchmark's report.lua);
- CPU µs per request of the front (the router child / nginx's workers) and
  of the pool's children;
- the children's time split from /proc/PID/schedstat: running, waiting for
  a CPU (runnable), and asleep: a php-fpm child asleep is a child with no
  request to run (in `accept` behind nginx, in `read` on a kept connection
  behind polyhost), so "asleep %" is the share of the children's time the
  front left them idle;
- context switches per request of the front and of the children.

With `--strace SECONDS`, after the runs: `strace -c -f` on the router
(and on nginx's workers) and `strace -c` on one php-fpm child of each, at
each concurrency: system calls per request, and the calls that failed
(EAGAIN reads).

With `--wire`, each wrk run is also watched on the wire (tcpdump on `lo`,
the first segment of each request and of its response): the servers' own
latency, without wrk's, which shares the machine's two CPUs with them
(wire p50 and p99; the medians at the end give both ratios to nginx's).

    BENCH_BIN_DIR=DIR integration/bench/php_queue.py [--concurrency 16,64,256]
        [--duration 5] [--reps 3] [--max-requests 0] [--strace 3] [--wire]
        [--site-scheduling batch|normal] [--systems polyhost,polyhost@root,polyhost@nocg,polyhost@8192,nginx]

`polyhost@root` (an experiment): the pool's processes moved to the root
`cpu` cgroup (v1) for that run, as php-fpm's beside nginx; `polyhost@nocg`:
moved out of every cgroup polyhost made (cpu, memory, pids) into the ones
polyhost runs in; `polyhost@N`:
the site cgroup's `cpu.shares` set to N for that run.

Needs root, wrk, nginx, php8.2-fpm and (for `--wire`) tcpdump (run.sh
installs them). Everything it
starts is stopped by PID on exit.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import wire

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("BENCH_BIN_DIR") or os.path.join(REPO, "target", "release")
OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
P_POLY, P_NGINX = 18480 + OFFSET, 18481 + OFFSET
FPM = shutil.which("php-fpm8.2") or "/usr/sbin/php-fpm8.2"
USER = "polyhost-bench"
SITE_USER = "phb-php"
CLK = os.sysconf("SC_CLK_TCK")
procs = []
WIRE = False


def start(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    procs.append(p)
    return p


def stop_all():
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def tree(max_requests, scheduling):
    t = tempfile.mkdtemp(prefix="php-queue.", dir="/var/tmp")
    os.chmod(t, 0o755)
    for d in ["php", "vhosts", "state", "log", "fpm", "nginx/tmp"]:
        os.makedirs(os.path.join(t, d))
    shutil.copy(os.path.join(HERE, "apps", "hello.php"), os.path.join(t, "php"))
    write(f"{t}/polyhost.toml", f"""listen = ["127.0.0.1:{P_POLY}"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
log_level = "warn"
shutdown_timeout = "5s"
site_scheduling = "{scheduling}"
[admin]
socket = "state/admin.sock"
""")
    write(f"{t}/vhosts/php.toml", f"""hosts = ["php.bench"]
root = "{t}/php"
user = "{SITE_USER}"
[php]
mode = "static"
max_children = 8
max_requests = {max_requests}
""")
    write(f"{t}/fpm/php-fpm.conf", f"""[global]
pid = {t}/fpm/php-fpm.pid
error_log = {t}/fpm/error.log
[nginx]
user = {USER}
group = {USER}
listen = {t}/fpm/nginx.sock
listen.owner = {USER}
listen.group = {USER}
listen.mode = 0660
pm = static
pm.max_children = 8
pm.max_requests = {max_requests}
""")
    write(f"{t}/nginx/nginx.conf", f"""daemon off;
master_process on;
worker_processes auto;
user {USER};
pid {t}/nginx/nginx.pid;
error_log {t}/nginx/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    client_body_temp_path {t}/nginx/tmp/body;
    proxy_temp_path {t}/nginx/tmp/proxy;
    fastcgi_temp_path {t}/nginx/tmp/fastcgi;
    uwsgi_temp_path {t}/nginx/tmp/uwsgi;
    scgi_temp_path {t}/nginx/tmp/scgi;
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{P_NGINX};
        root {t}/php;
        location ~ \\.php$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass unix:{t}/fpm/nginx.sock;
        }}
    }}
}}
""")
    subprocess.run(["chmod", "-R", "a+rX", t], check=True)
    subprocess.run(["chown", "-R", f"{USER}:", f"{t}/fpm", f"{t}/nginx"], check=True)
    return t


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def fpm_children(master):
    return [c for c in children_of(master) if "pool" in cmd(c)]


def parts(system, sup):
    """{"front": [pids], "children": [pids]} of a system (enumerated anew)."""
    if system == "polyhost":
        kids = children_of(sup.pid)
        router = [k for k in kids if "polyhost router" in cmd(k)]
        masters = [m for k in kids for m in [k] + children_of(k) if "php-fpm: master" in cmd(m)]
        return {"front": router, "children": [c for m in masters for c in fpm_children(m)], "masters": masters}
    nginx, fpm = sup
    return {"front": children_of(nginx.pid), "children": fpm_children(fpm.pid), "masters": [fpm.pid]}


def stat(pid, reaped=False):
    """(cpu s, run s, wait s, ctx switches) of a process (all threads)."""
    cpu = run = wait = 0.0
    sw = 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK
        if reaped:
            # A master: only what its exited (recycled) children used.
            return (int(fields[13]) + int(fields[14])) / CLK, 0.0, 0.0, 0
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                r, w, _ = f.read().split()
            run += int(r) / 1e9
            wait += int(w) / 1e9
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                        sw += int(line.split()[1])
    except (OSError, ValueError):
        pass
    return cpu, run, wait, sw


def snapshot(ps):
    return {k: {p: stat(p, k == "masters") for p in pids} for k, pids in ps.items()}


def wrk(port, host, c, duration):
    out = subprocess.run(["wrk", "-t", "2", "-c", str(c), "-d", f"{duration}s", "--timeout", "10s",
                          "-s", os.path.join(HERE, "report.lua"), "-H", f"Host: {host}",
                          f"http://127.0.0.1:{port}/hello.php"], capture_output=True, text=True).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    return json.loads(m.group(1)) if m else None


def cpu_group(sup):
    """The v1 `cpu` cgroup directory polyhost made for its sites (None if none)."""
    return site_groups(sup).get("cpu", (None, None))[0]


def site_groups(sup):
    """{controller: (polyhost's top v1 cgroup directory, its parent)} for
    cpu, memory and pids, from the pool master's /proc/PID/cgroup."""
    out = {}
    for k in children_of(sup.pid):
        for m in [k] + children_of(k):
            if "php-fpm: master" in cmd(m):
                for line in open(f"/proc/{m}/cgroup"):
                    _, ctrl, path = line.strip().split(":", 2)
                    if ctrl in ("cpu", "memory", "pids"):
                        parts_ = path.strip("/").split("/")
                        i = next((i for i, p in enumerate(parts_) if p.startswith("polyhost-")), None)
                        if i is None:
                            continue  # not in one of polyhost's (no cgroups)
                        base = f"/sys/fs/cgroup/{ctrl}"
                        out[ctrl] = (os.path.join(base, *parts_[:i + 1]), os.path.join(base, *parts_[:i]))
                return out
    return out


def measure(system, sup, port, host, c, duration):
    variant = system.split("@")[1] if "@" in system else None
    group = cpu_group(sup) if variant else None
    moved = []
    if variant == "root":
        # Experiment: the pool's processes in the root cpu cgroup, as php-fpm's beside nginx.
        inner = [os.path.join(d, "cgroup.procs") for d, _, fs in os.walk(group) if "cgroup.procs" in fs]
        for f in inner:
            for pid in open(f).read().split():
                moved.append((f, pid))
        for _, pid in moved:
            write("/sys/fs/cgroup/cpu/cgroup.procs", pid)
    elif variant == "nocg":
        # Experiment: the pool's processes out of polyhost's cgroups (cpu,
        # memory, pids), in the ones polyhost itself runs in, as php-fpm's
        # beside nginx (v1: charges stay where they were made).
        for top, parent in site_groups(sup).values():
            for d, _, fs in os.walk(top):
                if "cgroup.procs" in fs:
                    f = os.path.join(d, "cgroup.procs")
                    for pid in open(f).read().split():
                        moved.append((f, pid))
                        try:
                            write(os.path.join(parent, "cgroup.procs"), pid)
                        except OSError:
                            pass
    elif variant:
        write(os.path.join(group, "cpu.shares"), variant)
    try:
        return measure_one(system.split("@")[0], sup, port, host, c, duration) | {"system": system}
    finally:
        for f, pid in moved:
            try:
                write(f, pid)
            except OSError:
                pass
        if variant and variant not in ("root", "nocg"):
            write(os.path.join(group, "cpu.shares"), "1024")


def measure_one(system, sup, port, host, c, duration):
    before = snapshot(parts(system, sup))
    t0 = time.time()
    if WIRE:
        r, lat = wire.around(port, lambda: wrk(port, host, c, duration))
    else:
        r, lat = wrk(port, host, c, duration), None
    wall = time.time() - t0
    after = snapshot(parts(system, sup))
    n = r["requests"] if r else 0
    row = {"system": system, "c": c, "rps": n / (r["duration_us"] / 1e6) if r else 0,
           "p50": r["p50"] / 1000 if r else 0, "p99": r["p99"] / 1000 if r else 0,
           "load": open("/proc/loadavg").read().split()[0]}
    if lat:
        row["wire_p50"] = wire.percentile_ms(lat, 50)
        row["wire_p99"] = wire.percentile_ms(lat, 99)
    for k in after:
        # Only processes alive before and after (a recycled child drops out,
        # its time counted by its master: "masters", added to the children).
        both = [p for p in after[k] if p in before[k]]
        d = [sum(after[k][p][i] - before[k][p][i] for p in both) for i in range(4)]
        if k == "masters":
            row["children_us"] += d[0] * 1e6 / max(n, 1)
            continue
        row[f"{k}_us"] = d[0] * 1e6 / max(n, 1)
        row[f"{k}_sw"] = d[3] / max(n, 1)
        if k == "children" and both:
            total = wall * len(both)
            row["run%"] = 100 * d[1] / total
            row["runq%"] = 100 * d[2] / total
            row["asleep%"] = 100 * (total - d[1] - d[2]) / total
    return row


def strace(pids, seconds, port, host, c, follow):
    out = tempfile.mktemp(prefix="php-queue-strace.")
    args = ["strace", "-c", "-o", out] + (["-f"] if follow else [])
    for p in pids:
        args += ["-p", str(p)]
    s = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = wrk(port, host, c, seconds)
    s.send_signal(signal.SIGINT)
    s.wait()
    n = r["requests"] if r else 0
    rows = []
    for line in open(out):
        f = line.split()
        if len(f) >= 5 and re.match(r"^[0-9.]+$", f[0]) and f[-1] != "total":
            errors = int(f[4]) if len(f) == 6 else 0
            rows.append((f[-1], int(f[3]), errors))
    os.unlink(out)
    return n, rows


def show_strace(label, n, rows, per):
    rows.sort(key=lambda x: -x[1])
    print(f"  {label}: {n} requests; calls per request" + (" (per child: × 8 / requests)" if per else ""))
    for name, calls, errs in rows[:10]:
        k = 8 if per else 1
        print(f"    {name:16} {calls * k / max(n, 1):7.2f}" + (f"  ({errs * k / max(n, 1):.2f} failed)" if errs else ""))


def show_medians(rows, systems, cs):
    """Medians over the reps per system and concurrency, and each
    polyhost variant's p99 against nginx's (wrk's, and on the wire)."""
    print("medians:")
    for c in cs:
        med = {}
        for s in systems:
            rs = [r for r in rows if r["system"] == s and r["c"] == c]
            med[s] = {k: statistics.median(r[k] for r in rs)
                      for k in ("rps", "p50", "p99", "wire_p50", "wire_p99") if all(k in r for r in rs)}
            m = med[s]
            print(f"{s:14} c={c:<4} {m['rps']:7.0f} req/s p50 {m['p50']:6.2f} p99 {m['p99']:6.2f}"
                  + (f"  wire p50 {m['wire_p50']:6.2f} p99 {m['wire_p99']:6.2f}" if "wire_p99" in m else ""))
        if "nginx" in med:
            for s in systems:
                if s != "nginx":
                    n, m = med["nginx"], med[s]
                    print(f"  {s} against nginx, c={c}: p99 {m['p99'] / n['p99']:.2f}x"
                          + (f", wire p99 {m['wire_p99'] / n['wire_p99']:.2f}x" if "wire_p99" in m and "wire_p99" in n else "")
                          + f", req/s {m['rps'] / n['rps']:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="16,64,256")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-requests", type=int, default=0)
    ap.add_argument("--strace", type=int, default=0, help="seconds of strace per system and concurrency (0: none)")
    ap.add_argument("--systems", default="polyhost,nginx")
    ap.add_argument("--site-scheduling", default="batch", help="polyhost's site_scheduling (batch, normal)")
    ap.add_argument("--wire", action="store_true",
                    help="also the latency on the wire (tcpdump on lo): the servers' time without the client's")
    args = ap.parse_args()
    global WIRE
    WIRE = args.wire
    if WIRE and not wire.available():
        sys.exit("php_queue: --wire needs tcpdump (apt-get install tcpdump)")
    systems = args.systems.split(",")
    t = tree(args.max_requests, args.site_scheduling)
    try:
        sups = {}
        if any(s.split("@")[0] == "polyhost" for s in systems):
            sups["polyhost"] = start([f"{BIN}/polyhost", "serve", "--config", f"{t}/polyhost.toml"],
                                     env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
                                     stderr=open(f"{t}/polyhost.log", "w"))
        if "nginx" in systems:
            fpm = start([FPM, "--nodaemonize", "--fpm-config", f"{t}/fpm/php-fpm.conf"])
            nginx = start(["nginx", "-c", f"{t}/nginx/nginx.conf"])
            sups["nginx"] = (nginx, fpm)
        targets = {"polyhost": (P_POLY, "php.bench"), "nginx": (P_NGINX, "localhost")}
        for s in sups:
            port, host = targets[s]
            for _ in range(300):
                r = wrk(port, host, 8, 1)
                if r and r["requests"] > 100:
                    break
                time.sleep(0.2)
            else:
                sys.exit(f"php_queue: {s} does not answer")
        cs = [int(c) for c in args.concurrency.split(",")]
        for s in sups:
            wrk(*targets[s], max(cs), 3)  # warm
        rows = []
        print(f"{'system':9} {'c':>4} {'req/s':>7} {'p50':>6} {'p99':>6} {'front µs':>8} {'child µs':>8} "
              f"{'sw/req f':>8} {'sw/req ch':>9} {'run%':>5} {'runq%':>5} {'asleep%':>7} load"
              + (f" {'wire p50':>8} {'wire p99':>8}" if WIRE else ""))
        for _ in range(args.reps):
            for c in cs:
                for s in systems:
                    r = measure(s, sups[s.split("@")[0]], *targets[s.split("@")[0]], c, args.duration)
                    rows.append(r)
                    print(f"{s:9} {c:4} {r['rps']:7.0f} {r['p50']:6.2f} {r['p99']:6.2f} {r['front_us']:8.1f} "
                          f"{r['children_us']:8.1f} {r['front_sw']:8.2f} {r['children_sw']:9.2f} "
                          f"{r.get('run%', 0):5.1f} {r.get('runq%', 0):5.1f} {r.get('asleep%', 0):7.1f} {r['load']}"
                          + (f" {r.get('wire_p50', 0):8.2f} {r.get('wire_p99', 0):8.2f}" if WIRE else ""),
                          flush=True)
        show_medians(rows, systems, cs)
        if args.strace:
            for c in cs:
                for s in sups:
                    ps = parts(s, sups[s])
                    n, rr = strace(ps["front"], args.strace, *targets[s], c, True)
                    show_strace(f"{s} front, c={c}", n, rr, False)
                    n, rr = strace(ps["children"][:1], args.strace, *targets[s], c, False)
                    show_strace(f"{s} one php-fpm child, c={c}", n, rr, True)
        print("JSON " + json.dumps(rows))
    finally:
        stop_all()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    main()
