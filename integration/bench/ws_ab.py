"""A/B of polyhost builds on the WebSocket echo (CPU per round trip of the
router and the site's workers, from /proc) and idle WebSockets (RSS), each
build its own `polyhost serve` on its own port, rounds interleaved (the
order reversed every other round), medians. Root; stdlib only.

usage: ws_ab.py TAG=BINDIR[,VENV] TAG=BINDIR[,VENV]... ROUNDS SECONDS IDLE_N
  e.g. ws_ab.py A=/var/lib/polyhost-wsab/bin-A B=/var/lib/polyhost-wsab/bin-B 8 4 10000
BINDIR holds `polyhost` and `polyhost-python` (not under /tmp: a site's
sandbox keeps the host's /tmp); VENV, if given, is the ASGI site's `home`
(uvloop when it has it). Each build's site runs as `phb-wsab-<tag>`, with
cgroups off. IDLE_N > 8,000 raises RLIMIT_NOFILE where root may (the
router, running as its own user, keeps its hard limit: about 24 of 10,000
are then refused)."""
import asyncio, os, pwd, resource, shutil, signal, subprocess, sys, time, statistics, json
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import wsload

try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (40000, 40000))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
HZ = os.sysconf("SC_CLK_TCK")
APP = os.path.join(HERE, "apps", "asgi_app.py")
# each build: TAG=BINDIR[,VENV]
builds, homes = {}, {}
for a in [x for x in sys.argv[1:] if "=" in x]:
    t, v = a.split("=", 1)
    d, _, h = v.partition(",")
    builds[t], homes[t] = d, h
nums = [x for x in sys.argv[1:] if "=" not in x]
ROUNDS, SECS, IDLE = int(nums[0]), float(nums[1]), int(nums[2])
PORTS = {t: 19380 + i for i, t in enumerate(builds)}
procs = {}

def user(name):
    try: pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    return name

def setup(tag):
    base = f"/var/lib/polyhost-wsab/{tag}"
    shutil.rmtree(base, ignore_errors=True)
    for d in ["vhosts", "state", "log", "apps"]:
        os.makedirs(f"{base}/{d}")
    shutil.copy(APP, f"{base}/apps/asgi_app.py")
    os.chmod("/var/lib/polyhost-wsab", 0o755); os.chmod(base, 0o755); os.chmod(f"{base}/apps", 0o755)
    os.chmod(f"{base}/apps/asgi_app.py", 0o644)
    open(f"{base}/polyhost.toml", "w").write(f'''listen = ["127.0.0.1:{PORTS[tag]}"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
cgroups = "off"
shutdown_timeout = "5s"
[admin]
socket = "state/admin.sock"
[limits]
max_connections = 15000
max_connections_per_ip = 15000
''')
    open(f"{base}/vhosts/asgi.toml", "w").write(f'''hosts = ["asgi.bench"]
user = "{user('phb-wsab-' + tag.lower())}"
[python]
interface = "asgi"
app = "asgi_app"
path = ["{base}/apps"]
{('home = "' + homes[tag] + '"') if homes.get(tag) else ""}
processes = 2
max_concurrency = 10000
queue_timeout = "25s"
request_timeout = "60s"
''')
    out = open(f"{base}/out.log", "ab")
    p = subprocess.Popen([f"{builds[tag]}/polyhost", "serve", "--config", f"{base}/polyhost.toml"], cwd=base,
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    procs[tag] = p

def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open(f"/proc/{d}/stat").read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid: out.append(int(d))
            except OSError: pass
    return out

def tree(pid):
    res, todo = [], [pid]
    while todo:
        c = children(todo.pop()); res += c; todo += c
    return res

def roles(tag):
    pid = procs[tag].pid
    uid = pwd.getpwnam("phb-wsab-" + tag.lower()).pw_uid
    router, workers = None, []
    for p in tree(pid):
        try:
            cmd = open(f"/proc/{p}/cmdline").read().split("\0")
            if "router" in cmd: router = p
            elif os.stat(f"/proc/{p}").st_uid == uid: workers.append(p)
        except OSError: pass
    return router, workers

def cpu(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ

def ucpu(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / HZ

def rss(p):
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])

def pss(p):
    """Proportional set size (KiB): shared pages (libpython, libc...) split
    between the processes that map them, so two workers count theirs once."""
    for l in open(f"/proc/{p}/smaps_rollup"):
        if l.startswith("Pss:"): return int(l.split()[1])

def load(): return float(open("/proc/loadavg").read().split()[0])

for t in builds: setup(t)
try:
    for t in builds:
        for _ in range(100):
            try: wsload.probe_ms(PORTS[t], "asgi.bench", "/ws"); break
            except Exception: time.sleep(0.3)
        print(t, "roles", roles(t), flush=True)
    res = {t: [] for t in builds}
    for r in range(ROUNDS):
        for t in (list(builds) if r % 2 == 0 else list(builds)[::-1]):
            router, workers = roles(t)
            c0 = cpu(router), sum(cpu(w) for w in workers), ucpu(router), sum(ucpu(w) for w in workers)
            l0 = load()
            e = wsload.echo(PORTS[t], "asgi.bench", "/ws", conns=64, seconds=SECS)
            c1 = cpu(router), sum(cpu(w) for w in workers), ucpu(router), sum(ucpu(w) for w in workers)
            n = e["trips"]
            row = dict(rtps=e["rtps"], errors=e["errors"], router_us=(c1[0]-c0[0])*1e6/n, worker_us=(c1[1]-c0[1])*1e6/n, load=l0, router_user=(c1[2]-c0[2])*1e6/n, worker_user=(c1[3]-c0[3])*1e6/n)
            res[t].append(row)
            print(f"round {r} {t}: {row['rtps']:.0f} rt/s router {row['router_us']:.1f} us/rt worker {row['worker_us']:.1f} us/rt (user: router {row['router_user']:.2f} worker {row['worker_user']:.2f}) load {l0:.2f} err {row['errors']}", flush=True)
    for t in builds:
        rs = res[t]
        if rs:
            print(f"{t} median: rt/s {statistics.median(x['rtps'] for x in rs):.0f} router {statistics.median(x['router_us'] for x in rs):.1f} worker {statistics.median(x['worker_us'] for x in rs):.1f} us/rt; user-space: router {statistics.median(x['router_user'] for x in rs):.2f} worker {statistics.median(x['worker_user'] for x in rs):.2f}; load {statistics.median(x['load'] for x in rs):.1f}")
            os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
            json.dump(res, open(os.path.join(HERE, "results", "ws_ab.json"), "w"))
    if IDLE:
        for t in builds:
            router, workers = roles(t)
            if IDLE > 8000:  # the hard limit is 20,000: raise it for the processes under test (root may)
                for p in [procs[t].pid] + tree(procs[t].pid):
                    subprocess.run(["prlimit", f"--pid={p}", "--nofile=40000:40000"], check=False)
            def measure():
                rt, wk = roles(t)
                return dict(router=rss(rt), workers=sum(rss(w) for w in wk),
                            pss=pss(rt) + sum(pss(w) for w in wk))
            before = measure()
            opened, failed, during, probe = asyncio.run(wsload.idle(PORTS[t], "asgi.bench", "/ws", IDLE, measure))
            dr = (during["router"] - before["router"]) / max(opened, 1)
            dw = (during["workers"] - before["workers"]) / max(opened, 1)
            print(f"{t} idle {opened} (failed {failed}): router {before['router']/1024:.1f}->{during['router']/1024:.1f} MiB ({dr:.2f} KiB each), workers {before['workers']/1024:.1f}->{during['workers']/1024:.1f} MiB ({dw:.2f} KiB each); together RSS {(during['router'] + during['workers'])/1024:.1f} MiB, PSS {during['pss']/1024:.1f} MiB (before {before['pss']/1024:.1f}); probe {probe}", flush=True)
            time.sleep(3)
finally:
    for t, p in procs.items():
        p.send_signal(signal.SIGTERM)
    for t, p in procs.items():
        try: p.wait(15)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
