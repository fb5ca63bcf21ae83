"""WebSocket clients for the benchmark (stdlib only; RFC 6455 client side,
as much of it as an echo load needs).

- `echo`: round trips per second over N connections, each sending a 64-byte
  binary message and waiting for its echo before the next one (closed loop,
  like wrk's keep-alive connections). The connections are split over
  several client processes, each an epoll loop over plain sockets: asyncio
  costs more per message than the servers measured here, and a client that
  is the bottleneck would make every server look the same.
- `idle`: N WebSockets opened (handshake done) and then left idle while a
  callback measures the server; then a fresh client's handshake and one
  echo, timed.
"""

import asyncio
import base64
import multiprocessing
import os
import select
import socket
import time

MASK = b"\x37\xfa\x21\x3d"


def request(host, path):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def masked(payload, opcode=0x2):
    """A client frame (clients must mask), FIN set, payload < 126 bytes."""
    assert len(payload) < 126
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + MASK + body


def status_of(head):
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def connect(port, host, path, timeout=10):
    """A blocking socket with the handshake done; raises on anything but 101."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(request(host, path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during the handshake after {head[:60]!r}")
        head += chunk
    if status_of(head) != 101:
        first = head.split(b"\r\n", 1)[0]
        raise ConnectionError(f"handshake answered {first!r}")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _echo_worker(port, host, path, conns, seconds, out):
    payload = bytes(range(64))
    frame = masked(payload)
    reply = bytes([0x82, 64]) + payload
    socks = [connect(port, host, path) for _ in range(conns)]
    ep = select.epoll()
    pending = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        pending[s.fileno()] = (s, bytearray())
        s.send(frame)
    trips = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for fd, _ev in ep.poll(0.1):
            s, buf = pending[fd]
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            if not chunk:
                errors += 1
                ep.unregister(fd)
                continue
            buf += chunk
            while len(buf) >= len(reply):
                if buf[:len(reply)] != reply:
                    errors += 1
                del buf[:len(reply)]
                trips += 1
                s.send(frame)
    for s in socks:
        s.close()
    out.put((trips, errors))


def echo(port, host, path, conns=64, seconds=10, procs=2):
    """{"rtps": round trips/s, "errors": n}: `conns` connections split over
    `procs` client processes, for `seconds`."""
    out = multiprocessing.Queue()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = [multiprocessing.Process(target=_echo_worker, args=(port, host, path, n, seconds, out)) for n in per]
    t = time.monotonic()
    for w in workers:
        w.start()
    got = [out.get(timeout=seconds + 60) for _ in workers]
    for w in workers:
        w.join(10)
    wall = time.monotonic() - t
    trips = sum(g[0] for g in got)
    return {"rtps": trips / seconds, "trips": trips, "errors": sum(g[1] for g in got), "wall": wall}


async def _open(port, host, path, sem):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writer.write(request(host, path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if status_of(head) != 101:
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        return reader, writer


def probe_ms(port, host, path):
    """A fresh client: connect, handshake, one 64-byte echo; milliseconds."""
    t = time.perf_counter()
    s = connect(port, host, path)
    payload = b"p" * 64
    s.sendall(masked(payload))
    want = 2 + len(payload)
    got = b""
    while len(got) < want:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the echo")
        got += chunk
    ms = (time.perf_counter() - t) * 1000
    s.close()
    if got[2:want] != payload:
        raise ConnectionError(f"echo came back as {got[:20]!r}")
    return ms


async def idle(port, host, path, n, measure):
    """Opens `n` WebSockets (200 handshakes at a time), calls `measure()`
    while they are open, then times a fresh client. Returns (opened, failed,
    measured, probe ms or the probe's error)."""
    sem = asyncio.Semaphore(200)
    results = await asyncio.gather(*(_open(port, host, path, sem) for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    failed = len(results) - len(conns)
    await asyncio.sleep(2)  # let the servers settle (buffers, allocator)
    measured = measure()
    try:
        probe = await asyncio.to_thread(probe_ms, port, host, path)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        probe = f"{type(e).__name__}: {e}"
    for _reader, writer in conns:
        writer.close()
    return len(conns), failed, measured, probe
