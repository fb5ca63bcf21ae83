"""Memory growth of php-fpm children and the cost of recycling them, under
polyhost (issue 19). Started by run.sh, which installs and sets up the apps
and stops by PID whatever is left; this file starts polyhost itself (once
per phase) and stops it by PID.

Memory phase: one polyhost, one site per app, `mode = "static"`, N
children, `max_requests = 0`; a closed-loop client (one keep-alive
connection per child) cycles the app's pages; each child counts its own
requests (one byte per request into COUNT_DIR/<pid>), and at each
checkpoint (every child has served at least C requests) the children's
/proc/PID/smaps_rollup is read.

Throughput phase, per app: one polyhost with four sites that differ only in
`max_requests`; wrk runs them interleaved, REPS rounds in a shuffled order,
and the report gives medians and, per round, the ratio to `max_requests = 0`.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
T = os.environ.get("PHPMEM_TREE", "")  # run.sh sets these; --report-from needs none
BIN = os.environ.get("PHPMEM_BIN", "")
USERS = os.environ.get("PHPMEM_USERS", "").split(",")
PIDFILE = os.environ.get("PHPMEM_PIDFILE", "")
PORT = int(os.environ.get("PHPMEM_PORT", "18419"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# Site names are short: a pool's socket path (state dir, site, socket name)
# must fit the 108 bytes of a Unix socket address.
APPS = {
    "wordpress": dict(
        short="wp",
        root=f"{T}/wp", basedir=[f"{T}/wp"], front="index.php",
        paths=["/", "/post-1/", "/post-17/", "/post-33/", "/page-2/", "/category/news/",
               "/tag/tag3/", "/?s=lorem", "/feed/", "/wp-json/wp/v2/posts", "/2023/12/"]),
    "laravel-like": dict(
        short="lar",
        root=f"{T}/laravel/public", basedir=[f"{T}/laravel"], front="index.php",
        paths=["/", "/posts/5", "/users/3", "/search?q=Post", "/api/posts?page=2", "/section7/3",
               "/posts/12"]),
    "hello": dict(short="hello", root=f"{T}/hello", basedir=[f"{T}/hello"], front=None, paths=["/index.php"]),
}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def toml_list(xs):
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


def polyhost_tree(name, sites):
    """Writes a polyhost configuration with `sites` [(site, app, user,
    max_requests, children, env)] and returns its directory."""
    base = f"{T}/{name}"
    write(f"{base}/polyhost.toml", f"""listen = ["127.0.0.1:{PORT}"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
log_level = "warn"
shutdown_timeout = "5s"

[admin]
socket = "state/admin.sock"
""")
    for site, app, user, mr, children, env in sites:
        a = APPS[app]
        lines = [f'hosts = ["{site}.bench"]', f'root = "{a["root"]}"', f'user = "{user}"']
        if env:
            lines.append("env = { " + ", ".join(f'{k} = "{v}"' for k, v in env.items()) + " }")
        lines += ["", "[php]", 'mode = "static"', f"max_children = {children}", f"max_requests = {mr}",
                  f"open_basedir = {toml_list(a['basedir'] + list(env.values()))}"]
        if a["front"]:
            lines.append(f'front_controller = "{a["front"]}"')
        write(f"{base}/vhosts/{site}.toml", "\n".join(lines) + "\n")
    return base


def start_polyhost(base):
    out = open(f"{base}/polyhost.out", "ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYHOST_", "PHPMEM_"))}
    p = subprocess.Popen([BIN, "serve", "--config", f"{base}/polyhost.toml"], cwd=base, stdout=out,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    with open(PIDFILE, "a") as f:
        f.write(f"{p.pid}\n")
    return p


def stop_polyhost(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def get(host, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    c.request("GET", path, headers={"Host": host})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, body


def wait_ready(p, host, path, timeout=60):
    """Polls until `host` answers `path` with 200 (bounded)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"polyhost exited ({p.returncode}); see its log")
        try:
            status, body = get(host, path)
            if status == 200:
                return
            last = f"status {status}: {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise SystemExit(f"{host}{path} not ready after {timeout}s: {last}")


def pool_children(site):
    """PIDs of php-fpm children of the pool named `site` (their process title)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
            except OSError:
                continue
            if cmd == f"php-fpm: pool {site}":
                pids.append(int(d))
    return sorted(pids)


def smaps(pid):
    """Rss, Pss, private (clean + dirty) and anonymous memory of `pid` in KiB."""
    v = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                v[m.group(1)] = int(m.group(2))
    return {"rss": v["Rss"], "pss": v["Pss"], "private": v["Private_Clean"] + v["Private_Dirty"],
            "anon": v["Anonymous"]}


def counts(d):
    out = {}
    for name in os.listdir(d):
        if name.isdigit():
            out[int(name)] = os.path.getsize(os.path.join(d, name))
    return out


def drive(host, paths, conns, total, errors):
    """Sends `total` requests over `conns` keep-alive connections, closed loop."""
    lock = threading.Lock()
    left = [total]

    def worker(k):
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        i = k
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            i += 1
            try:
                status, _ = get(host, paths[i % len(paths)], c)
                if status != 200:
                    errors.append(status)
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        c.close()

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def memory_phase(args, apps):
    sites = []
    for i, app in enumerate(apps):
        cd = f"{T}/counts/{app}"
        os.makedirs(cd, exist_ok=True)
        subprocess.run(["chown", USERS[i], cd], check=True)
        sites.append((f"mem-{APPS[app]['short']}", app, USERS[i], 0, args.mem_children, {"PHPMEM_COUNT_DIR": cd}))
    base = polyhost_tree("mem", sites)
    p = start_polyhost(base)
    results = {}
    try:
        for site, app, *_ in sites:
            deadline = time.monotonic() + 60
            while len(pool_children(site)) < args.mem_children:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise SystemExit(f"{site}: php-fpm children did not start; see {base}/log")
                time.sleep(0.1)
        for site, app, *_ in sites:
            cd = f"{T}/counts/{app}"
            host = f"{site}.bench"
            paths = APPS[app]["paths"]
            rows = []
            errors = []
            t0 = time.monotonic()
            for c in args.checkpoints[app]:
                for _ in range(100):
                    have = counts(cd)
                    kids = pool_children(site)
                    low = min(have.get(k, 0) for k in kids)
                    if low >= c:
                        break
                    before = sum(have.values())
                    drive(host, paths, args.mem_children, args.mem_children * (c - low), errors)
                    if sum(counts(cd).values()) == before:
                        raise SystemExit(f"{app}: the children count no requests in {cd}; see {base}/log")
                kids = pool_children(site)
                have = counts(cd)
                snap = [dict(pid=k, requests=have.get(k, 0), **smaps(k)) for k in kids]
                rows.append({"checkpoint": c, "children": snap})
                log(f"phpmem: {app} after {c} requests/child ({time.monotonic() - t0:.0f} s): " + ", ".join(
                    f"pid {s['pid']} n={s['requests']} rss={s['rss'] / 1024:.1f}M pss={s['pss'] / 1024:.1f}M "
                    f"private={s['private'] / 1024:.1f}M anon={s['anon'] / 1024:.1f}M" for s in snap))
            if errors:
                log(f"phpmem: {app}: {len(errors)} failed requests, e.g. {errors[:3]}")
            results[app] = {"rows": rows, "errors": len(errors), "seconds": time.monotonic() - t0}
    finally:
        stop_polyhost(p)
    return results


def wrk(host, paths_file, conns, duration):
    cmd = ["wrk", "-t", "2", "-c", str(conns), "-d", f"{duration}s", "--timeout", "10s",
           "-s", f"{HERE}/paths.lua", "-H", f"Host: {host}", f"http://127.0.0.1:{PORT}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PHPMEM_PATHS": paths_file}).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        return None
    j = json.loads(m.group(1))
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    j["errors"] = (int(m2.group(1)) if m2 else 0) + j["connect"] + j["read"] + j["write"] + j["timeout"]
    j["rps"] = j["requests"] / (j["duration_us"] / 1e6)
    return j


def throughput_phase(args, app):
    short = APPS[app]["short"]
    sites = [(f"tp-{short}-{mr}", app, USERS[i], mr, args.children, {}) for i, mr in enumerate(args.max_requests)]
    base = polyhost_tree(f"tp-{short}", sites)
    paths_file = f"{base}/paths.txt"
    write(paths_file, "\n".join(APPS[app]["paths"]) + "\n")
    p = start_polyhost(base)
    runs = {mr: [] for mr in args.max_requests}
    try:
        for site, *_ in sites:
            wait_ready(p, f"{site}.bench", APPS[app]["paths"][0])
        for site, *_ in sites:
            wrk(f"{site}.bench", paths_file, args.conns, args.warmup)
        rng = random.Random(19)
        for rep in range(args.reps):
            order = list(zip(sites, args.max_requests))
            rng.shuffle(order)
            for (site, *_), mr in order:
                r = wrk(f"{site}.bench", paths_file, args.conns, args.duration)
                runs[mr].append(r)
                log(f"phpmem: {app} max_requests={mr} round {rep + 1}: "
                    + (f"{r['rps']:.0f} req/s p99 {r['p99'] / 1000:.1f} ms errors {r['errors']}" if r else "wrk failed"))
    finally:
        stop_polyhost(p)
    return runs


def mib(kib):
    return f"{kib / 1024:.1f}"


def report(args, mem, tp):
    L = []
    load = open("/proc/loadavg").read().split()[:3]
    L.append(f"# php-fpm memory and recycling under polyhost\n")
    L.append(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at the end {' '.join(load)}, "
             f"{os.cpu_count()} CPUs, php-fpm 8.2 with opcache, polyhost {BIN}.\n")
    if mem:
        L.append(f"## Memory per child (MiB; `mode = \"static\"`, {args.mem_children} children, "
                 f"`max_requests = 0`; median over the children, max in brackets)\n")
        L.append("| app | requests/child | RSS | PSS | private | anonymous | anonymous: growth since 100 |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for app, r in mem.items():
            base100 = None
            for row in r["rows"]:
                kids = row["children"]
                med = {k: statistics.median(s[k] for s in kids) for k in ("rss", "pss", "private", "anon")}
                mx = {k: max(s[k] for s in kids) for k in ("rss", "pss", "private", "anon")}
                n = statistics.median(s["requests"] for s in kids)
                if row["checkpoint"] == 100:
                    base100 = med["anon"]
                growth = f"{(med['anon'] - base100) / 1024:+.2f}" if base100 is not None and row["checkpoint"] > 100 else ""
                L.append(f"| {app} | {row['checkpoint']:,} (served {n:,.0f}) | {mib(med['rss'])} ({mib(mx['rss'])}) "
                         f"| {mib(med['pss'])} ({mib(mx['pss'])}) | {mib(med['private'])} ({mib(mx['private'])}) "
                         f"| {mib(med['anon'])} ({mib(mx['anon'])}) | {growth} |")
            L.append(f"| {app} | failed requests: {r['errors']}; {r['seconds']:.0f} s | | | | | |")
        L.append("")
    if tp:
        L.append(f"## Throughput by `max_requests` (`mode = \"static\"`, {args.children} children, wrk -t2 "
                 f"-c{args.conns}, {args.duration} s × {args.reps} rounds, interleaved)\n")
        L.append("| app | max_requests | req/s median | min–max | p99 ms median | errors | ratio to 0 (median of rounds) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for app, runs in tp.items():
            zero = runs.get(0)
            for mr, rs in runs.items():
                ok = [r for r in rs if r]
                if not ok:
                    L.append(f"| {app} | {mr} | failed | | | | |")
                    continue
                rps = [r["rps"] for r in ok]
                ratio = ""
                if zero and mr != 0:
                    pairs = [a["rps"] / b["rps"] for a, b in zip(rs, zero) if a and b]
                    ratio = f"{statistics.median(pairs):.3f}" if pairs else ""
                L.append(f"| {app} | {mr} | {statistics.median(rps):,.0f} | {min(rps):,.0f}–{max(rps):,.0f} "
                         f"| {statistics.median(r['p99'] for r in ok) / 1000:.1f} | {sum(r['errors'] for r in ok)} | {ratio} |")
        L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", default="wordpress,laravel-like,hello")
    ap.add_argument("--only", default="memory,throughput")
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--mem-children", type=int, default=2)
    ap.add_argument("--checkpoints", default="0,100,500,1000,5000,10000")
    ap.add_argument("--checkpoints-for", action="append", default=[], metavar="APP=LIST",
                    help="checkpoints of one app, e.g. wordpress=0,100,500,1000,2000")
    ap.add_argument("--max-requests", default="0,1,500,1000,10000")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--report-from", metavar="JSON", help="print the report of an earlier run's results/*.json")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            data = json.load(f)
        vars(args).update(data.get("args", {}))
        tp = {a: {int(k): v for k, v in r.items()} for a, r in data["throughput"].items()}
        print(report(args, data["memory"], tp))
        return
    default = [int(x) for x in args.checkpoints.split(",")]
    args.checkpoints = {app: default for app in APPS}
    for spec in args.checkpoints_for:
        app, _, xs = spec.partition("=")
        args.checkpoints[app] = [int(x) for x in xs.split(",")]
    args.max_requests = [int(x) for x in args.max_requests.split(",")]
    if len(args.max_requests) > len(USERS):
        raise SystemExit(f"at most {len(USERS)} max_requests values (one site user each)")
    apps = args.apps.split(",")
    only = args.only.split(",")
    mem = memory_phase(args, apps) if "memory" in only else {}
    tp = {}
    for app in apps if "throughput" in only else []:
        try:
            tp[app] = throughput_phase(args, app)
        except SystemExit as e:  # report what was measured, and why the rest was not
            log(f"phpmem: {app}: throughput not measured: {e}")
            tp[app] = {mr: [None] for mr in args.max_requests}
    text = report(args, mem, tp)
    os.makedirs(f"{HERE}/results", exist_ok=True)
    name = f"{HERE}/results/{time.strftime('%Y%m%d-%H%M%S')}"
    with open(f"{name}.md", "w") as f:
        f.write(text + "\n")
    with open(f"{name}.json", "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k in ("children", "mem_children", "conns", "duration", "reps")},
                   "memory": mem, "throughput": {a: {str(k): v for k, v in r.items()} for a, r in tp.items()}}, f)
    print(text)
    log(f"phpmem: report in {name}.md (raw numbers in {name}.json)")


if __name__ == "__main__":
    main()
