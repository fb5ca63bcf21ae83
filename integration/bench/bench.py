#!/usr/bin/env python3
"""polyhost side by side with its peers. Run through `run.sh`, which installs
what is missing and builds; this script sets up the temp tree, starts every
system (systems.py), runs the workloads interleaved at both settings
(*defaults* and *tuned-equal*) and every concurrency, stops everything it
started (by PID) and writes the report (report.py). Stdlib only.

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
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2load  # noqa: E402
import loadgen  # noqa: E402
import wire  # noqa: E402
import wsload  # noqa: E402
from report import from_json, report  # noqa: E402
from probes import (  # noqa: E402
    cpu_snapshot, descendants, first_byte_ms, http_get, loadavg, port_answers, rss_kib, wait_port,
)
from systems import (  # noqa: E402
    ALL_PORTS, ASGI_PORTS, BIN, HERE, P_DENSITY, P_POLYHOST, PHP_RECYCLE, SETTINGS, TREE, WSGI_PORTS, density_sites,
    make_tree, peer_ports, polyhost_router, proc, sh, site_user, start, start_systems, started, stop, stop_all,
    system_pids, targets, versions,
)

log = print


# ---------------------------------------------------------------- workloads

def check_hello(body):
    return body == b"Hello, World!"


BOTH = tuple(SETTINGS)
WORKLOADS = [
    # name, kind, arg, checker, settings (see systems.targets)
    ("WSGI hello 13 B", "wsgi", 0, check_hello, BOTH),
    ("WSGI 64 KiB", "wsgi", 1, lambda b: len(b) == 65536, BOTH),
    ("WSGI sleep 50 ms", "wsgi", 2, lambda b: b == b"slept", BOTH),
    ("PHP hello", "php", "/hello.php", check_hello, BOTH),
    # Recycling: php-fpm replaces a child every 500 requests on both sides.
    (f"PHP hello, max_requests {PHP_RECYCLE}", "php-recycle", "/hello.php", check_hello, ("tuned",)),
    ("PHP phpinfo()", "php", "/phpinfo.php", lambda b: b"PHP Version" in b and len(b) > 20000, BOTH),
    ("static 13 B", "static", "/13b.txt", check_hello, BOTH),
    # The same file from a PHP site's root (polyhost's PHP site; nginx's PHP server).
    ("static 13 B, PHP site's root", "php-static", "/13b.txt", check_hello, BOTH),
    ("static 1 MiB", "static", "/1mib.bin", lambda b: len(b) == 1 << 20, BOTH),
    ("ASGI hello 13 B", "asgi", "/", check_hello, BOTH),
    # Issue 22: the same Node app (plain http module) behind polyhost [app] and nginx proxy_pass.
    ("Node hello 13 B", "node", "/", check_hello, BOTH),
]


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


def selected(args, name):
    return not args.workloads or any(w.lower() in name.lower() for w in args.workloads)


# Workloads also measured on the wire (`wire`: the servers' latency without
# wrk's), where a target is a latency: only these, as the capture costs CPU.
WIRE_KINDS = ("php-recycle",)
# Workloads whose latency target is also measured with a second, lighter
# client (`h2load`), right after wrk: a co-located client's latency includes
# its own wait for a CPU, which wrk's heavier loop pays more beside some
# servers than beside others.
SECOND_CLIENT_KINDS = ("php-recycle",)


def measure_wrk(kind, target, c, duration):
    """wrk's result, and the latencies on the wire (None unless `kind` is in
    WIRE_KINDS and tcpdump is there)."""
    if kind in WIRE_KINDS and wire.available():
        return wire.around(target[0], lambda: wrk(*target, c, duration))
    return wrk(*target, c, duration), None


def run_throughput(args, results, notes, loads):
    """Every workload at every setting and concurrency; interleaved: rep →
    concurrency → workload → setting → system."""
    plan = []  # (name, kind, arg, setting, {system: target})
    for name, kind, arg, check, settings in WORKLOADS:
        if not selected(args, name):
            continue
        for setting in settings:
            if setting not in args.settings:
                continue
            t = chosen(args, targets(kind, arg, setting))
            bad = verify(t, check)
            for s, why in bad.items():
                notes.append(f"{name} ({setting}): {s} not measured ({why})")
                for c in args.concurrency:
                    results[(name, setting, c, s)] = {"pending": why}
            live = {s: v for s, v in t.items() if s not in bad}
            log(f"bench: {name} ({setting}): warming up {', '.join(live)}")
            for v in live.values():
                wrk(*v, max(args.concurrency), args.warmup)
            plan.append((name, kind, arg, setting, live))
    for rep in range(args.reps):
        for c in args.concurrency:
            for name, kind, arg, setting, live in plan:
                for s, v in live.items():
                    before = cpu_snapshot(system_pids(s, kind, arg, setting))
                    loads.append(float(loadavg().split()[0]))
                    r, lat = measure_wrk(kind, v, c, args.duration)
                    # Enumerated anew: children started during the run count too.
                    after = cpu_snapshot(system_pids(s, kind, arg, setting))
                    if r and r["requests"]:
                        r["cpu_us"] = {k: (after[k] - before[k]) * 1e6 / r["requests"] for k in after if k != "_ctxsw"}
                        r["ctxsw"] = (after["_ctxsw"] - before["_ctxsw"]) / r["requests"]
                    if r and lat:
                        r["wire_p50"], r["wire_p99"] = wire.percentile_ms(lat, 50), wire.percentile_ms(lat, 99)
                    if r and kind in SECOND_CLIENT_KINDS and h2load.available():
                        h = h2load.run(*v, c, args.duration)
                        if h:
                            r["h2_rps"], r["h2_p50"], r["h2_p99"] = h["rps"], h["p50"] / 1000, h["p99"] / 1000
                            r["h2_errors"] = h["errors"]
                    log(f"bench: {name} ({setting}) c={c} rep {rep + 1} {s}: "
                        + (f"{r['rps']:.0f} req/s p50 {r['p50'] / 1000:.2f} ms p99 {r['p99'] / 1000:.2f} ms "
                           f"errors {r['errors']}" if r else "wrk failed")
                        + (f" (on the wire: p99 {r['wire_p99']:.2f} ms)" if r and lat else "")
                        + (f" (h2load: {r['h2_rps']:.0f} req/s, p99 {r['h2_p99']:.2f} ms, errors {r['h2_errors']})"
                           if r and "h2_p99" in r else ""))
                    results.setdefault((name, setting, c, s), {"runs": []}).setdefault("runs", []).append(r)


def run_latency(args, results, notes):
    for name, kind, arg, check in [("latency WSGI hello @%d/s", "wsgi", 0, check_hello),
                                   ("latency PHP hello @%d/s", "php", "/hello.php", check_hello)]:
        name = name % args.rate
        if not selected(args, name):
            continue
        plan = []
        for setting in args.settings:
            t = chosen(args, targets(kind, arg, setting))
            bad = verify(t, check)
            for s, why in bad.items():
                notes.append(f"{name} ({setting}): {s} not measured ({why})")
                results[(name, setting, s)] = {"pending": why}
            plan.append((setting, {s: v for s, v in t.items() if s not in bad}))
        for rep in range(args.reps):
            for setting, live in plan:
                for s, (port, host, path) in live.items():
                    r = asyncio.run(loadgen.paced(port, host, path, args.rate, args.lat_duration, conns=50))
                    log(f"bench: {name} ({setting}) rep {rep + 1} {s}: achieved {r['achieved']:.0f}/s "
                        f"p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms errors {r['errors'] + r['non2xx']}")
                    results.setdefault((name, setting, s), {"paced": []})["paced"].append(r)


def run_idle(args, polyhost_pid, extra):
    """10,000 idle keep-alive connections: the RSS of polyhost's processes
    (the supervisor and its `polyhost router` child, which holds them)."""
    n = args.idle
    http_get(P_POLYHOST, "hello.bench", "/")  # the probe's site is running (not a cold start)
    router = polyhost_router()
    own = [polyhost_pid] + ([router] if router else [])
    before = sum(rss_kib(p) for p in own)
    hold = 35 if not args.quick else 0

    def measure():
        return sum(rss_kib(p) for p in own)

    opened, failed, during, status, probe_ms, still = asyncio.run(loadgen.idle_connections(
        P_POLYHOST, "static.bench", "/13b.txt", n, measure, "hello.bench", "/", hold=hold))
    time.sleep(1)
    extra["idle"] = dict(n=n, opened=opened, failed=failed, rss_before=before, rss_during=during,
                         probe_status=status, probe_ms=probe_ms, still_open=still, hold=hold,
                         rss_after=measure(), processes=len(own))
    log(f"bench: {n} idle connections: opened {opened} (failed {failed}); polyhost RSS (supervisor + router) "
        f"{before / 1024:.1f} → {during / 1024:.1f} MiB; another client: {status} in {probe_ms:.1f} ms; "
        f"still open after {hold}s more: {still}")


def run_longpoll(args, extra):
    """WSGI (threads: the expected outcome is 60 answers and 940 × 503) and
    ASGI (an event loop per process: every poll answered at ~20 s)."""
    clients, secs = (args.poll_clients, args.poll_seconds)
    wsgi = {s: (WSGI_PORTS[s] + 2, "localhost", "/") for s in ["granian", "apache-wsgi", "gunicorn"]}
    systems = {k: v for k, v in chosen(args, {"polyhost": (P_POLYHOST, "sleep.bench", "/"), **wsgi}).items()}
    asgi = chosen(args, {"polyhost": (P_POLYHOST, "asgi.bench", "/poll"),
                         "uvicorn": (ASGI_PORTS["uvicorn"], "localhost", "/poll"),
                         "granian": (ASGI_PORTS["granian-asgi"], "localhost", "/poll")})
    systems.update({f"{s} (ASGI)": v for s, v in asgi.items()})
    out = {}
    for s, (port, host, path) in systems.items():
        # Warm: every process and thread started (no scale-from-zero in the numbers).
        wrk(port, host, "/", 64, 2)
        time.sleep(1)
        t = time.time()
        counts, spans = asyncio.run(loadgen.long_polls(port, host, f"{path}?s={secs}", clients,
                                                       timeout=args.poll_timeout))
        out[s] = dict(counts=counts, spans=spans, wall=time.time() - t)
        log(f"bench: {clients} long polls of {secs}s against {s}: "
            + ", ".join(f"{k}: {v} ({spans[k][0]:.1f}–{spans[k][1]:.1f}s)" for k, v in sorted(counts.items())))
        # Let the server drain what is still queued before the next one.
        time.sleep(2)
    extra["longpoll"] = dict(clients=clients, seconds=secs, timeout=args.poll_timeout, results=out)


def run_websockets(args, extra):
    """WebSocket echo (64 connections, 64-byte messages, round trips/s;
    tuned-equal, interleaved reps) and idle WebSockets on polyhost's ASGI
    site (router + that site's workers' memory, a fresh client's time)."""
    systems = chosen(args, {"polyhost": (P_POLYHOST, "asgi.bench"),
                            "uvicorn": (ASGI_PORTS["uvicorn"], "localhost"),
                            "granian": (ASGI_PORTS["granian-asgi"], "localhost")})
    live = {}
    for s, (port, host) in systems.items():
        try:
            wsload.probe_ms(port, host, "/ws")
            live[s] = (port, host)
        except Exception as e:  # noqa: BLE001 - reported, the others still measured
            extra.setdefault("ws_notes", []).append(f"WebSocket echo: {s} not measured ({type(e).__name__}: {e})")
    echo = {s: [] for s in live}
    for rep in range(args.reps):
        for s, (port, host) in live.items():
            r = wsload.echo(port, host, "/ws", conns=64, seconds=args.duration)
            log(f"bench: WebSocket echo rep {rep + 1} {s}: {r['rtps']:.0f} round trips/s, errors {r['errors']}")
            echo[s].append(r)
    extra["ws_echo"] = echo
    if "polyhost" not in live:
        return
    # Each idle WebSocket holds two descriptors in the router (client, site
    # process): the count fits the router's limit (the hard limit may be low).
    n = min(args.idle, max(0, (nofile_hard() - 2000) // 2))
    uid = pwd.getpwnam(site_user("asgi")).pw_uid
    supervisor = proc("polyhost")
    # The `polyhost router` child holds the WebSockets (the supervisor's
    # RSS is reported beside, not in the target's sum).
    router = polyhost_router() or supervisor

    def measure():
        workers = [p for p in descendants(supervisor) if os.stat(f"/proc/{p}").st_uid == uid]
        return dict(router=rss_kib(router), workers=sum(rss_kib(p) for p in workers), nworkers=len(workers),
                    pss=sum(pss_kib(p) for p in [router] + workers), supervisor=rss_kib(supervisor))
    before = measure()
    opened, failed, during, probe = asyncio.run(wsload.idle(P_POLYHOST, "asgi.bench", "/ws", n, measure))
    extra["ws_idle"] = dict(n=n, wanted=args.idle, opened=opened, failed=failed, before=before, during=during,
                            probe=probe)
    log(f"bench: {n} idle WebSockets: opened {opened} (failed {failed}); router {during['router'] / 1024:.1f} MiB, "
        f"workers {during['workers'] / 1024:.1f} MiB; fresh client: {probe}")


def pss_kib(pid):
    """Proportional set size: the pages a process shares (libpython and libc
    in each worker) split between the processes mapping them, so the two
    workers count theirs once (RSS counts them in each)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def nofile_hard():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def polyhost_processes(root):
    """polyhost's own processes: `root` and every descendant still running
    polyhost's binary (a supervisor and its `polyhost router` child, when
    there is one), never a site process (php-fpm, polyhost-python)."""
    exe = os.path.realpath(f"{BIN}/polyhost")
    own = []
    for pid in [root] + descendants(root):
        try:
            if os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)") == exe:
                own.append(pid)
        except OSError:
            pass
    return own


def by_process(pids):
    """Each of polyhost's own processes: its role (`router` for the
    `polyhost router` child, else `supervisor`), RSS in KiB, descriptors."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        role = "router" if len(argv) > 1 and argv[1] == b"router" else "supervisor"
        out.append(dict(role=role, rss_kib=rss_kib(pid), fds=open_fds([pid])))
    return out


def open_fds(pids):
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def run_density(args, extra):
    n = args.sites
    density_sites(n)
    sh(f"chmod -R a+rX {TREE}/density")
    errfile = os.path.join(TREE, "logs", "polyhost-density.out")
    load = sh("cut -d' ' -f1-3 /proc/loadavg").stdout.strip()
    t = time.perf_counter()
    p = start("polyhost-density", [f"{BIN}/polyhost", "serve", "--config", os.path.join(TREE, "density/polyhost.toml")],
              cwd=os.path.join(TREE, "density"))
    ok = wait_port(P_DENSITY, 300)
    startup = time.perf_counter() - t
    d = dict(sites=n, startup_s=startup if ok else None, loadavg_before=load)
    if not ok:
        d["error"] = "polyhost with the generated sites did not listen within 300 s"
        extra["density"] = d
        return
    # Start to first answer: any HTTP answer (421 for a host no site has).
    try:
        first_byte_ms(P_DENSITY, "no-such-site.bench", "/")
        d["first_answer_s"] = time.perf_counter() - t
    except OSError as e:
        d["first_answer_s"] = None
        d["first_answer_error"] = str(e)
    time.sleep(3)
    kids = [k for k in descendants(p.pid) if k not in polyhost_processes(p.pid)]
    own = polyhost_processes(p.pid)
    d["rss_idle_kib"] = sum(rss_kib(k) for k in own)
    d["polyhost_processes"] = len(own)
    d["fds_idle"] = open_fds(own)
    d["idle_by_process"] = by_process(own)
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
    own = polyhost_processes(p.pid)
    d["rss_after_kib"] = sum(rss_kib(k) for k in own)
    d["fds_after"] = open_fds(own)
    d["after_by_process"] = by_process(own)
    d["loadavg_after"] = sh("cut -d' ' -f1-3 /proc/loadavg").stdout.strip()
    extra["density"] = d
    log(f"bench: density: {json.dumps(d)}")
    stop("polyhost-density", p, grace=30)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="validation only: 1 rep, 2 s runs, concurrency 64 unless --concurrency is given")
    ap.add_argument("--only", default="throughput,latency,idle,websocket,longpoll,density",
                    help="comma-separated parts to run")
    ap.add_argument("--systems", default=None,
                    help="comma-separated systems to measure (e.g. polyhost, for an A/B of two builds); default all")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated substrings of workload names (e.g. 'WSGI hello,PHP'); default all")
    ap.add_argument("--settings", default="defaults,tuned",
                    help="comma-separated settings: defaults (each system as installed), tuned (equal numbers)")
    ap.add_argument("--concurrency", default=None,
                    help="comma-separated wrk connection counts (default 16,64,256; 64 with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10, 2 with --quick)")
    ap.add_argument("--sites", type=int, default=None,
                    help="density: how many sites (default 1,000, 50 with --quick; at most 10,000)")
    ap.add_argument("--report-from", default=None, metavar="JSON",
                    help="print the report of a saved run (results/<stamp>.json) again; runs nothing")
    args = ap.parse_args()
    if args.report_from:
        print(from_json(args.report_from, WORKLOADS))
        return
    if not TREE:
        sys.exit("bench: run through integration/bench/run.sh (it sets BENCH_TREE and more)")
    args.systems = set(args.systems.split(",")) if args.systems else None
    args.workloads = args.workloads.split(",") if args.workloads else None
    args.settings = [s for s in SETTINGS if s in args.settings.split(",")]
    if not args.settings:
        sys.exit(f"bench: --settings: choose from {','.join(SETTINGS)}")
    q = args.quick
    args.concurrency = [int(c) for c in (args.concurrency or ("64" if q else "16,64,256")).split(",")]
    args.reps = args.reps or (1 if q else 3)
    args.duration = args.duration or (2 if q else 10)
    args.warmup = 1 if q else 3
    args.rate = 1000
    args.lat_duration = 3 if q else 15
    args.idle = 1000 if q else 10000
    args.poll_clients = 100 if q else 1000
    args.poll_seconds = 2 if q else 20
    args.poll_timeout = 15 if q else 60
    args.sites = args.sites or (50 if q else 1000)
    parts = set(args.only.split(","))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = dict(stamp=stamp, nproc=os.cpu_count(), kernel=platform.release(),
                cpu=sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").stdout.strip(),
                mem=sh("free -h | awk '/Mem:/{print $2\" RAM\"}'").stdout.strip(),
                os=sh(". /etc/os-release; echo $PRETTY_NAME").stdout.strip(),
                load_start=loadavg(), versions=versions())
    log(f"bench: load average at start: {meta['load_start']}")
    results, notes, extra, loads = {}, [], {}, []

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    busy = [port for port in ALL_PORTS if port_answers(port)]
    if busy:
        # Another run (or anything else) on our ports would split or steal the
        # load (granian binds with SO_REUSEPORT): refuse rather than mismeasure.
        sys.exit(f"bench: ports {busy} are already in use (another benchmark running?); not starting")
    try:
        make_tree()
        peers = args.systems is None or bool(args.systems - {"polyhost"})
        poly = start_systems(peers)
        ports = [P_POLYHOST] + (peer_ports() if peers else [])
        for port in ports:
            if port != P_DENSITY and not wait_port(port, 30):
                notes.append(f"port {port} did not open in 30 s")
        for name, p in started:
            if p.poll() is not None:
                notes.append(f"{name} exited early with {p.returncode}; see {TREE}/logs/{name}.out")
        if "throughput" in parts:
            run_throughput(args, results, notes, loads)
        if "latency" in parts:
            run_latency(args, results, notes)
        if "idle" in parts:
            run_idle(args, poly.pid, extra)
        if "websocket" in parts:
            run_websockets(args, extra)
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
    if loads:
        meta["load_runs"] = [min(loads), statistics.median(loads), max(loads)]
    outdir = os.path.join(HERE, "results")
    os.makedirs(outdir, exist_ok=True)
    # The raw numbers first, so a bug in the report loses nothing.
    with open(os.path.join(outdir, f"{stamp}{'-quick' if q else ''}.json"), "w") as f:
        json.dump({"results": {"|".join(map(str, k)): v for k, v in results.items()}, "extra": extra, "meta": meta,
                   "notes": notes, "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}},
                  f, indent=1, default=str)
    text = report(args, results, notes, extra, meta, WORKLOADS)
    path = os.path.join(outdir, f"{stamp}{'-quick' if q else ''}.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print()
    print(text)
    print(f"\nbench: report written to {path}")


if __name__ == "__main__":
    main()
