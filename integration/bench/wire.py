"""Latency on the wire: each request's first segment to its response's
first segment on loopback, from a tcpdump capture of one port. The
servers' own time, without the client's: wrk shares the machine's CPUs
with the servers it measures, and its share suffers unequally beside
different servers (docs/performance.md, "The recycling tail, split
between server and client"). Needs tcpdump (run.sh installs it).
"""

import os
import shutil
import struct
import subprocess
import tempfile


def available():
    return shutil.which("tcpdump") is not None


def around(port, run):
    """`run()` with `port` captured: its result, and the latencies on the
    wire meanwhile (seconds, sorted)."""
    fd, path = tempfile.mkstemp(prefix="bench-wire.", suffix=".pcap")
    os.close(fd)
    try:
        td = capture(port, path)
        try:
            result = run()
        finally:
            td.terminate()
            td.wait()
        return result, latencies(path, port)
    finally:
        os.unlink(path)


def percentile_ms(lat, q):
    """The q-th percentile of `latencies`' result, in ms (None if empty)."""
    return lat[min(len(lat) - 1, len(lat) * q // 100)] * 1e3 if lat else None


def capture(port, path):
    """tcpdump of the requests and responses on `port` (their first
    segments: pushed ones, 80 bytes each), started and ready."""
    td = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "80", "-B", "262144",
                           "--time-stamp-precision=nano", "-w", path,
                           f"tcp port {port} and tcp[tcpflags] & tcp-push != 0"],
                          stderr=subprocess.PIPE, text=True)
    td.stderr.readline()  # "listening on lo ..."
    return td


def latencies(path, port):
    """Seconds from each request's first segment to its response's first
    segment on loopback, per connection (wrk sends the next request only
    after a response): the servers' time alone, without the client's
    (which shares the machine's CPUs with them)."""
    data = open(path, "rb").read()
    nano = struct.unpack("<I", data[:4])[0] == 0xa1b23c4d
    off, asked, out = 24, {}, []
    while off + 16 <= len(data):
        ts_s, ts_f, incl, _ = struct.unpack("<IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ts = ts_s + ts_f / (1e9 if nano else 1e6)
        ip = pkt[14:]  # Ethernet (lo)
        if len(ip) < 40:
            continue
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        sport, dport = struct.unpack(">HH", tcp[:4])
        if struct.unpack(">H", ip[2:4])[0] - ihl - (tcp[12] >> 4) * 4 <= 0:
            continue
        if dport == port:
            asked[sport] = ts
        elif sport == port and dport in asked:
            out.append(ts - asked.pop(dport))
    return sorted(out)
