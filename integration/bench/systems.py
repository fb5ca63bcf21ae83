"""The systems the benchmark compares, at its two settings: their
configuration files, their processes (started and stopped by PID), and which
port, Host and processes serve a workload. Stdlib only; used by bench.py.

Two settings (`SETTINGS`):

- *defaults*: each system as installed. polyhost: the site files a panel
  writes (`[php]` and `[python]` with no tuning keys); php-fpm: Debian's
  `www.conf` pool (`pm = dynamic`, 5 children); nginx: Debian's `nginx.conf`
  and default site (`try_files`, `snippets/fastcgi-php.conf`); Apache:
  Debian's mpm_event and `MaxKeepAliveRequests 100`, mod_wsgi daemon mode
  without `processes`/`threads`; granian, gunicorn and uvicorn with no
  options (one worker each; uvicorn picks uvloop and httptools, which
  `uvicorn[standard]` installs); polyhost's ASGI site with no tuning keys.
- *tuned*: the same process, thread and recycling numbers everywhere
  (WSGI 2 processes x 15 threads, PHP static pools of 8 children, no
  recycling; ASGI 2 processes, one event loop each, uvloop from the one
  benchmark virtualenv everywhere), plus one PHP pool per side with
  `max_requests = 500`.

Access logs are on for every system that has one, at both settings:
polyhost (always on), nginx, Apache (also for mod_wsgi), granian
(`--access-log`), gunicorn (`--access-logfile`) and uvicorn (on by
default, to its output file). php-fpm's own
`access.log` is off (Debian's default; the front logs the request).
"""

import os
import pwd
import re
import shutil
import signal
import subprocess

from probes import cmdline, descendants

REPO = os.environ.get("BENCH_REPO", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
VENV = os.environ.get("BENCH_VENV", "/var/tmp/polyhost-bench-venv")
TREE = os.environ.get("BENCH_TREE", "")  # set by run.sh (bench.py --report-from needs none)
PIDFILE = os.environ.get("BENCH_PIDFILE", os.path.join(TREE, "pids"))
USER = "polyhost-bench"  # the peers' user; polyhost's sites each get their own (site_user)
HERE = os.path.dirname(os.path.abspath(__file__))
# BENCH_BIN_DIR: measure other binaries than this tree's release build
# (A/B of two builds: `cp target/release/polyhost* /tmp/a/` before a change).
BIN = os.environ.get("BENCH_BIN_DIR") or os.path.join(REPO, "target/release")
FPM = shutil.which("php-fpm8.2") or "/usr/sbin/php-fpm8.2"

SETTINGS = ["defaults", "tuned"]
SETTING_LABEL = {"defaults": "defaults", "tuned": "tuned-equal"}
PHP_CHILDREN = 8
PROCS, THREADS = 2, 15
PHP_RECYCLE = 500  # max_requests of the tuned recycling pools

# Ports (loopback). polyhost routes by Host on one port. BENCH_PORT_OFFSET
# shifts all of them, so A/B runs from two worktrees do not collide.
PORT_OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
# Threads of the fronts (unset: each system's default, one per CPU on both
# sides): polyhost's `router_threads` (lanes) and nginx's `worker_processes`,
# to compare them at equal numbers (docs/performance.md, "node16").
ROUTER_THREADS = os.environ.get("BENCH_ROUTER_THREADS", "")
NGINX_WORKERS = os.environ.get("BENCH_NGINX_WORKERS", "auto")
P_POLYHOST = 18080 + PORT_OFFSET
P_DENSITY = 18090 + PORT_OFFSET
WSGI_APPS = ["hello", "big", "sleep"]
WSGI_PORTS = {  # process family -> first port; hello, big, sleep follow
    "granian": 18111 + PORT_OFFSET,
    "granian-default": 18121 + PORT_OFFSET,
    "gunicorn": 18131 + PORT_OFFSET,
    "apache-wsgi": 18141 + PORT_OFFSET,
    "gunicorn-default": 18171 + PORT_OFFSET,
    "apache-wsgi-default": 18181 + PORT_OFFSET,
}
P_APACHE_PHP = {"tuned": 18151 + PORT_OFFSET, "defaults": 18152 + PORT_OFFSET}
P_NGINX_PHP = {"tuned": 18161 + PORT_OFFSET, "defaults": 18163 + PORT_OFFSET}
P_NGINX_STATIC = {"tuned": 18162 + PORT_OFFSET, "defaults": 18164 + PORT_OFFSET}
P_NGINX_RECYCLE = 18165 + PORT_OFFSET
# ASGI peers (issue 20): one server per setting, all serving apps/asgi_app.py.
ASGI_PORTS = {"uvicorn": 18201 + PORT_OFFSET, "uvicorn-default": 18202 + PORT_OFFSET,
              "granian-asgi": 18203 + PORT_OFFSET, "granian-asgi-default": 18204 + PORT_OFFSET}
ASGI_MAX_CONCURRENCY = 10000  # polyhost's tuned ASGI site: long polls and idle WebSockets hold a slot each
# Node hello (issue 22): one Node process (tests/apps/node/hello.js, the plain
# http module) behind polyhost's [app] and, on its own Unix socket, behind nginx.
P_NGINX_NODE = {"tuned": 18166 + PORT_OFFSET, "defaults": 18167 + PORT_OFFSET}
NODE_HELLO = os.path.join(REPO, "tests/apps/node/hello.js")
ALL_PORTS = ([P_POLYHOST, P_DENSITY, P_NGINX_RECYCLE] + list(P_NGINX_NODE.values()) + list(P_APACHE_PHP.values()) + list(P_NGINX_PHP.values())
             + list(P_NGINX_STATIC.values()) + [WSGI_PORTS[s] + i for s in WSGI_PORTS for i in range(3)]
             + list(ASGI_PORTS.values()))

started = []  # (name, Popen)


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


def site_user(site):
    """polyhost refuses two sites that run code under one user: each gets
    its own system user, created once (`phb-<site>`, at most 32 chars)."""
    name = f"phb-{site}"[:32]
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, stderr=subprocess.DEVNULL)
    return name


def make_tree():
    for d in ["apps", "php", "static", "apache/run", "nginx/tmp", "nginx-default/tmp", "fpm", "gunicorn",
              "polyhost/vhosts", "polyhost/state", "polyhost/log", "density/vhosts", "node-app", "node-nginx",
              "density/state", "density/log", "logs"]:
        os.makedirs(os.path.join(TREE, d), exist_ok=True)
    for f in ["hello.py", "big.py", "sleep.py", "asgi_app.py"]:
        shutil.copy(os.path.join(HERE, "apps", f), os.path.join(TREE, "apps", f))
    for f in ["hello.php", "phpinfo.php"]:
        shutil.copy(os.path.join(HERE, "apps", f), os.path.join(TREE, "php", f))
    shutil.copy(NODE_HELLO, os.path.join(TREE, "node-app", "hello.js"))
    write("static/13b.txt", "Hello, World!")
    # The same 13 B asset in the PHP sites' root (WordPress pages are mostly such files).
    write("php/13b.txt", "Hello, World!")
    with open(os.path.join(TREE, "static/1mib.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    pw = pwd.getpwnam(USER)
    # Readable by every user; the dirs daemons write to are the peers' user's.
    sh(f"chmod -R a+rX {TREE}")
    for d in ["apache/run", "nginx/tmp", "nginx-default/tmp", "fpm", "gunicorn", "logs", "node-nginx"]:
        os.chown(os.path.join(TREE, d), pw.pw_uid, pw.pw_gid)
    # Debian's default site includes snippets/fastcgi-php.conf, which
    # includes fastcgi.conf, both relative to the directory of nginx.conf.
    shutil.copytree("/etc/nginx/snippets", os.path.join(TREE, "nginx-default/snippets"), dirs_exist_ok=True)
    shutil.copy("/etc/nginx/fastcgi.conf", os.path.join(TREE, "nginx-default/fastcgi.conf"))


# ---------------------------------------------------------------- polyhost

def polyhost_config(base, port, log_level="info"):
    write(f"{base}/polyhost.toml", f"""listen = ["127.0.0.1:{port}"]
vhosts_dir = "vhosts"
include = []
state_dir = "state"
log_dir = "log"
log_level = "{log_level}"
shutdown_timeout = "5s"
{f"router_threads = {ROUTER_THREADS}" if ROUTER_THREADS else ""}

[admin]
socket = "state/admin.sock"

# Every client of the benchmark is 127.0.0.1: the per-address limit (default
# 256) would refuse the 10,000 idle connections and the 1,000 long polls (a
# guard against one client, not a performance setting: raised at both settings).
[limits]
max_connections = 15000
max_connections_per_ip = 15000
""")


def polyhost_main_sites():
    """Tuned sites: `<app>.bench`, `php.bench`, `php500.bench`; default
    sites: `<app>-d.bench`, `php-d.bench` (what a panel writes: no tuning
    keys); `static.bench` serves both settings (a static site has no process
    or thread numbers)."""
    base = "polyhost"
    polyhost_config(base, P_POLYHOST)
    for app in WSGI_APPS:
        extra = 'queue_timeout = "25s"\nrequest_timeout = "60s"\n' if app == "sleep" else ""
        write(f"{base}/vhosts/{app}.toml", f"""hosts = ["{app}.bench"]
user = "{site_user(app)}"
[python]
app = "{app}"
path = ["{TREE}/apps"]
processes = {PROCS}
threads = {THREADS}
{extra}""")
        write(f"{base}/vhosts/{app}-d.toml", f"""hosts = ["{app}-d.bench"]
user = "{site_user(app + '-d')}"
[python]
app = "{app}"
path = ["{TREE}/apps"]
""")
    for site, max_requests in [("php", 0), ("php500", PHP_RECYCLE)]:
        write(f"{base}/vhosts/{site}.toml", f"""hosts = ["{site}.bench"]
root = "{TREE}/php"
user = "{site_user(site)}"
[php]
mode = "static"
max_children = {PHP_CHILDREN}
max_requests = {max_requests}
""")
    write(f"{base}/vhosts/php-d.toml", f"""hosts = ["php-d.bench"]
root = "{TREE}/php"
user = "{site_user('php-d')}"
[php]
""")
    # ASGI (issue 20): tuned = 2 processes as the peers' 2 workers, and the
    # peers' virtualenv as the site's (`home`): uvicorn (`--loop uvloop`) and
    # granian (`--loop auto`) run their asyncio loop on that venv's uvloop, and
    # polyhost's worker picks uvloop when the site's venv has it; defaults =
    # no tuning keys (no venv: asyncio's own loop).
    write(f"{base}/vhosts/asgi.toml", f"""hosts = ["asgi.bench"]
user = "{site_user('asgi')}"
[python]
interface = "asgi"
app = "asgi_app"
path = ["{TREE}/apps"]
home = "{VENV}"
processes = {PROCS}
max_concurrency = {ASGI_MAX_CONCURRENCY}
queue_timeout = "25s"
request_timeout = "60s"
""")
    write(f"{base}/vhosts/asgi-d.toml", f"""hosts = ["asgi-d.bench"]
user = "{site_user('asgi-d')}"
[python]
interface = "asgi"
app = "asgi_app"
path = ["{TREE}/apps"]
""")
    # Node hello as an [app] (issue 22): one process, no tuning keys (the same
    # at both settings: one Node process on each side).
    write(f"{base}/vhosts/node.toml", f"""hosts = ["node.bench"]
root = "{TREE}/node-app"
user = "{site_user('node')}"
[app]
command = ["node", "hello.js"]
""")
    write(f"{base}/vhosts/static.toml", f"""hosts = ["static.bench"]
root = "{TREE}/static"
user = "{USER}"
""")


def density_users(n):
    """`phb-d0000` .. `phb-dNNNN`, one per density site, created once, in
    one batch (`newusers`: 10,000 `useradd`s take minutes, each rewriting
    /etc/passwd). System accounts (no subordinate ids, locked password) with
    ids 200000 + i: above every range useradd allocates from, so they never
    use up the system range (100-999) other tools and tests draw from."""
    have = {p.pw_name for p in pwd.getpwall()}
    missing = [i for i in range(n) if f"phb-d{i:04d}" not in have]
    if not missing:
        return
    print(f"bench: creating {len(missing)} density site users (phb-dNNNN, uid 200000+N)", flush=True)
    lines = "".join(f"phb-d{i:04d}:x:{200000 + i}:{200000 + i}::/:/usr/sbin/nologin\n" for i in missing)
    subprocess.run(["newusers", "--system"], input=lines, text=True, check=True)
    locked = "".join(f"phb-d{i:04d}:!\n" for i in missing)
    subprocess.run(["chpasswd", "-e"], input=locked, text=True, check=True)


def density_sites(n=1000):
    """Half Python, half PHP on demand; one user per site (created once:
    `phb-dNNNN`, see density_users)."""
    base = "density"
    if n > 10000:
        raise SystemExit("bench: --sites: at most 10,000 (site and user names have four digits)")
    polyhost_config(base, P_DENSITY)
    density_users(n)
    for i in range(n):
        if i % 2 == 0:
            write(f"{base}/vhosts/py-{i:04d}.toml", f"""hosts = ["py-{i:04d}.bench"]
user = "phb-d{i:04d}"
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
user = "phb-d{i:04d}"
[php]
mode = "ondemand"
start = "on_demand"
max_children = 2
idle_timeout = "10s"
""")


# ---------------------------------------------------------------- peers

def apache_config():
    mods = "/usr/lib/apache2/modules"
    vhosts, listens = [], []
    for family, sizes, keepalive in [("apache-wsgi", f" processes={PROCS} threads={THREADS}", 0),
                                     ("apache-wsgi-default", "", 100)]:
        for i, app in enumerate(WSGI_APPS):
            port = WSGI_PORTS[family] + i
            group = app if family == "apache-wsgi" else f"{app}-d"
            listens.append(f"Listen 127.0.0.1:{port}")
            vhosts.append(f"""<VirtualHost 127.0.0.1:{port}>
    MaxKeepAliveRequests {keepalive}
    WSGIDaemonProcess {group} user={USER} group={USER}{sizes} python-path={TREE}/apps
    WSGIScriptAlias / {TREE}/apps/{app}.py process-group={group} application-group=%{{GLOBAL}}
</VirtualHost>""")
    for setting, pool, keepalive in [("tuned", "apache", 0), ("defaults", "apache-d", 100)]:
        port = P_APACHE_PHP[setting]
        listens.append(f"Listen 127.0.0.1:{port}")
        # Debian's conf-available/php8.2-fpm.conf, pointed at our pool.
        vhosts.append(f"""<VirtualHost 127.0.0.1:{port}>
    MaxKeepAliveRequests {keepalive}
    DocumentRoot {TREE}/php
    <FilesMatch ".+\\.ph(?:ar|p|tml)$">
        SetHandler "proxy:unix:{TREE}/fpm/{pool}.sock|fcgi://localhost"
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
# Debian's defaults for mpm_event and apache2.conf, at both settings (the
# tuned vhosts lift MaxKeepAliveRequests, as nginx's keepalive_requests).
StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0
Timeout 300
KeepAlive On
MaxKeepAliveRequests 100
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


def nginx_config(setting):
    """tuned: lifted connection limits, no `try_files`; defaults: Debian's
    nginx.conf, its default site and snippets/fastcgi-php.conf."""
    d = "nginx" if setting == "tuned" else "nginx-default"
    common = f"""daemon off;
master_process on;
worker_processes {NGINX_WORKERS};
user {USER};
pid {TREE}/{d}/nginx.pid;
error_log {TREE}/logs/{d}.error.log warn;
"""
    temps = f"""    client_body_temp_path {TREE}/{d}/tmp/body;
    proxy_temp_path {TREE}/{d}/tmp/proxy;
    fastcgi_temp_path {TREE}/{d}/tmp/fastcgi;
    uwsgi_temp_path {TREE}/{d}/tmp/uwsgi;
    scgi_temp_path {TREE}/{d}/tmp/scgi;
    access_log {TREE}/logs/{d}.access.log;
    sendfile on;
    tcp_nopush on;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
"""
    if setting == "tuned":
        servers = ""
        for port, pool in [(P_NGINX_PHP["tuned"], "nginx"), (P_NGINX_RECYCLE, "nginx-r500")]:
            servers += f"""    server {{
        listen 127.0.0.1:{port};
        root {TREE}/php;
        location ~ \\.php$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass unix:{TREE}/fpm/{pool}.sock;
        }}
    }}
"""
        return write(f"{d}/nginx.conf", common + f"""worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
{temps}    keepalive_requests 1000000;
{servers}    server {{
        listen 127.0.0.1:{P_NGINX_STATIC['tuned']};
        root {TREE}/static;
    }}
    upstream node_hello {{
        server unix:{NODE_SOCKET};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{P_NGINX_NODE['tuned']};
        location / {{
            proxy_pass http://node_hello;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
""")
    return write(f"{d}/nginx.conf", common + f"""events {{ worker_connections 768; }}
http {{
{temps}    types_hash_max_size 2048;
    gzip on;
    server {{
        listen 127.0.0.1:{P_NGINX_PHP['defaults']};
        root {TREE}/php;
        index index.html index.htm index.nginx-debian.html;
        location / {{
            try_files $uri $uri/ =404;
        }}
        location ~ \\.php$ {{
            include snippets/fastcgi-php.conf;
            fastcgi_pass unix:{TREE}/fpm/nginx-d.sock;
        }}
    }}
    server {{
        listen 127.0.0.1:{P_NGINX_STATIC['defaults']};
        root {TREE}/static;
        index index.html index.htm index.nginx-debian.html;
        location / {{
            try_files $uri $uri/ =404;
        }}
    }}
    server {{
        listen 127.0.0.1:{P_NGINX_NODE['defaults']};
        location / {{
            proxy_pass http://unix:{NODE_SOCKET}:;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
""")


NODE_SOCKET = os.path.join(TREE, "node-nginx", "hello.sock")


def fpm_config():
    """One pool per front and setting, so each system's CPU is its own.
    tuned: `pm = static`, 8 children (and the recycling pool, 500
    requests); defaults: Debian's www.conf."""
    pools = []
    sizes = {
        "tuned": f"pm = static\npm.max_children = {PHP_CHILDREN}\npm.max_requests = 0\n",
        "r500": f"pm = static\npm.max_children = {PHP_CHILDREN}\npm.max_requests = {PHP_RECYCLE}\n",
        "defaults": "pm = dynamic\npm.max_children = 5\npm.start_servers = 2\npm.min_spare_servers = 1\n"
                    "pm.max_spare_servers = 3\n",
    }
    for name, kind in [("nginx", "tuned"), ("apache", "tuned"), ("nginx-r500", "r500"),
                       ("nginx-d", "defaults"), ("apache-d", "defaults")]:
        pools.append(f"""[{name}]
user = {USER}
group = {USER}
listen = {TREE}/fpm/{name}.sock
listen.owner = {USER}
listen.group = {USER}
listen.mode = 0660
{sizes[kind]}""")
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
        print(f"bench: {name} (pid {p.pid}) did not stop in {grace}s; SIGKILL to its group")
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
                                 "--blocking-threads", str(THREADS), "--no-ws", "--access-log",
                                 f"{app}:application"],
              cwd=apps, as_user=True)
        start(f"granian-default-{app}", [f"{venv_bin}/granian", "--interface", "wsgi", "--host", "127.0.0.1",
                                         "--port", str(WSGI_PORTS["granian-default"] + i), "--access-log",
                                         f"{app}:application"],
              cwd=apps, as_user=True)
        for family, opts in [("gunicorn", ["--worker-class", "gthread", "--workers", str(PROCS),
                                           "--threads", str(THREADS)]),
                             ("gunicorn-default", [])]:
            start(f"{family}-{app}", [f"{venv_bin}/gunicorn", *opts,
                                      "--bind", f"127.0.0.1:{WSGI_PORTS[family] + i}",
                                      "--access-logfile", os.path.join(TREE, "logs", f"{family}-{app}.access.log"),
                                      "--worker-tmp-dir", os.path.join(TREE, "gunicorn"), f"{app}:application"],
                  cwd=apps, as_user=True)
    start_asgi_peers(venv_bin, apps)
    start("php-fpm", [FPM, "--nodaemonize", "--fpm-config", fpm_config()])
    # nginx's Node: the same hello.js, binding its own socket (as the peers' user).
    start("node-hello", [shutil.which("node") or "/usr/bin/node", os.path.join(TREE, "node-app", "hello.js")],
          cwd=os.path.join(TREE, "node-nginx"), as_user=True, env={"SOCKET": NODE_SOCKET})
    start("apache", ["/usr/sbin/apache2", "-f", apache_config(), "-DFOREGROUND"])
    for setting in SETTINGS:
        d = "nginx" if setting == "tuned" else "nginx-default"
        start(d, ["/usr/sbin/nginx", "-c", nginx_config(setting), "-p", os.path.join(TREE, d)])


def start_asgi_peers(venv_bin, apps):
    """uvicorn (uvloop + httptools, as `uvicorn[standard]` installs) and
    granian `--interface asgi`: 2 workers (tuned), or their defaults (1)."""
    for family, opts in [("uvicorn", ["--workers", str(PROCS), "--loop", "uvloop", "--http", "httptools"]),
                         ("uvicorn-default", [])]:
        start(family, [f"{venv_bin}/uvicorn", *opts, "--host", "127.0.0.1", "--port", str(ASGI_PORTS[family]),
                       "asgi_app:application"], cwd=apps, as_user=True)
    for family, opts in [("granian-asgi", ["--workers", str(PROCS)]), ("granian-asgi-default", [])]:
        start(family, [f"{venv_bin}/granian", "--interface", "asgi", *opts, "--host", "127.0.0.1",
                       "--port", str(ASGI_PORTS[family]), "--access-log", "asgi_app:application"],
              cwd=apps, as_user=True)


def peer_ports():
    return [p for p in ALL_PORTS if p not in (P_POLYHOST, P_DENSITY)]


# ---------------------------------------------------------------- who serves a workload

WSGI_SYSTEMS = ["polyhost", "granian", "apache-wsgi", "gunicorn"]


def targets(kind, arg, setting):
    """{system: (port, host, path)} for a workload at a setting. `kind`:
    wsgi (arg: index of the app), php, php-recycle, php-static (a static
    file from a PHP site's root), static (arg: the path), asgi (arg: the path)."""
    if kind == "wsgi":
        app = WSGI_APPS[arg]
        suffix = "" if setting == "tuned" else "-default"
        t = {"polyhost": (P_POLYHOST, f"{app}{'' if setting == 'tuned' else '-d'}.bench", "/")}
        for s in WSGI_SYSTEMS[1:]:
            t[s] = (WSGI_PORTS[s + suffix] + arg, "localhost", "/")
        return t
    if kind == "node":
        return {"polyhost": (P_POLYHOST, "node.bench", arg), "nginx+node": (P_NGINX_NODE[setting], "localhost", arg)}
    if kind == "asgi":
        suffix = "" if setting == "tuned" else "-default"
        return {"polyhost": (P_POLYHOST, "asgi.bench" if setting == "tuned" else "asgi-d.bench", arg),
                "uvicorn": (ASGI_PORTS["uvicorn" + suffix], "localhost", arg),
                "granian": (ASGI_PORTS["granian-asgi" + suffix], "localhost", arg)}
    php_host = "php.bench" if setting == "tuned" else "php-d.bench"
    if kind == "php":
        return {"polyhost": (P_POLYHOST, php_host, arg),
                "nginx+php-fpm": (P_NGINX_PHP[setting], "localhost", arg),
                "apache+php-fpm": (P_APACHE_PHP[setting], "localhost", arg)}
    if kind == "php-recycle":
        return {"polyhost": (P_POLYHOST, "php500.bench", arg),
                "nginx+php-fpm": (P_NGINX_RECYCLE, "localhost", arg)}
    if kind == "php-static":
        return {"polyhost": (P_POLYHOST, php_host, arg), "nginx": (P_NGINX_PHP[setting], "localhost", arg)}
    return {"polyhost": (P_POLYHOST, "static.bench", arg), "nginx": (P_NGINX_STATIC[setting], "localhost", arg)}


def proc(name):
    for n, p in started:
        if n == name:
            return p.pid
    return None


def polyhost_router():
    """The `polyhost router` child of the supervisor (as root polyhost runs
    split: the router's memory and CPU are that child's), or None."""
    root = proc("polyhost")
    if not root:
        return None
    return next((p for p in descendants(root) if cmdline(p).startswith("polyhost router")), None)


def system_pids(system, kind, arg, setting):
    """The processes that serve `system` for a workload: {part: [pids]}
    ("router"/"front" and "app")."""
    if system == "polyhost":
        root = proc("polyhost")
        if not root:
            return {}
        # As root, polyhost runs split: the supervisor and its child
        # `polyhost router` (the router's CPU is that child's).
        below = descendants(root)
        router = [root] + [p for p in below if cmdline(p).startswith("polyhost router")]
        if kind in ("static", "php-static"):
            return {"router": router}
        return {"router": router, "app": [p for p in below if p not in router]}
    fpm = proc("php-fpm")
    d = setting == "defaults"

    def pool(name):
        """The pool's children, and the master, which reaps them (see
        probes.cpu_snapshot): the master serves every pool, but only the
        measured one recycles children during a run."""
        if not fpm:
            return []
        return [fpm] + [c for c in descendants(fpm) if re.search(rf"pool {re.escape(name)}\s*$", cmdline(c))]
    if kind == "asgi":
        root = proc({"uvicorn": "uvicorn", "granian": "granian-asgi"}[system] + ("-default" if d else ""))
        return {"app": [root] + descendants(root)} if root else {}
    if system in ("granian", "gunicorn"):
        root = proc(f"{system}{'-default' if d else ''}-{WSGI_APPS[arg]}")
        return {"app": [root] + descendants(root)} if root else {}
    if system == "apache-wsgi":
        root = proc("apache")
        # The daemon processes are children of apache too.
        return {"front": [root] + descendants(root)} if root else {}
    if system == "apache+php-fpm":
        root = proc("apache")
        return {"front": [root] + descendants(root), "app": pool("apache-d" if d else "apache")} if root else {}
    root = proc("nginx-default" if d else "nginx")
    if not root:
        return {}
    if system == "nginx+node":
        node = proc("node-hello")
        return {"front": [root] + descendants(root), "app": [node] if node else []}
    if system == "nginx+php-fpm":
        name = "nginx-d" if d else "nginx-r500" if kind == "php-recycle" else "nginx"
        return {"front": [root] + descendants(root), "app": pool(name)}
    return {"front": [root] + descendants(root)}


def versions():
    v = {}
    v["polyhost"] = sh(f"{BIN}/polyhost --version").stdout.strip()
    v["granian"] = sh(f"{VENV}/bin/granian --version").stdout.strip()
    v["gunicorn"] = sh(f"{VENV}/bin/gunicorn --version").stdout.strip()
    v["uvicorn"] = sh(f"{VENV}/bin/uvicorn --version").stdout.strip()
    v["apache"] = sh("/usr/sbin/apache2 -v").stdout.splitlines()[0].split(":", 1)[1].strip()
    v["mod_wsgi"] = sh("dpkg-query -W -f='${Version}' libapache2-mod-wsgi-py3").stdout.strip()
    v["nginx"] = sh("/usr/sbin/nginx -v").stderr.strip().split(":", 1)[-1].strip()
    v["php-fpm"] = sh(f"{FPM} -v").stdout.splitlines()[0]
    v["python"] = sh("/usr/bin/python3.11 --version").stdout.strip()
    v["node"] = sh("node --version").stdout.strip()
    v["wrk"] = sh("wrk -v").stdout.splitlines()[0].split(" [")[0]
    return v
