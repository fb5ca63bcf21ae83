#!/usr/bin/env python3
"""Cold first byte after scale to zero: PHP (`pool_idle_timeout`) beside Python (`idle_timeout`).

    cargo build --release --workspace --bins
    integration/bench/scale_to_zero.py [--rounds 40]

Runs the release `polyhost` with two hello sites (the density benchmark's:
PHP `ondemand`, 2 children; Python 1 process × 4 threads), each with a 1 s
idle timeout and a user of its own. Each round waits until a site's pool is
gone (no process of its user), then times its next request from connect to
the first byte of the answer, then one warm request. The two sites
alternate their order every round. Prints median, p90, min and max. Needs
root; creates and removes the users polyhost-cold-php and polyhost-cold-py
and stops what it started by PID.
"""

import argparse
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import probes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
APPS = os.path.join(REPO, "integration", "bench", "apps")
USERS = {"php": "polyhost-cold-php", "py": "polyhost-cold-py"}


def pids_of(uid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                st = f.read()
        except OSError:
            continue
        fields = dict(l.split(":", 1) for l in st.splitlines() if ":" in l)
        if int(fields["Uid"].split()[0]) == uid and "Z" not in fields["State"]:
            out.append(int(d))
    return out


def wait_gone(uid, timeout=10.0):
    end = time.monotonic() + timeout
    while pids_of(uid):
        if time.monotonic() > end:
            raise SystemExit(f"uid {uid}: processes left after {timeout}s: {pids_of(uid)}")
        time.sleep(0.01)


def first_byte_ms(port, host, path):
    """Milliseconds from connect to the first byte, and whether the answer is the hello."""
    ms, status, body = probes.first_byte_ms(port, host, path)
    return ms, status == 200 and body.endswith(b"Hello, World!")


def summary(xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"median {statistics.median(xs):.1f} ms, p90 {p90:.1f} ms, min {xs[0]:.1f}, max {xs[-1]:.1f} (n={len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it creates site users)")
    bin_dir = os.path.join(REPO, "target", "release")
    for b in ("polyhost", "polyhost-python"):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            raise SystemExit(f"{b} not built: cargo build --release --workspace --bins")
    for u in USERS.values():
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", u],
                       stderr=subprocess.DEVNULL)
    tree = tempfile.mkdtemp(prefix="polyhost-cold-")
    os.chmod(tree, 0o755)
    proc = None
    try:
        # Site users must reach the worker and the apps (the checkout may be under /root).
        shutil.copy(os.path.join(bin_dir, "polyhost-python"), f"{tree}/polyhost-python")
        os.makedirs(f"{tree}/php")
        os.makedirs(f"{tree}/apps")
        os.makedirs(f"{tree}/vhosts")
        shutil.copy(f"{APPS}/hello.php", f"{tree}/php/hello.php")
        shutil.copy(f"{APPS}/hello.py", f"{tree}/apps/hello.py")
        subprocess.run(["chmod", "-R", "a+rX", tree], check=True)
        with open(f"{tree}/polyhost.toml", "w") as f:
            f.write('listen = ["127.0.0.1:0"]\nstate_dir = "state"\nlog_dir = "log"\n')
        with open(f"{tree}/vhosts/php.toml", "w") as f:
            f.write(f'hosts = ["php.cold"]\nroot = "{tree}/php"\nuser = "{USERS["php"]}"\n'
                    '[php]\nmode = "ondemand"\nstart = "on_demand"\nmax_children = 2\n'
                    'pool_idle_timeout = "1s"\n')
        with open(f"{tree}/vhosts/py.toml", "w") as f:
            f.write(f'hosts = ["py.cold"]\nuser = "{USERS["py"]}"\n[python]\napp = "hello"\n'
                    f'path = ["{tree}/apps"]\nprocesses = 1\nthreads = 4\nidle_timeout = "1s"\n'
                    f'worker = "{tree}/polyhost-python"\n')
        log = open(f"{tree}/polyhost.log", "w+")
        proc = subprocess.Popen([f"{bin_dir}/polyhost", "serve", "--config", f"{tree}/polyhost.toml"],
                                stdout=subprocess.DEVNULL, stderr=log)
        port = None
        end = time.monotonic() + 20
        while port is None and time.monotonic() < end:
            log.seek(0)
            for line in log.read().splitlines():
                if "listening addr=" in line:
                    port = int(line.split("listening addr=")[1].split()[0].rsplit(":", 1)[1])
            time.sleep(0.05)
        if port is None:
            log.seek(0)
            raise SystemExit("polyhost did not start:\n" + log.read())
        uids = {k: pwd.getpwnam(u).pw_uid for k, u in USERS.items()}
        hosts = {"php": ("php.cold", "/hello.php"), "py": ("py.cold", "/")}
        cold = {"php": [], "py": []}
        warm = {"php": [], "py": []}
        for r in range(args.rounds):
            order = ["php", "py"] if r % 2 == 0 else ["py", "php"]
            for k in order:
                wait_gone(uids[k])
                ms, ok = first_byte_ms(port, *hosts[k])
                if not ok:
                    raise SystemExit(f"{k}: not the expected answer in round {r}")
                cold[k].append(ms)
                warm[k].append(first_byte_ms(port, *hosts[k])[0])
        load = open("/proc/loadavg").read().split()[:3]
        print(f"cold first byte after scale to zero, {args.rounds} rounds, load average {' '.join(load)}")
        for k, label in [("php", "PHP hello (pool_idle_timeout)"), ("py", "Python hello (idle_timeout)")]:
            print(f"  {label}: cold {summary(cold[k])}; warm right after: median {statistics.median(warm[k]):.2f} ms")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for u in USERS.values():
            subprocess.run(["userdel", u], stderr=subprocess.DEVNULL)
        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
