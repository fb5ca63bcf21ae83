"""Small asyncio HTTP/1.1 clients for what wrk cannot do (stdlib only).

- `paced`: an open-loop load at a fixed offered rate over keep-alive
  connections; each request's latency is measured from the moment it was
  *scheduled*, so a stall is not hidden (no coordinated omission).
- `long_polls`: N clients connect at once and each sends one slow request;
  outcomes are counted per status or per failure kind.
- `idle_connections`: N keep-alive connections that each made one request and
  then stay idle, held while a callback measures the server.
"""

import asyncio
import time


class HttpError(Exception):
    pass


async def read_response(reader):
    """Reads one response; returns (status, body length). Handles
    Content-Length, chunked, and close-delimited bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HttpError(f"bad status line {lines[0][:60]!r}")
    status = int(parts[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    size = 0
    if chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(n + 2)
            size += n
    elif length is not None:
        await reader.readexactly(length)
        size = length
    elif status not in (204, 304):
        body = await reader.read()
        size = len(body)
        close = True
    return status, size, close


def request_bytes(host, path, close=False):
    conn = "close" if close else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode()


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


async def paced(port, host, path, rate, duration, conns=50, warmup=1.0):
    """Offers `rate` req/s for `duration` s over `conns` keep-alive
    connections (round-robin slots). Returns latencies (ms, from the
    scheduled start) and counts."""
    total = int(rate * duration)
    interval = 1.0 / rate
    latencies = []
    counts = {"ok": 0, "non2xx": 0, "errors": 0}
    loop = asyncio.get_running_loop()
    req = request_bytes(host, path)

    async def connect():
        return await asyncio.open_connection("127.0.0.1", port)

    # Warm the connections (and the server) first, unmeasured. A server that
    # closes after an answer (gunicorn's sync worker; Apache after
    # MaxKeepAliveRequests) gets a new connection, or the first measured
    # request on it would fail.
    streams = [await connect() for _ in range(conns)]
    t_end = loop.time() + warmup
    while loop.time() < t_end:
        for i, (r, w) in enumerate(streams):
            w.write(req)
            _, _, close = await read_response(r)
            if close:
                w.close()
                streams[i] = await connect()
    start = loop.time() + 0.05

    async def worker(i):
        r, w = streams[i]
        for k in range(i, total, conns):
            scheduled = start + k * interval
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if w is None:
                    r, w = await connect()
                w.write(req)
                status, _, close = await read_response(r)
                latencies.append((loop.time() - scheduled) * 1000.0)
                counts["ok" if 200 <= status < 300 else "non2xx"] += 1
                if close:
                    w.close()
                    w = None
            except (OSError, asyncio.IncompleteReadError, HttpError, ValueError):
                counts["errors"] += 1
                if w is not None:
                    w.close()
                w = None
        if w is not None:
            w.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    elapsed = loop.time() - start
    latencies.sort()
    return {
        "offered": rate,
        "achieved": (counts["ok"] + counts["non2xx"]) / elapsed if elapsed > 0 else 0.0,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": latencies[-1] if latencies else None,
        **counts,
    }


async def long_polls(port, host, path, clients, timeout):
    """`clients` connections opened at once, one slow request each. Returns
    {outcome: count} and {outcome: [first, last] seconds}."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one():
        w = None
        try:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=10
                )
            except asyncio.TimeoutError:
                return "connect timeout"
            except OSError as e:
                return f"connect error ({e.strerror or e})"
            w.write(request_bytes(host, path, close=True))
            try:
                status, _, _ = await asyncio.wait_for(read_response(r), timeout=timeout)
                return str(status)
            except asyncio.TimeoutError:
                return f"no answer in {timeout:.0f}s"
            except asyncio.IncompleteReadError:
                return "closed without answer"
            except ConnectionResetError:
                return "connection reset"
            except (OSError, HttpError, ValueError) as e:
                return f"error ({type(e).__name__})"
        finally:
            if w is not None:
                w.close()

    async def timed():
        outcome = await one()
        return outcome, loop.time() - t0

    results = await asyncio.gather(*(timed() for _ in range(clients)))
    counts, spans = {}, {}
    for outcome, at in results:
        if outcome == "200":
            # Which round of the long poll it finished in.
            outcome = f"200 @~{round(at / 5) * 5:.0f}s"
        counts[outcome] = counts.get(outcome, 0) + 1
        lo, hi = spans.get(outcome, (at, at))
        spans[outcome] = (min(lo, at), max(hi, at))
    return counts, spans


async def idle_connections(port, host, path, n, measure, probe_host, probe_path, hold=0.0):
    """Opens `n` keep-alive connections, each makes one request, then stays
    idle. Calls `measure()` while they are held, then times a request on a
    fresh connection. Returns (opened, measure(), probe status, probe ms,
    still open after the probe)."""
    streams = []
    req = request_bytes(host, path)
    failures = 0

    async def open_one():
        nonlocal failures
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 20)
            w.write(req)
            status, _, _ = await asyncio.wait_for(read_response(r), 20)
            if status == 200:
                streams.append((r, w))
            else:
                failures += 1
                w.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HttpError):
            failures += 1

    # Open in batches so the listen backlog is not the thing measured.
    for i in range(0, n, 500):
        await asyncio.gather(*(open_one() for _ in range(min(500, n - i))))
    await asyncio.sleep(1.0)
    measured = measure()
    t = time.perf_counter()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        w.write(request_bytes(probe_host, probe_path, close=True))
        status, _, _ = await asyncio.wait_for(read_response(r), 10)
        w.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HttpError) as e:
        status = f"failed ({type(e).__name__})"
    probe_ms = (time.perf_counter() - t) * 1000.0
    # Are the idle connections still open (not closed by the server)?
    await asyncio.sleep(max(hold, 0.2))
    still_open = 0
    for r, w in streams:
        if not r.at_eof() and not w.is_closing():
            still_open += 1
    for _, w in streams:
        w.close()
    return len(streams), failures, measured, status, probe_ms, still_open
