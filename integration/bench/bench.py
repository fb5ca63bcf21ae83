#!/usr/bin/env python3
"""polyhost side by side with its peers. Run through `run.sh`, which installs
what is missing and builds; this script sets up the temp tree, starts every
system, runs the workloads interleaved, stops everything it started (by PID)
and writes the report. Stdlib only.

Environment from run.sh: BENCH_REPO (the checkout), BENCH_VENV (granian,
gunicorn), BENCH_TREE (the temp tree), BENCH_PIDFILE (PIDs we started, for
run.sh's trap).
"""

import argparse
import asyncio
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402

REPO = os.environ.get("BENCH_REPO", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
VENV = os.environ.get("BENCH_VENV", "/var/tmp/polyhost-bench-venv")
TREE = os.environ["BENCH_TREE"]
PIDFILE = os.environ.get("BENCH_PIDFILE", os.path.join(TREE, "pids"))
USER = "polyhost-bench"
HERE = os.path.dirname(os.path.abspath(__file__))
# BENCH_BIN_DIR: measure other binaries than this tree's release build
# (A/B of two builds: `cp target/release/polyhost* /tmp/a/` before a change).
BIN = os.environ.get("BENCH_BIN_DIR") or os.path.join(REPO, "target/release")
FPM = shutil.which("php-fpm8.2") or "/usr/sbin/php-fpm8.2"

PHP_CHILDREN = 8
PROCS, THREADS = 2, 15

# Ports (loopback). polyhost routes by Host on one port. BENCH_PORT_OFFSET
# shifts all of them, so A/B runs from two worktrees do not collide.
PORT_OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
P_POLYHOST = 18080 + PORT_OFFSET
P_DENSITY = 18090 + PORT_OFFSET
WSGI_APPS = ["hello", "big", "sleep"]
WSGI_PORTS = {  # system -> first port; hello, big, sleep follow
    "granian": 18111 + PORT_OFFSET,
    "granian-default": 18121 + PORT_OFFSET,
    "gunicorn": 18131 + PORT_OFFSET,
    "apache-wsgi": 18141 + PORT_OFFSET,
}
P_APACHE_PHP = 18151 + PORT_OFFSET
P_NGINX_PHP = 18161 + PORT_OFFSET
P_NGINX_STATIC = 18162 + PORT_OFFSET

started = []  # (name, Popen)
log = print


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- the tree

def write(path, text, mode=0o644):
    path = os.path.join(TREE, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def make_tree():
    for d in ["apps", "php", "static", "apache/run", "nginx/tmp", "fpm", "gunicorn",
              "polyhost/vhosts", "polyhost/state", "polyhost/log", "density/vhosts",
              "density/state", "density/log", "logs"]:
        os.makedirs(os.path.join(TREE, d), exist_ok=True)
    for f in ["hello.py", "big.py", "sleep.py"]:
        shutil.copy(os.path.join(HERE, "apps", f), os.path.join(TREE, "apps", f))
    for f in ["hello.php", "phpinfo.php"]:
        shutil.copy(os.path.join(HERE, "apps", f), os.path.join(TREE, "php", f))
    write("static/13b.txt", "Hello, World!")
    with open(os.path.join(TREE, "static/1mib.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    pw = pwd.getpwnam(USER)
    # Readable by the bench user; the dirs daemons write to are its own.
    sh(f"chmod -R a+rX {TREE}")
    for d in ["apache/run", "nginx/tmp", "fpm", "gunicorn", "logs"]:
        os.chown(os.path.join(TREE, d), pw.pw_uid, pw.pw_gid)


# ---------------------------------------------------------------- configs

def polyhost_config(base, port, log_level="info"):
    write(f"{base}/polyhost.toml", f"""listen = ["127.0.0.1:{port}"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
log_level = "{log_level}"
shutdown_timeout = "5s"

[admin]
socket = "state/admin.sock"

# Every client of the benchmark is 127.0.0.1: the per-address limit (default
# 256) would refuse the 10,000 idle connections and the 1,000 long polls.
[limits]
max_connections = 15000
max_connections_per_ip = 15000
""")


def polyhost_main_sites():
    base = "polyhost"
    polyhost_config(base, P_POLYHOST)
    for app in WSGI_APPS:
        extra = 'queue_timeout = "25s"\nrequest_timeout = "60s"\n' if app == "sleep" else ""
        write(f"{base}/vhosts/{app}.toml", f"""hosts = ["{app}.bench"]
user = "{USER}"
[python]
app = "{app}"
path = ["{TREE}/apps"]
processes = {PROCS}
threads = {THREADS}
{extra}""")
    write(f"{base}/vhosts/php.toml", f"""hosts = ["php.bench"]
root = "{TREE}/php"
user = "{USER}"
[php]
mode = "static"
max_children = {PHP_CHILDREN}
max_requests = 0
""")
    write(f"{base}/vhosts/static.toml", f"""hosts = ["static.bench"]
root = "{TREE}/static"
user = "{USER}"
""")


def density_sites(n=1000):
    base = "density"
    polyhost_config(base, P_DENSITY)
    for i in range(n):
        if i % 2 == 0:
            write(f"{base}/vhosts/py-{i:04d}.toml", f"""hosts = ["py-{i:04d}.bench"]
user = "{USER}"
[python]
app = "hello"
path = ["{TREE}/apps"]
processes = 1
threads = 4
idle_timeout = "60s"
""")
        else:
            write(f"{base}/vhosts/php-{i:04d}.toml", f"""hosts = ["php-{i:04d}.bench"]
root = "{TREE}/php"
user = "{USER}"
[php]
mode = "ondemand"
start = "on_demand"
max_children = 2
idle_timeout = "10s"
""")


def apache_config():
    mods = "/usr/lib/apache2/modules"
    vhosts = []
    base = WSGI_PORTS["apache-wsgi"]
    listens = []
    for i, app in enumerate(WSGI_APPS):
        port = base + i
        listens.append(f"Listen 127.0.0.1:{port}")
        vhosts.append(f"""<VirtualHost 127.0.0.1:{port}>
    WSGIDaemonProcess {app} user={USER} group={USER} processes={PROCS} threads={THREADS} python-path={TREE}/apps
    WSGIScriptAlias / {TREE}/apps/{app}.py process-group={app} application-group=%{{GLOBAL}}
</VirtualHost>""")
    listens.append(f"Listen 127.0.0.1:{P_APACHE_PHP}")
    vhosts.append(f"""<VirtualHost 127.0.0.1:{P_APACHE_PHP}>
    DocumentRoot {TREE}/php
    <FilesMatch "\\.php$">
        SetHandler "proxy:unix:{TREE}/fpm/apache.sock|fcgi://localhost"
    </FilesMatch>
</VirtualHost>""")
    nl = "\n"
    return write("apache/apache.conf", f"""ServerRoot "{TREE}/apache"
ServerName localhost
PidFile {TREE}/apache/apache.pid
DefaultRuntimeDir {TREE}/apache/run
Mutex file:{TREE}/apache/run default
ErrorLog {TREE}/logs/apache.error.log
LogLevel warn
LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule proxy_module {mods}/mod_proxy.so
LoadModule proxy_fcgi_module {mods}/mod_proxy_fcgi.so
LoadModule wsgi_module {mods}/mod_wsgi.so
User {USER}
Group {USER}
# Debian's defaults for mpm_event.
StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
LogFormat "%h %l %u %t \\"%r\\" %>s %O" common
CustomLog {TREE}/logs/apache.access.log common
WSGISocketPrefix {TREE}/apache/run/wsgi
WSGIRestrictEmbedded On
<Directory />
    Require all granted
</Directory>
{nl.join(listens)}
{nl.join(vhosts)}
""")


def nginx_config():
    return write("nginx/nginx.conf", f"""daemon off;
master_process on;
worker_processes auto;
user {USER};
pid {TREE}/nginx/nginx.pid;
error_log {TREE}/logs/nginx.error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {TREE}/logs/nginx.access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {TREE}/nginx/tmp/body;
    proxy_temp_path {TREE}/nginx/tmp/proxy;
    fastcgi_temp_path {TREE}/nginx/tmp/fastcgi;
    uwsgi_temp_path {TREE}/nginx/tmp/uwsgi;
    scgi_temp_path {TREE}/nginx/tmp/scgi;
    server {{
        listen 127.0.0.1:{P_NGINX_PHP};
        root {TREE}/php;
        location ~ \\.php$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass unix:{TREE}/fpm/nginx.sock;
        }}
    }}
    server {{
        listen 127.0.0.1:{P_NGINX_STATIC};
        root {TREE}/static;
    }}
}}
""")


def fpm_config():
    pools = []
    for name in ["nginx", "apache"]:
        pools.append(f"""[{name}]
user = {USER}
group = {USER}
listen = {TREE}/fpm/{name}.sock
listen.owner = {USER}
listen.group = {USER}
listen.mode = 0660
pm = static
pm.max_children = {PHP_CHILDREN}
pm.max_requests = 0
""")
    return write("fpm/php-fpm.conf", f"""[global]
pid = {TREE}/fpm/php-fpm.pid
error_log = {TREE}/logs/php-fpm.error.log
daemonize = no
""" + "\n".join(pools))


# ---------------------------------------------------------------- processes

def record_pid(p):
    with open(PIDFILE, "a") as f:
        f.write(f"{p.pid}\n")


def start(name, argv, cwd=None, as_user=False, env=None):
    out = open(os.path.join(TREE, "logs", f"{name}.out"), "ab")
    kw = {}
    if as_user:
        pw = pwd.getpwnam(USER)
        kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    # A clean-ish environment: polyhost reads POLYHOST_* variables as
    # configuration (an unknown one is a warning), Python ones change the apps.
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("POLYHOST_", "PYTHON", "BENCH_", "VIRTUAL_ENV"))}
    if env:
        e.update(env)
    p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, env=e, **kw)
    started.append((name, p))
    record_pid(p)
    return p


def stop(name, p, sig=signal.SIGTERM, grace=10):
    if p.poll() is not None:
        return
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"bench: {name} (pid {p.pid}) did not stop in {grace}s; SIGKILL to its group")
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def stop_all():
    for name, p in reversed(started):
        # Apache stops gracefully on SIGWINCH, at once on SIGTERM; nginx on SIGQUIT/TERM.
        stop(name, p)
    started.clear()


def start_systems(peers=True):
    """Starts polyhost, and the peers unless `peers` is false (A/B runs)."""
    if peers:
        start_peers()
    polyhost_main_sites()
    return start("polyhost", [f"{BIN}/polyhost", "serve", "--config", os.path.join(TREE, "polyhost/polyhost.toml")],
                 cwd=os.path.join(TREE, "polyhost"))


def start_peers():
    venv_bin = os.path.join(VENV, "bin")
    apps = os.path.join(TREE, "apps")
    for i, app in enumerate(WSGI_APPS):
        start(f"granian-{app}", [f"{venv_bin}/granian", "--interface", "wsgi", "--host", "127.0.0.1",
                                 "--port", str(WSGI_PORTS["granian"] + i), "--workers", str(PROCS),
                                 "--blocking-threads", str(THREADS), "--no-ws", f"{app}:application"],
              cwd=apps, as_user=True)
        start(f"granian-default-{app}", [f"{venv_bin}/granian", "--interface", "wsgi", "--host", "127.0.0.1",
                                         "--port", str(WSGI_PORTS["granian-default"] + i), f"{app}:application"],
              cwd=apps, as_user=True)
        start(f"gunicorn-{app}", [f"{venv_bin}/gunicorn", "--worker-class", "gthread", "--workers", str(PROCS),
                                  "--threads", str(THREADS), "--bind", f"127.0.0.1:{WSGI_PORTS['gunicorn'] + i}",
                                  "--worker-tmp-dir", os.path.join(TREE, "gunicorn"), f"{app}:application"],
              cwd=apps, as_user=True)
    start("php-fpm", [FPM, "--nodaemonize", "--fpm-config", fpm_config()])
    start("apache", ["/usr/sbin/apache2", "-f", apache_config(), "-DFOREGROUND"])
    start("nginx", ["/usr/sbin/nginx", "-c", nginx_config(), "-p", os.path.join(TREE, "nginx")])


# ---------------------------------------------------------------- probes

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


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
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


def proc(name):
    for n, p in started:
        if n == name:
            return p.pid
    return None


def system_pids(system, kind, arg):
    """The processes that serve `system` for a workload: {part: [pids]}
    ("router"/"front" and "app")."""
    if system == "polyhost":
        root = proc("polyhost")
        return {"router": [root], "app": descendants(root)} if root else {}
    fpm = proc("php-fpm")

    def pool(name):
        return [c for c in descendants(fpm) if f"pool {name}" in cmdline(c)] if fpm else []
    if system in ("granian", "granian-default", "gunicorn"):
        root = proc(f"{system}-{WSGI_APPS[arg]}")
        return {"app": [root] + descendants(root)} if root else {}
    if system == "apache-wsgi":
        root = proc("apache")
        # The daemon processes are children of apache too.
        return {"front": [root] + descendants(root)} if root else {}
    if system == "apache+php-fpm":
        root = proc("apache")
        return {"front": [root] + descendants(root), "app": pool("apache")} if root else {}
    if system == "nginx+php-fpm":
        root = proc("nginx")
        return {"front": [root] + descendants(root), "app": pool("nginx")} if root else {}
    if system == "nginx":
        root = proc("nginx")
        return {"front": [root] + descendants(root)} if root else {}
    return {}


def cpu_snapshot(parts):
    snap = {k: sum(cpu_seconds(p) for p in pids) for k, pids in parts.items()}
    snap["_ctxsw"] = sum(ctx_switches(p) for pids in parts.values() for p in pids)
    return snap


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------- workloads

def check_hello(body):
    return body == b"Hello, World!"


WORKLOADS = [
    # name, kind, checker, wrk connections, {system: (port, host, path)}
    ("WSGI hello 13 B", "wsgi", 0, check_hello, 32),
    ("WSGI 64 KiB", "wsgi", 1, lambda b: len(b) == 65536, 32),
    ("WSGI sleep 50 ms", "wsgi", 2, lambda b: b == b"slept", 64),
    ("PHP hello", "php", "/hello.php", check_hello, 16),
    ("PHP phpinfo()", "php", "/phpinfo.php", lambda b: b"PHP Version" in b and len(b) > 20000, 16),
    ("static 13 B", "static", "/13b.txt", check_hello, 32),
    ("static 1 MiB", "static", "/1mib.bin", lambda b: len(b) == 1 << 20, 32),
]
WSGI_SYSTEMS = ["polyhost", "granian", "granian-default", "apache-wsgi", "gunicorn"]


def targets(kind, arg):
    if kind == "wsgi":
        app = WSGI_APPS[arg]
        t = {"polyhost": (P_POLYHOST, f"{app}.bench", "/")}
        for s in WSGI_SYSTEMS[1:]:
            t[s] = (WSGI_PORTS[s] + arg, "localhost", "/")
        return t
    if kind == "php":
        return {"polyhost": (P_POLYHOST, "php.bench", arg),
                "nginx+php-fpm": (P_NGINX_PHP, "localhost", arg),
                "apache+php-fpm": (P_APACHE_PHP, "localhost", arg)}
    return {"polyhost": (P_POLYHOST, "static.bench", arg), "nginx": (P_NGINX_STATIC, "localhost", arg)}


def wrk(port, host, path, conns, duration, threads=2):
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--timeout", "10s",
           "-s", os.path.join(HERE, "report.lua"), "-H", f"Host: {host}", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        return None
    j = json.loads(m.group(1))
    non2xx = 0
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m2:
        non2xx = int(m2.group(1))
    j["rps"] = j["requests"] / (j["duration_us"] / 1e6)
    j["errors"] = non2xx + j["connect"] + j["read"] + j["write"] + j["timeout"]
    return j


def verify(t, check):
    """Which systems answer the workload correctly: {system: None | reason}."""
    bad = {}
    for system, (port, host, path) in t.items():
        try:
            status, body = http_get(port, host, path, timeout=60)
            if status != 200 or not check(body):
                bad[system] = f"status {status}, body {body[:40]!r} ({len(body)} B)"
        except Exception as e:  # noqa: BLE001 - any failure means "not available"
            bad[system] = f"{type(e).__name__}: {e}"
    return bad


def chosen(args, t):
    """The targets of the systems this run measures (`--systems`)."""
    return {s: v for s, v in t.items() if args.systems is None or s in args.systems}


def run_throughput(args, results, notes):
    for name, kind, arg, check, conns in WORKLOADS:
        if args.workloads and not any(w.lower() in name.lower() for w in args.workloads):
            continue
        t = chosen(args, targets(kind, arg))
        bad = verify(t, check)
        for s, why in bad.items():
            notes.append(f"{name}: {s} not measured ({why})")
            results[(name, s)] = {"pending": why}
        live = [s for s in t if s not in bad]
        log(f"bench: {name}: warming up {', '.join(live)}")
        for s in live:
            wrk(*t[s], conns, args.warmup)
        for rep in range(args.reps):
            for s in live:
                parts = system_pids(s, kind, arg)
                before = cpu_snapshot(parts)
                r = wrk(*t[s], conns, args.duration)
                after = cpu_snapshot(parts)
                if r and r["requests"]:
                    r["cpu_us"] = {k: (after[k] - before[k]) * 1e6 / r["requests"] for k in after if k != "_ctxsw"}
                    r["ctxsw"] = (after["_ctxsw"] - before["_ctxsw"]) / r["requests"]
                log(f"bench: {name} rep {rep + 1} {s}: "
                    + (f"{r['rps']:.0f} req/s p50 {r['p50'] / 1000:.2f} ms p99 {r['p99'] / 1000:.2f} ms errors {r['errors']}"
                       if r else "wrk failed"))
                results.setdefault((name, s), {"runs": []}).setdefault("runs", []).append(r)


def run_latency(args, results, notes):
    for name, kind, arg, check in [("latency WSGI hello @%d/s", "wsgi", 0, check_hello),
                                   ("latency PHP hello @%d/s", "php", "/hello.php", check_hello)]:
        name = name % args.rate
        t = chosen(args, targets(kind, arg))
        bad = verify(t, check)
        for s, why in bad.items():
            notes.append(f"{name}: {s} not measured ({why})")
            results[(name, s)] = {"pending": why}
        live = [s for s in t if s not in bad]
        for rep in range(args.reps):
            for s in live:
                port, host, path = t[s]
                r = asyncio.run(loadgen.paced(port, host, path, args.rate, args.lat_duration, conns=50))
                log(f"bench: {name} rep {rep + 1} {s}: achieved {r['achieved']:.0f}/s p50 {r['p50']:.2f} ms "
                    f"p99 {r['p99']:.2f} ms errors {r['errors'] + r['non2xx']}")
                results.setdefault((name, s), {"paced": []})["paced"].append(r)


def run_idle(args, polyhost_pid, extra):
    n = args.idle
    http_get(P_POLYHOST, "hello.bench", "/")  # the probe's site is running (not a cold start)
    before = rss_kib(polyhost_pid)
    hold = 35 if not args.quick else 0

    def measure():
        return rss_kib(polyhost_pid)

    opened, failed, during, status, probe_ms, still = asyncio.run(loadgen.idle_connections(
        P_POLYHOST, "static.bench", "/13b.txt", n, measure, "hello.bench", "/", hold=hold))
    time.sleep(1)
    extra["idle"] = dict(n=n, opened=opened, failed=failed, rss_before=before, rss_during=during,
                         probe_status=status, probe_ms=probe_ms, still_open=still, hold=hold,
                         rss_after=rss_kib(polyhost_pid))
    log(f"bench: {n} idle connections: opened {opened} (failed {failed}); polyhost RSS {before / 1024:.1f} → "
        f"{during / 1024:.1f} MiB; another client: {status} in {probe_ms:.1f} ms; still open after "
        f"{hold}s more: {still}")


def run_longpoll(args, extra):
    clients, secs = (args.poll_clients, args.poll_seconds)
    systems = chosen(args, {"polyhost": (P_POLYHOST, "sleep.bench"),
                            "granian": (WSGI_PORTS["granian"] + 2, "localhost"),
                            "apache-wsgi": (WSGI_PORTS["apache-wsgi"] + 2, "localhost"),
                            "gunicorn": (WSGI_PORTS["gunicorn"] + 2, "localhost")})
    out = {}
    for s, (port, host) in systems.items():
        # Warm: every process and thread started (no scale-from-zero in the numbers).
        wrk(port, host, "/", 64, 2)
        time.sleep(1)
        t = time.time()
        counts, spans = asyncio.run(loadgen.long_polls(port, host, f"/?s={secs}", clients, timeout=args.poll_timeout))
        out[s] = dict(counts=counts, spans=spans, wall=time.time() - t)
        log(f"bench: {clients} long polls of {secs}s against {s}: "
            + ", ".join(f"{k}: {v} ({spans[k][0]:.1f}–{spans[k][1]:.1f}s)" for k, v in sorted(counts.items())))
        # Let the server drain what is still queued before the next one.
        time.sleep(2)
    extra["longpoll"] = dict(clients=clients, seconds=secs, timeout=args.poll_timeout, results=out)


def run_density(args, extra):
    n = args.sites
    density_sites(n)
    sh(f"chmod -R a+rX {TREE}/density")
    errfile = os.path.join(TREE, "logs", "polyhost-density.out")
    t = time.perf_counter()
    p = start("polyhost-density", [f"{BIN}/polyhost", "serve", "--config", os.path.join(TREE, "density/polyhost.toml")],
              cwd=os.path.join(TREE, "density"))
    ok = wait_port(P_DENSITY, 120)
    startup = time.perf_counter() - t
    d = dict(sites=n, startup_s=startup if ok else None)
    if not ok:
        d["error"] = "polyhost with the generated sites did not listen within 120 s"
        extra["density"] = d
        return
    time.sleep(3)
    kids = descendants(p.pid)
    d["rss_idle_kib"] = rss_kib(p.pid)
    d["children_idle"] = len(kids)
    d["children_rss_kib"] = sum(rss_kib(k) for k in kids)
    # Reload with one site changed: SIGHUP, wait for the next "reloaded" line.
    with open(errfile, "rb") as f:
        seen = f.read().count(b"reloaded")
    site = os.path.join(TREE, "density/vhosts/py-0000.toml")
    with open(site, "a") as f:
        f.write('\n[python.env]\nBENCH_CHANGED = "1"\n')
    conf = os.path.join(TREE, "density/polyhost.toml")
    t = time.perf_counter()
    cli = subprocess.run([f"{BIN}/polyhost", "reload", "--config", conf], capture_output=True, text=True)
    reload_s = None
    line = ""
    if cli.returncode == 0:
        reload_s = time.perf_counter() - t
        line = "`polyhost reload`: " + " ".join((cli.stdout + cli.stderr).split())
        d["reload_how"] = "polyhost reload (CLI, until it returns)"
    else:
        # No CLI (or it failed): SIGHUP, then wait for the "reloaded" log line.
        notes_cli = (cli.stderr or cli.stdout).strip()[:200]
        d["reload_how"] = f"SIGHUP until the `reloaded` line (the CLI failed: {notes_cli})"
        t = time.perf_counter()
        os.kill(p.pid, signal.SIGHUP)
    while reload_s is None and time.perf_counter() - t < 30:
        with open(errfile, "rb") as f:
            text = f.read()
        if text.count(b"reloaded") > seen or text.count(b"reload refused") > 0:
            reload_s = time.perf_counter() - t
            line = [ln for ln in text.decode(errors="replace").splitlines() if "reload" in ln][-1]
            break
        time.sleep(0.005)
    d["reload_s"] = reload_s
    d["reload_line"] = line[-300:]
    # Cold first byte: sites never touched (scaled to zero / not started).
    half = n // 2 - (n // 2) % 2  # an even index: a Python site; the next one is PHP
    for key, host, path in [("cold_python", f"py-{half:04d}.bench", "/"),
                            ("cold_php", f"php-{half + 1:04d}.bench", "/hello.php")]:
        try:
            ms, status, body = first_byte_ms(P_DENSITY, host, path)
            d[key] = dict(ms=ms, status=status, ok=status == 200 and body == b"Hello, World!",
                          body=body[:40].decode(errors="replace"))
        except OSError as e:
            d[key] = dict(ms=None, status=f"failed ({e})", ok=False, body="")
        # A warm request right after, for comparison.
        try:
            ms, status, _ = first_byte_ms(P_DENSITY, host, path)
            d[key]["warm_ms"] = ms
        except OSError:
            pass
    d["rss_after_kib"] = rss_kib(p.pid)
    extra["density"] = d
    log(f"bench: density: {json.dumps(d)}")
    stop("polyhost-density", p, grace=30)


# ---------------------------------------------------------------- report

def versions():
    v = {}
    v["polyhost"] = sh(f"{BIN}/polyhost --version").stdout.strip()
    v["granian"] = sh(f"{VENV}/bin/granian --version").stdout.strip()
    v["gunicorn"] = sh(f"{VENV}/bin/gunicorn --version").stdout.strip()
    v["apache"] = sh("/usr/sbin/apache2 -v").stdout.splitlines()[0].split(":", 1)[1].strip()
    v["mod_wsgi"] = sh("dpkg-query -W -f='${Version}' libapache2-mod-wsgi-py3").stdout.strip()
    v["nginx"] = sh("/usr/sbin/nginx -v").stderr.strip().split(":", 1)[-1].strip()
    v["php-fpm"] = sh(f"{FPM} -v").stdout.splitlines()[0]
    v["python"] = sh("/usr/bin/python3.11 --version").stdout.strip()
    v["wrk"] = sh("wrk -v").stdout.splitlines()[0].split(" [")[0]
    return v


def fmt_rps(r):
    return f"{r:,.0f}"


def ratio(a, b):
    return a / b if a and b else None


def report(args, results, notes, extra, meta):
    L = []
    L.append(f"# polyhost benchmark — {meta['stamp']}\n")
    L.append(f"- mode: {'quick (1 rep, short runs: validation only)' if args.quick else f'{args.reps} reps, interleaved'}; "
             f"wrk {args.duration}s per run, 2 threads, keep-alive, after a {args.warmup}s warm-up")
    L.append(f"- machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']}, kernel {meta['kernel']}, {meta['os']}")
    L.append(f"- load average (1/5/15 min): start {meta['load_start']}, end {meta['load_end']}")
    L.append("- load generator on the same machine; cores shared with other work")
    L.append("- same sizes everywhere: WSGI 2 processes × 15 threads (granian-default: its defaults); "
             f"PHP static pools of {PHP_CHILDREN} children")
    L.append("- versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    L.append("")
    L.append("## Throughput (wrk)\n")
    L.append("| workload | system | req/s median | min–max | p50 ms | p99 ms | errors | server CPU µs/req | ctx switches/req | polyhost/this |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, kind, arg, _, conns in WORKLOADS:
        for s in targets(kind, arg):
            r = results.get((name, s))
            if not r:
                continue
            if "pending" in r:
                L.append(f"| {name} (c={conns}) | {s} | pending | | | | | | | |")
                continue
            runs = [x for x in r["runs"] if x]
            if not runs:
                L.append(f"| {name} (c={conns}) | {s} | wrk failed | | | | | | | |")
                continue
            rps = [x["rps"] for x in runs]
            med = statistics.median(rps)
            medians[(name, s)] = med
            mid = sorted(runs, key=lambda x: x["rps"])[len(runs) // 2]
            errs = sum(x["errors"] for x in runs)
            cpu = ""
            if mid.get("cpu_us"):
                c = mid["cpu_us"]
                cpu = f"{sum(c.values()):.0f}"
                if len(c) > 1:
                    cpu += " (" + " + ".join(f"{k} {v:.0f}" for k, v in c.items()) + ")"
            L.append(f"| {name} (c={conns}) | {s} | {fmt_rps(med)} | {fmt_rps(min(rps))}–{fmt_rps(max(rps))} | "
                     f"{mid['p50'] / 1000:.2f} | {mid['p99'] / 1000:.2f} | {errs} | {cpu} | "
                     f"{mid.get('ctxsw', 0):.1f} | RATIO:{name}:{s} |")
    text = "\n".join(L)

    def sub(m):
        name, s = m.group(1), m.group(2)
        if s == "polyhost":
            return "—"
        q = ratio(medians.get((name, "polyhost")), medians.get((name, s)))
        return f"{q:.2f}×" if q else "n/a"
    text = re.sub(r"RATIO:([^:|]+):([^|]+?) \|", lambda m: sub(m) + " |", text)
    L = [text, ""]

    lat = {}
    L.append(f"## Latency at an offered {args.rate} req/s (paced, 50 connections, {args.lat_duration}s; "
             "latency from the scheduled send)\n")
    L.append("| workload | system | achieved req/s | p50 ms | p99 ms | max ms | errors | p50 polyhost/this | p99 polyhost/this |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, s), r in results.items():
        if not name.startswith("latency"):
            continue
        if "pending" in r:
            L.append(f"| {name} | {s} | pending | | | | | | |")
            continue
        runs = r["paced"]
        p50 = statistics.median(x["p50"] for x in runs)
        p99 = statistics.median(x["p99"] for x in runs)
        lat[(name, s)] = (p50, p99)
        L.append(f"| {name} | {s} | {statistics.median(x['achieved'] for x in runs):,.0f} | {p50:.2f} | {p99:.2f} | "
                 f"{max(x['max'] for x in runs):.1f} | {sum(x['errors'] + x['non2xx'] for x in runs)} | "
                 f"LAT50:{name}:{s} | LAT99:{name}:{s} |")
    text = "\n".join(L)

    def sublat(m):
        which, name, s = m.group(1), m.group(2), m.group(3)
        if s == "polyhost":
            return "—"
        a, b = lat.get((name, "polyhost")), lat.get((name, s))
        if not a or not b:
            return "n/a"
        i = 0 if which == "50" else 1
        return f"{a[i] / b[i]:.2f}×"
    text = re.sub(r"LAT(50|99):([^:|]+):([^|]+?) \|", lambda m: sublat(m) + " |", text)
    L = [text, ""]

    if "idle" in extra:
        i = extra["idle"]
        L.append("## Idle keep-alive connections (polyhost)\n")
        L.append(f"- {i['opened']:,} of {i['n']:,} connections opened, one request each, then idle (failed: {i['failed']})")
        L.append(f"- polyhost RSS: {i['rss_before'] / 1024:.1f} MiB before → {i['rss_during'] / 1024:.1f} MiB with them open "
                 f"({(i['rss_during'] - i['rss_before']) / max(i['opened'], 1):.1f} KiB per connection)")
        L.append(f"- another client meanwhile (WSGI hello): {i['probe_status']} in {i['probe_ms']:.1f} ms")
        L.append(f"- still open {i['hold']}s later: {i['still_open']:,}; polyhost RSS after they closed: "
                 f"{i['rss_after'] / 1024:.1f} MiB")
        L.append("")
    if "longpoll" in extra:
        lp = extra["longpoll"]
        L.append(f"## {lp['clients']:,} concurrent {lp['seconds']}s long polls, all connecting at once "
                 f"(2 × 15 threads; client gives up after {lp['timeout']}s)\n")
        L.append("| system | outcomes (count, first–last answer s) | wall s |")
        L.append("|---|---|---:|")
        for s, r in lp["results"].items():
            o = "; ".join(f"{k}: {v} ({r['spans'][k][0]:.1f}–{r['spans'][k][1]:.1f})" for k, v in sorted(r["counts"].items()))
            L.append(f"| {s} | {o} | {r['wall']:.1f} |")
        L.append("\npolyhost: queue_timeout 25s, so the expected outcome is 60 × 200 (two rounds of 30) "
                 "and the rest 503 at ~25 s.\n")
    if "density" in extra:
        d = extra["density"]
        L.append(f"## Density: {d['sites']:,} sites (half Python, idle_timeout 60s; half PHP, start = \"on_demand\")\n")
        if "error" in d:
            L.append(f"- {d['error']}")
        else:
            L.append(f"- start until listening: {d['startup_s']:.2f} s")
            L.append(f"- polyhost RSS, all idle: {d['rss_idle_kib'] / 1024:.1f} MiB; child processes: "
                     f"{d['children_idle']} ({d['children_rss_kib'] / 1024:.1f} MiB)")
            L.append(f"- reload with one site changed, {d.get('reload_how', '')}: "
                     + (f"{d['reload_s'] * 1000:.0f} ms" if d["reload_s"] is not None else "no reloaded line in 30 s"))
            L.append(f"  - `{d['reload_line'].strip()}`")
            for k, label in [("cold_python", "Python hello"), ("cold_php", "PHP hello")]:
                c = d[k]
                ms = f"{c['ms']:.0f} ms" if c["ms"] is not None else "—"
                L.append(f"- cold first byte, {label}: {ms}, status {c['status']}"
                         + ("" if c["ok"] else f" (NOT the expected body: {c['body']!r})")
                         + (f"; warm right after: {c['warm_ms']:.1f} ms" if "warm_ms" in c else ""))
            L.append(f"- polyhost RSS after: {d['rss_after_kib'] / 1024:.1f} MiB")
        L.append("")

    # Targets.
    L.append("## Targets\n")
    L.append("| target | measured | met? |")
    L.append("|---|---|---|")

    def tgt(label, value, ok):
        L.append(f"| {label} | {value} | {'met' if ok else 'MISSED' if ok is False else 'pending'} |")

    def rr(name, s):
        return ratio(medians.get((name, "polyhost")), medians.get((name, s)))
    for name in ["WSGI hello 13 B", "WSGI 64 KiB"]:
        for s, want in [("granian", 0.8), ("apache-wsgi", 4.0)]:
            q = rr(name, s)
            tgt(f"{name} ≥ {want}× {s}", f"{q:.2f}×" if q else "n/a", (q >= want) if q else None)
    q = medians.get(("WSGI sleep 50 ms", "polyhost"))
    ideal = PROCS * THREADS / 0.05
    # The ideal is a bound nobody reaches exactly (each request also costs the
    # round trip and the queueing of 64 connections onto 30 threads): ≥ 0.9×.
    tgt(f"WSGI sleep 50 ms ≈ threads/50 ms = {ideal:.0f} req/s (≥ 0.9×)",
        f"{q:,.0f} req/s ({q / ideal:.2f}×)" if q else "n/a", (q >= 0.9 * ideal) if q else None)
    for name in ["PHP hello", "PHP phpinfo()"]:
        q = rr(name, "nginx+php-fpm")
        tgt(f"{name} ≥ 1.0× nginx+php-fpm", f"{q:.2f}×" if q else "pending", (q >= 1.0) if q else None)
    for name in ["static 13 B", "static 1 MiB"]:
        q = rr(name, "nginx")
        tgt(f"{name} ≥ 0.7× nginx", f"{q:.2f}×" if q else "n/a", (q >= 0.7) if q else None)
    for name, peer in [(f"latency WSGI hello @{args.rate}/s", "granian"), (f"latency PHP hello @{args.rate}/s", "nginx+php-fpm")]:
        a, b = lat.get((name, "polyhost")), lat.get((name, peer))
        for i, p in [(0, "p50"), (1, "p99")]:
            if a and b:
                tgt(f"{name} {p} ≤ 1.2× {peer}", f"{a[i]:.2f} vs {b[i]:.2f} ms ({a[i] / b[i]:.2f}×)", a[i] <= 1.2 * b[i])
            else:
                tgt(f"{name} {p} ≤ 1.2× {peer}", "pending", None)
    if "idle" in extra:
        i = extra["idle"]
        tgt(f"{i['n']:,} idle connections: RSS < 100 MiB", f"{i['rss_during'] / 1024:.1f} MiB ({i['opened']:,} open)",
            i["rss_during"] < 100 * 1024 and i["opened"] == i["n"])
    if "density" in extra and "error" not in extra["density"]:
        d = extra["density"]
        tgt(f"{d['sites']:,} sites idle: RSS < 200 MiB", f"{d['rss_idle_kib'] / 1024:.1f} MiB", d["rss_idle_kib"] < 200 * 1024)
        tgt("reload < 1 s", f"{d['reload_s'] * 1000:.0f} ms" if d["reload_s"] else "no line", bool(d["reload_s"]) and d["reload_s"] < 1)
        for k, lim, label in [("cold_python", 300, "Python"), ("cold_php", 100, "PHP")]:
            c = d[k]
            if c["ok"]:
                tgt(f"cold first byte {label} < {lim} ms", f"{c['ms']:.0f} ms", c["ms"] < lim)
            else:
                tgt(f"cold first byte {label} < {lim} ms", f"not served correctly (status {c['status']})", None if label == "PHP" else False)
    L.append("")
    if notes:
        L.append("## Notes\n")
        for n in notes:
            L.append(f"- {n}")
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="throughput,latency,idle,longpoll,density",
                    help="comma-separated parts to run")
    ap.add_argument("--systems", default=None,
                    help="comma-separated systems to measure (e.g. polyhost, for an A/B of two builds); default all")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated substrings of workload names (e.g. 'WSGI hello,PHP'); default all")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10, 2 with --quick)")
    args = ap.parse_args()
    args.systems = set(args.systems.split(",")) if args.systems else None
    args.workloads = args.workloads.split(",") if args.workloads else None
    reps, duration = args.reps, args.duration
    q = args.quick
    args.reps = reps or (1 if q else 3)
    args.duration = duration or (2 if q else 10)
    args.warmup = 1 if q else 3
    args.rate = 1000
    args.lat_duration = 3 if q else 15
    args.idle = 1000 if q else 10000
    args.poll_clients = 100 if q else 1000
    args.poll_seconds = 2 if q else 20
    args.poll_timeout = 15 if q else 60
    args.sites = 50 if q else 1000
    parts = set(args.only.split(","))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = dict(stamp=stamp, nproc=os.cpu_count(), kernel=platform.release(),
                cpu=sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").stdout.strip(),
                mem=sh("free -h | awk '/Mem:/{print $2\" RAM\"}'").stdout.strip(),
                os=sh(". /etc/os-release; echo $PRETTY_NAME").stdout.strip(),
                load_start=loadavg(), versions=versions())
    log(f"bench: load average at start: {meta['load_start']}")
    results, notes, extra = {}, [], {}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    busy = [port for port in [P_POLYHOST, P_DENSITY, P_APACHE_PHP, P_NGINX_PHP, P_NGINX_STATIC]
            + [WSGI_PORTS[s] + i for s in WSGI_PORTS for i in range(3)] if port_answers(port)]
    if busy:
        # Another run (or anything else) on our ports would split or steal the
        # load (granian binds with SO_REUSEPORT): refuse rather than mismeasure.
        sys.exit(f"bench: ports {busy} are already in use (another benchmark running?); not starting")
    try:
        make_tree()
        peers = args.systems is None or bool(args.systems - {"polyhost"})
        poly = start_systems(peers)
        ports = [P_POLYHOST] + ([P_APACHE_PHP, P_NGINX_PHP, P_NGINX_STATIC] + [
            WSGI_PORTS[s] + i for s in WSGI_PORTS for i in range(3)] if peers else [])
        for port in ports:
            if not wait_port(port, 30):
                notes.append(f"port {port} did not open in 30 s")
        for name, p in started:
            if p.poll() is not None:
                notes.append(f"{name} exited early with {p.returncode}; see {TREE}/logs/{name}.out")
        if "throughput" in parts:
            run_throughput(args, results, notes)
        if "latency" in parts:
            run_latency(args, results, notes)
        if "idle" in parts:
            run_idle(args, poly.pid, extra)
        if "longpoll" in parts:
            run_longpoll(args, extra)
        meta["polyhost_rss_end_kib"] = rss_kib(poly.pid)
        # Free the cores and ports for the density run.
        stop_all()
        if "density" in parts:
            run_density(args, extra)
    finally:
        stop_all()
    meta["load_end"] = loadavg()
    outdir = os.path.join(HERE, "results")
    os.makedirs(outdir, exist_ok=True)
    # The raw numbers first, so a bug in the report loses nothing.
    with open(os.path.join(outdir, f"{stamp}{'-quick' if q else ''}.json"), "w") as f:
        json.dump({"results": {f"{k[0]}|{k[1]}": v for k, v in results.items()}, "extra": extra, "meta": meta,
                   "args": vars(args)}, f, indent=1, default=str)
    text = report(args, results, notes, extra, meta)
    path = os.path.join(outdir, f"{stamp}{'-quick' if q else ''}.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print()
    print(text)
    print(f"\nbench: report written to {path}")


if __name__ == "__main__":
    main()
