"""A second load generator for the latency targets measured under a closed
loop: h2load (nghttp2's benchmark client, HTTP/1.1 with `--h1`), run like
the benchmark's wrk (2 threads, C kept-alive connections, D seconds), its
percentiles computed from its per-request log.

Why a second client: a co-located client's latency includes its own wait
for a CPU, and that wait is not the same beside different servers. wrk's
p99 for the PHP recycling workload is 1.3-2.0x nginx + php-fpm's at
c = 16 while, in the same minutes, h2load's is 1.1x and the wire's (the
servers alone, `wire`) 1.03-1.15x (docs/performance.md, "The recycling
p99 with a second client, and the Node swing"). Needs h2load (run.sh
installs nghttp2-client).
"""

import os
import shutil
import subprocess
import tempfile

from loadgen import percentile


def available():
    return shutil.which("h2load") is not None


def run(port, host, path, conns, duration, threads=2):
    """h2load against 127.0.0.1:port with `Host: host`: {requests, rps, p50,
    p99 (µs, as wrk's report), errors}, or None if it did not run."""
    fd, log = tempfile.mkstemp(prefix="bench-h2load.", suffix=".tsv")
    os.close(fd)
    try:
        cmd = ["h2load", "--h1", "-t", str(threads), "-c", str(conns), "-D", str(duration),
               f"--log-file={log}", "-H", f":authority: {host}", f"http://127.0.0.1:{port}{path}"]
        try:
            # h2load's -D run can outlast its duration when a server closes
            # every connection (an HTTP/1.0 answer): bounded, like a failure.
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        return summary(log, duration)
    finally:
        os.unlink(log)


def summary(log, duration):
    """The run's numbers from h2load's log: one line per request, tab
    separated: start (µs since the epoch), status, µs to the response's end."""
    took, errors = [], 0
    with open(log) as f:
        for line in f:
            fields = line.split("\t")
            if len(fields) < 3:
                continue
            if 200 <= int(fields[1]) < 400:
                took.append(int(fields[2]))
            else:
                errors += 1
    if not took:
        return None
    took.sort()
    return {"requests": len(took), "rps": len(took) / duration, "errors": errors,
            "p50": percentile(took, 50), "p99": percentile(took, 99)}
