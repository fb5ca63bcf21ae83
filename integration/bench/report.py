"""The Markdown report of a benchmark run: the setup (both settings, access
logs, load average), one throughput table per setting, latency, idle
connections, WebSockets (echo, idle), long polls, density, and the targets, each checked at both
settings and every concurrency (a target counts only if it holds in all).
Stdlib only; used by bench.py.
"""

import statistics

from systems import ASGI_MAX_CONCURRENCY, PHP_CHILDREN, PHP_RECYCLE, PROCS, SETTING_LABEL, THREADS

SETTING_TEXT = {
    "defaults": [
        "polyhost: the site files a panel writes — `[python]` with only `app` and `path`, `[php]` with no keys "
        "(polyhost's documented defaults for processes, threads, `mode`, `max_children`, `max_requests`)",
        "granian: `granian --interface wsgi --access-log app:application` (its defaults: 1 worker)",
        "gunicorn: `gunicorn --access-logfile FILE app:application` (its defaults: 1 sync worker)",
        "Apache + mod_wsgi: `WSGIDaemonProcess` without `processes`/`threads` (1 process × 15 threads); "
        "Debian's mpm_event and `MaxKeepAliveRequests 100`",
        "php-fpm: Debian's `www.conf` (`pm = dynamic`, `max_children = 5`, 2 at start, 1–3 spare, "
        "no `max_requests`), a pool per front",
        "nginx: Debian's `nginx.conf` (`worker_connections 768`, default `keepalive_requests` 1000, `gzip on`) "
        "and default site (`try_files $uri $uri/ =404`; PHP through `snippets/fastcgi-php.conf`)",
        "ASGI: polyhost `[python] interface = \"asgi\"` with no tuning keys; `uvicorn app:application` (1 worker; "
        "uvloop and httptools, as `uvicorn[standard]` installs); `granian --interface asgi --access-log` (1 worker)",
        "Node hello: one Node process (`tests/apps/node/hello.js`, the plain `http` module) on each side: polyhost "
        "`[app]` with only `command` (socket activation, fd 3); nginx `proxy_pass http://unix:SOCKET:` to the same "
        "app listening on its own socket (HTTP/1.0 to the upstream, a connection per request: nginx's default)",
    ],
    "tuned": [
        f"WSGI: {PROCS} processes × {THREADS} threads everywhere (polyhost `processes`/`threads`; granian "
        f"`--workers {PROCS} --blocking-threads {THREADS}`; gunicorn `gthread` {PROCS} × {THREADS}; mod_wsgi "
        f"`processes={PROCS} threads={THREADS}`); no recycling",
        f"PHP: `pm = static` / `mode = \"static\"`, {PHP_CHILDREN} children, `max_requests = 0` on both sides; "
        f"the workload \"PHP hello, max_requests {PHP_RECYCLE}\" uses {PHP_RECYCLE} on both sides",
        "nginx: `worker_connections 16384`, `keepalive_requests 1000000`, no `try_files`; Apache "
        "`MaxKeepAliveRequests 0` (unlimited)",
        f"ASGI: {PROCS} processes, one event loop each (polyhost `processes = {PROCS}`, `max_concurrency` "
        f"{ASGI_MAX_CONCURRENCY}; uvicorn `--workers {PROCS} --loop uvloop --http httptools`; granian "
        f"`--interface asgi --workers {PROCS}`)",
        "Node hello: one Node process on each side (it has one event loop); nginx through an `upstream` with "
        "`keepalive 64` and `proxy_http_version 1.1` (kept-alive connections to the app, as polyhost's pool)",
    ],
}
ACCESS_LOGS = ("access logs: **on** for every system that has one, at both settings — polyhost (always), nginx, "
               "Apache (also for mod_wsgi), granian (`--access-log`), gunicorn (`--access-logfile`), uvicorn (its default); php-fpm's "
               "own `access.log` off (Debian's default; its front logs the request)")


def fmt_rps(r):
    return f"{r:,.0f}"


def ratio(a, b):
    return a / b if a and b else None


def fx(q):
    return f"{q:.2f}×" if q else "n/a"


def ctxsw(run):
    """Context switches per request; a process that exits during the run
    (Apache retiring a child) takes its count along: then "—", not a
    negative number."""
    v = run.get("ctxsw", 0)
    return f"{v:.1f}" if v >= 0 else "—"


def throughput_medians(results):
    """{(workload, setting, c, system): (median req/s, the median run)}.
    The median run is the rep with the median req/s (its CPU and context
    switches are the cell's), its p50 and p99 replaced by the medians of
    every rep's: a tail is read per rep, and one slow rep must not decide it
    because its req/s happened to be the middle one."""
    out = {}
    for key, r in results.items():
        runs = [x for x in r.get("runs", []) if x]
        if runs:
            mid = sorted(runs, key=lambda x: x["rps"])[len(runs) // 2]
            mid = dict(mid, **{p: statistics.median(x[p] for x in runs) for p in ("p50", "p99")})
            out[key] = (statistics.median(x["rps"] for x in runs), mid)
    return out


def throughput_table(L, args, results, med, workloads, setting):
    L.append(f"## Throughput, {SETTING_LABEL[setting]} (wrk)\n")
    L.append("| workload | c | system | req/s median | min–max | p50 ms | p99 ms | errors | server CPU µs/req "
             "| ctx switches/req | req/s polyhost/this | p99 polyhost/this |")
    L.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _kind, _arg, _check, settings in workloads:
        if setting not in settings:
            continue
        for c in args.concurrency:
            for (n, st, cc, s), r in results.items():
                if (n, st, cc) != (name, setting, c):
                    continue
                if "pending" in r:
                    L.append(f"| {name} | {c} | {s} | pending | | | | | | | | |")
                    continue
                if (n, st, cc, s) not in med:
                    L.append(f"| {name} | {c} | {s} | wrk failed | | | | | | | | |")
                    continue
                m, mid = med[(n, st, cc, s)]
                rps = [x["rps"] for x in r["runs"] if x]
                errs = sum(x["errors"] for x in r["runs"] if x)
                cpu = ""
                if mid.get("cpu_us"):
                    cu = mid["cpu_us"]
                    cpu = f"{sum(cu.values()):.0f}"
                    if len(cu) > 1:
                        cpu += " (" + " + ".join(f"{k} {v:.0f}" for k, v in cu.items()) + ")"
                poly = med.get((n, st, cc, "polyhost"))
                if s == "polyhost":
                    q_rps = q_p99 = "—"
                else:
                    q_rps = fx(ratio(poly[0], m) if poly else None)
                    q_p99 = fx(ratio(poly[1]["p99"], mid["p99"]) if poly else None)
                L.append(f"| {name} | {c} | {s} | {fmt_rps(m)} | {fmt_rps(min(rps))}–{fmt_rps(max(rps))} | "
                         f"{mid['p50'] / 1000:.2f} | {mid['p99'] / 1000:.2f} | {errs} | {cpu} | "
                         f"{ctxsw(mid)} | {q_rps} | {q_p99} |")
    L.append("")


def latency_medians(results):
    """{(workload, setting, system): (p50, p99)} of the paced runs."""
    out = {}
    for key, r in results.items():
        if "paced" in r:
            runs = r["paced"]
            out[key] = (statistics.median(x["p50"] for x in runs), statistics.median(x["p99"] for x in runs))
    return out


def latency_table(L, args, results, lat):
    L.append(f"## Latency at an offered {args.rate} req/s (paced, 50 connections, {args.lat_duration}s; "
             "latency from the scheduled send)\n")
    L.append("| workload | setting | system | achieved req/s | p50 ms | p99 ms | max ms | errors | p50 polyhost/this "
             "| p99 polyhost/this |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, setting, s), r in results.items():
        if "pending" in r:
            L.append(f"| {name} | {SETTING_LABEL[setting]} | {s} | pending | | | | | | |")
            continue
        runs = r["paced"]
        p50, p99 = lat[(name, setting, s)]
        a = lat.get((name, setting, "polyhost"))
        q50 = "—" if s == "polyhost" else fx(ratio(a[0], p50) if a else None)
        q99 = "—" if s == "polyhost" else fx(ratio(a[1], p99) if a else None)
        L.append(f"| {name} | {SETTING_LABEL[setting]} | {s} | {statistics.median(x['achieved'] for x in runs):,.0f} | "
                 f"{p50:.2f} | {p99:.2f} | {max(x['max'] for x in runs):.1f} | "
                 f"{sum(x['errors'] + x['non2xx'] for x in runs)} | {q50} | {q99} |")
    L.append("")


def extras(L, extra):
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
                 f"({PROCS} × {THREADS} threads, tuned-equal; client gives up after {lp['timeout']}s)\n")
        L.append("| system | outcomes (count, first–last answer s) | wall s |")
        L.append("|---|---|---:|")
        for s, r in lp["results"].items():
            o = "; ".join(f"{k}: {v} ({r['spans'][k][0]:.1f}–{r['spans'][k][1]:.1f})" for k, v in sorted(r["counts"].items()))
            L.append(f"| {s} | {o} | {r['wall']:.1f} |")
        L.append("\npolyhost (WSGI, `sleep.bench`): queue_timeout 25s, so the expected outcome is 60 × 200 (two "
                 "rounds of 30) and the rest 503 at ~25 s. ASGI (`(ASGI)` rows: polyhost's `asgi.bench`, 2 processes; "
                 "uvicorn and granian, 2 workers): an event loop per process, so every poll should be answered "
                 "200 at ~20 s.\n")
    websockets(L, extra)
    if "density" in extra:
        d = extra["density"]
        L.append(f"## Density: {d['sites']:,} sites (half Python, idle_timeout 60s; half PHP, start = \"on_demand\")\n")
        if "error" in d:
            L.append(f"- {d['error']}")
        else:
            L.append(f"- start until the port takes connections: {d['startup_s']:.2f} s"
                     + (f"; until the first answer: {d['first_answer_s']:.2f} s" if d.get("first_answer_s") else ""))
            L.append(f"- polyhost RSS, all idle: {d['rss_idle_kib'] / 1024:.1f} MiB"
                     + (f" ({d['polyhost_processes']} polyhost processes, {d['fds_idle']:,} open descriptors)"
                        if "fds_idle" in d else "")
                     + f"; site processes: {d['children_idle']} ({d['children_rss_kib'] / 1024:.1f} MiB)")
            if d.get("idle_by_process"):
                L.append("  - by process, idle: " + ", ".join(
                    f"{p['role']} {p['rss_kib'] / 1024:.1f} MiB, {p['fds']} descriptors" for p in d["idle_by_process"]))
            L.append(f"- reload with one site changed, {d.get('reload_how', '')}: "
                     + (f"{d['reload_s'] * 1000:.0f} ms" if d["reload_s"] is not None else "no reloaded line in 30 s"))
            L.append(f"  - `{d['reload_line'].strip()}`")
            for k, label in [("cold_python", "Python hello"), ("cold_php", "PHP hello")]:
                c = d[k]
                ms = f"{c['ms']:.0f} ms" if c["ms"] is not None else "—"
                L.append(f"- cold first byte, {label}: {ms}, status {c['status']}"
                         + ("" if c["ok"] else f" (NOT the expected body: {c['body']!r})")
                         + (f"; warm right after: {c['warm_ms']:.1f} ms" if "warm_ms" in c else ""))
            L.append(f"- polyhost RSS after: {d['rss_after_kib'] / 1024:.1f} MiB"
                     + (f", {d['fds_after']:,} open descriptors" if "fds_after" in d else ""))
            if d.get("after_by_process"):
                L.append("  - by process, after: " + ", ".join(
                    f"{p['role']} {p['rss_kib'] / 1024:.1f} MiB, {p['fds']} descriptors" for p in d["after_by_process"]))
            if "loadavg_before" in d:
                L.append(f"- load average before / after: {d['loadavg_before']} / {d.get('loadavg_after', '?')}")
        L.append("")


def websockets(L, extra):
    if "ws_echo" in extra:
        L.append("## WebSocket echo (64 connections, 64-byte binary messages, closed loop; tuned-equal: 2 processes)\n")
        L.append("| system | round trips/s median | min–max | errors | polyhost/this |")
        L.append("|---|---:|---:|---:|---:|")
        med = {s: statistics.median(r["rtps"] for r in runs) for s, runs in extra["ws_echo"].items() if runs}
        for s, runs in extra["ws_echo"].items():
            if not runs:
                continue
            rt = [r["rtps"] for r in runs]
            q = ratio(med.get("polyhost"), med[s]) if s != "polyhost" else None
            L.append(f"| {s} | {med[s]:,.0f} | {min(rt):,.0f}–{max(rt):,.0f} | {sum(r['errors'] for r in runs)} | "
                     f"{fx(q) if q else '—'} |")
        L.append("")
    for n in extra.get("ws_notes", []):
        L.append(f"- {n}")
    if "ws_idle" in extra:
        w = extra["ws_idle"]
        L.append("## Idle WebSockets on one ASGI site (polyhost, `asgi.bench`, 2 processes)\n")
        if w["n"] < w["wanted"]:
            L.append(f"- {w['n']:,} instead of {w['wanted']:,}: each open WebSocket holds two descriptors in the "
                     "router (client and site process) and this machine's hard descriptor limit is lower than "
                     f"{2 * w['wanted']:,}")
        b, d = w["before"], w["during"]
        L.append(f"- {w['opened']:,} of {w['n']:,} opened (failed: {w['failed']})")
        L.append(f"- router RSS {b['router'] / 1024:.1f} → {d['router'] / 1024:.1f} MiB; the site's {d['nworkers']} "
                 f"worker processes {b['workers'] / 1024:.1f} → {d['workers'] / 1024:.1f} MiB; together "
                 f"{(d['router'] + d['workers']) / 1024:.1f} MiB"
                 + (f" (PSS, shared pages counted once: {d['pss'] / 1024:.1f} MiB)" if d.get("pss") else ""))
        p = w["probe"]
        L.append(f"- a fresh client meanwhile (handshake + one echo): "
                 + (f"{p:.1f} ms" if isinstance(p, float) else str(p)))
        L.append("")


def targets_table(L, args, med, lat, extra):
    """Each target at both settings and every concurrency: met only if it
    holds everywhere it was measured."""
    L.append("## Targets (met only if they hold at both settings and every concurrency)\n")
    L.append("| target | defaults | tuned-equal | met? |")
    L.append("|---|---|---|---|")

    def row(label, cells, oks):
        """cells: {setting: text}; oks: list of booleans (empty: pending)."""
        verdict = "pending" if not oks else "met" if all(oks) else "MISSED"
        L.append(f"| {label} | {cells.get('defaults', '—')} | {cells.get('tuned', '—')} | {verdict} |")

    def per_c(fn, settings=("defaults", "tuned"), fmt=fx):
        """fn(setting, c) -> (value, ok) or None; -> (cells, oks)."""
        cells, oks = {}, []
        for st in settings:
            parts = []
            for c in args.concurrency:
                v = fn(st, c)
                if v:
                    parts.append(f"c{c} {fmt(v[0])}")
                    oks.append(v[1])
            if parts:
                cells[st] = ", ".join(parts)
        return cells, oks

    def rps(name, st, c, s):
        m = med.get((name, st, c, s))
        return m[0] if m else None

    def vs(name, peer, want):
        def fn(st, c):
            q = ratio(rps(name, st, c, "polyhost"), rps(name, st, c, peer))
            return (q, q >= want) if q else None
        return fn

    for name in ["WSGI hello 13 B", "WSGI 64 KiB"]:
        for peer, want in [("granian", 0.8), ("apache-wsgi", 4.0)]:
            row(f"{name} ≥ {want}× {peer}", *per_c(vs(name, peer, want)))

    def sleep(st, c):
        q = rps("WSGI sleep 50 ms", st, c, "polyhost")
        ideal = min(c, PROCS * THREADS) / 0.05
        return (q / ideal, q >= 0.9 * ideal) if q else None
    row(f"WSGI sleep 50 ms ≥ 0.9 × min(c, {PROCS * THREADS} threads)/50 ms (tuned-equal: the bound needs the "
        "thread count)", *per_c(sleep, settings=("tuned",)))
    for name in ["PHP hello", "PHP phpinfo()"]:
        row(f"{name} ≥ 1.0× nginx+php-fpm", *per_c(vs(name, "nginx+php-fpm", 1.0)))
    recycle = f"PHP hello, max_requests {PHP_RECYCLE}"
    row(f"{recycle} ≥ 1.0× nginx+php-fpm", *per_c(vs(recycle, "nginx+php-fpm", 1.0), settings=("tuned",)))

    def p99(st, c):
        a, b = med.get((recycle, st, c, "polyhost")), med.get((recycle, st, c, "nginx+php-fpm"))
        if not a or not b:
            return None
        q = a[1]["p99"] / b[1]["p99"]
        return q, q <= 1.2
    row(f"{recycle}: p99 ≤ 1.2× nginx+php-fpm's (polyhost p99 / theirs)", *per_c(p99, settings=("tuned",)))

    def p99_of(field):
        """The recycling p99 ratio from another measurement of the same runs
        (`extra[field]`: medians per cell)."""
        def fn(st, c):
            a, b = extra.get(field, {}).get((recycle, st, c, "polyhost")), \
                extra.get(field, {}).get((recycle, st, c, "nginx+php-fpm"))
            if not a or not b:
                return None
            return a / b, a / b <= 1.2
        return fn
    row(f"{recycle}: the same p99 on the wire (the servers alone, without wrk's time; tcpdump)",
        *per_c(p99_of("wire_p99"), settings=("tuned",)))
    row(f"{recycle}: the same p99 with h2load (a second, lighter client, run right after wrk)",
        *per_c(p99_of("h2_p99"), settings=("tuned",)))
 
    for peer, want in [("uvicorn", 1.0), ("granian", 0.8)]:
        row(f"ASGI hello 13 B ≥ {want}× {peer}", *per_c(vs("ASGI hello 13 B", peer, want)))
    row("Node hello 13 B ≥ 1.0× nginx+node (proxy_pass to the app's socket)",
        *per_c(vs("Node hello 13 B", "nginx+node", 1.0)))
    row("static 13 B ≥ 0.9× nginx", *per_c(vs("static 13 B", "nginx", 0.9)))
    row("static 1 MiB ≥ 0.7× nginx", *per_c(vs("static 1 MiB", "nginx", 0.7)))

    def php_root(st, c):
        q = ratio(rps("static 13 B, PHP site's root", st, c, "polyhost"), rps("static 13 B", st, c, "polyhost"))
        return (q, q >= 0.95) if q else None
    row("static 13 B from a PHP site's root ≥ 0.95× from a static site (polyhost/polyhost)", *per_c(php_root))
    for name, peer in [(f"latency WSGI hello @{args.rate}/s", "granian"),
                       (f"latency PHP hello @{args.rate}/s", "nginx+php-fpm")]:
        for i, p in [(0, "p50"), (1, "p99")]:
            cells, oks = {}, []
            for st in ("defaults", "tuned"):
                a, b = lat.get((name, st, "polyhost")), lat.get((name, st, peer))
                if a and b:
                    cells[st] = f"{a[i]:.2f} vs {b[i]:.2f} ms ({a[i] / b[i]:.2f}×)"
                    oks.append(a[i] <= 1.2 * b[i])
            row(f"{name} {p} ≤ 1.2× {peer}", cells, oks)
    L.append("")
    asgi_targets(L, extra)
    if "idle" not in extra and "density" not in extra:
        return
    # Not per setting: polyhost alone, one configuration each.
    L.append("| target (polyhost alone) | measured | met? |")
    L.append("|---|---|---|")

    def one(label, value, ok):
        L.append(f"| {label} | {value} | {'pending' if ok is None else 'met' if ok else 'MISSED'} |")
    if "idle" in extra:
        i = extra["idle"]
        one(f"{i['n']:,} idle connections: RSS < 100 MiB (supervisor + router)", f"{i['rss_during'] / 1024:.1f} MiB ({i['opened']:,} open)",
            i["rss_during"] < 100 * 1024 and i["opened"] == i["n"])
    if "density" in extra and "error" not in extra["density"]:
        d = extra["density"]
        one(f"{d['sites']:,} sites idle: RSS < 300 MiB", f"{d['rss_idle_kib'] / 1024:.1f} MiB",
            d["rss_idle_kib"] < 300 * 1024)
        if "fds_idle" in d:
            one(f"{d['sites']:,} sites idle: no descriptor per site (< 100 in all)", f"{d['fds_idle']:,}",
                d["fds_idle"] < 100)
            one(f"{d['sites']:,} sites idle: no site process", f"{d['children_idle']}", d["children_idle"] == 0)
        if d.get("first_answer_s"):
            one("start to first answer < 5 s", f"{d['first_answer_s']:.2f} s", d["first_answer_s"] < 5)
        one("reload < 1 s", f"{d['reload_s'] * 1000:.0f} ms" if d["reload_s"] else "no line",
            bool(d["reload_s"]) and d["reload_s"] < 1)
        for k, lim, label in [("cold_python", 100, "Python"), ("cold_php", 100, "PHP")]:
            c = d[k]
            if c["ok"]:
                one(f"cold first byte {label} < {lim} ms", f"{c['ms']:.0f} ms", c["ms"] < lim)
            else:
                one(f"cold first byte {label} < {lim} ms", f"not served (status {c['status']})",
                    None if label == "PHP" else False)
    L.append("")


def asgi_targets(L, extra):
    """The ASGI and WebSocket targets (issue 20) that are not throughput cells."""
    rows = []
    echo = {s: statistics.median(r["rtps"] for r in runs) for s, runs in extra.get("ws_echo", {}).items() if runs}
    if "polyhost" in echo and "granian" in echo:
        q = echo["polyhost"] / echo["granian"]
        rows.append(("WebSocket echo ≥ 0.8× granian", f"{q:.2f}×", q >= 0.8))
    lp = extra.get("longpoll", {}).get("results", {}).get("polyhost (ASGI)")
    if lp:
        clients = extra["longpoll"]["clients"]
        ok = sum(v for k, v in lp["counts"].items() if k.startswith("200")) == clients
        rows.append((f"{clients:,} long polls on a 2-process ASGI site: all 200", "; ".join(
            f"{k}: {v}" for k, v in sorted(lp["counts"].items())), ok))
    w = extra.get("ws_idle")
    if w:
        total = (w["during"]["router"] + w["during"]["workers"]) / 1024
        pss = w["during"].get("pss")
        rows.append((f"{w['n']:,} idle WebSockets: router + workers < 150 MiB", f"{total:.1f} MiB RSS "
                     + (f"/ {pss / 1024:.1f} MiB PSS " if pss else "")
                     + f"({w['opened']:,} open)", total < 150 and w["opened"] == w["n"]))
        p = w["probe"]
        rows.append(("a fresh WebSocket client meanwhile < 10 ms", f"{p:.1f} ms" if isinstance(p, float) else str(p),
                     isinstance(p, float) and p < 10))
    if not rows:
        return
    L.append("| target (ASGI, tuned-equal) | measured | met? |")
    L.append("|---|---|---|")
    for label, value, ok in rows:
        L.append(f"| {label} | {value} | {'met' if ok else 'MISSED'} |")
    L.append("")


def report(args, results, notes, extra, meta, workloads):
    """`results`: {(workload, setting, c, system): {"runs"|"pending"}} for
    throughput, {(workload, setting, system): {"paced"|"pending"}} for latency."""
    thr = {k: v for k, v in results.items() if len(k) == 4}
    latr = {k: v for k, v in results.items() if len(k) == 3}
    med = throughput_medians(thr)
    lat = latency_medians(latr)
    L = [f"# polyhost benchmark — {meta['stamp']}\n"]
    L.append(f"- mode: {'quick (1 rep, short runs: validation only)' if args.quick else f'{args.reps} reps, interleaved'}; "
             f"wrk {args.duration}s per run, 2 threads, keep-alive, after a {args.warmup}s warm-up; "
             f"concurrency (wrk connections): {', '.join(map(str, args.concurrency))}")
    L.append(f"- machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']}, kernel {meta['kernel']}, {meta['os']}")
    L.append(f"- load average (1/5/15 min): start {meta['load_start']}, end {meta['load_end']}"
             + (f"; 1-min load during the wrk runs: min {meta['load_runs'][0]:.2f}, median {meta['load_runs'][1]:.2f}, "
                f"max {meta['load_runs'][2]:.2f}" if meta.get("load_runs") else ""))
    L.append("- load generator on the same machine; cores shared with other work")
    L.append("- errors: wrk's connect, read, write and timeout errors plus non-2xx answers (Debian's Apache allows "
             "150 workers at both settings, fewer than c = 256 connections)")
    L.append(f"- {ACCESS_LOGS}")
    for st in args.settings:
        L.append(f"- **{SETTING_LABEL[st]}**:")
        for t in SETTING_TEXT[st]:
            L.append(f"  - {t}")
    L.append("- polyhost serves both settings from one router (`[limits]` per-client connection cap raised: every "
             "client is 127.0.0.1); `static.bench` serves both (a static site has no process or thread numbers)")
    L.append("- versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    L.append("")
    for st in args.settings:
        if any(k[1] == st for k in thr):
            throughput_table(L, args, thr, med, workloads, st)
    if latr:
        latency_table(L, args, latr, lat)
    extras(L, extra)
    # Medians of the wire's p99 (`bench.WIRE_KINDS`) and of h2load's
    # (`bench.SECOND_CLIENT_KINDS`) per cell, where measured.
    extra = dict(extra, **{field: {
        key: statistics.median(x[field] for x in r["runs"] if x and x.get(field))
        for key, r in thr.items() if any(x and x.get(field) for x in r.get("runs", []))}
        for field in ("wire_p99", "h2_p99")})
    targets_table(L, args, med, lat, extra)
    if notes:
        L.append("## Notes\n")
        for n in notes:
            L.append(f"- {n}")
        L.append("")
    return "\n".join(L)


def from_json(path, workloads):
    """Renders the report of a saved run again (`bench.py --report-from
    results/<stamp>.json`), e.g. after a change to this file."""
    import argparse
    import json
    with open(path) as f:
        raw = json.load(f)
    results = {}
    for key, v in raw["results"].items():
        parts = key.split("|")
        if len(parts) == 4:
            parts[2] = int(parts[2])
        results[tuple(parts)] = v
    args = argparse.Namespace(**raw["args"])
    return report(args, results, raw.get("notes", []), raw["extra"], raw["meta"], workloads)

