#!/usr/bin/python3
"""A stand-in for polyhost-python's ASGI side as the router sees it
(ASGI-CONTRACT), for tests of the router's WebSocket tunnel on their own:

- a WebSocket upgrade (Upgrade: websocket) to /deny: 403, then close;
- any other upgrade: 101 with Sec-WebSocket-Accept, and in the same write
  "HEAD " + the request head it received + "\\n\\n"; then every byte the
  client sends comes back (an echo of raw bytes: the router never parses
  frames, so none are needed here). SIGTERM: "GOING AWAY" on every open
  tunnel 1 s later, then exit;
- anything else: 200 with "pid=<pid>" and the request head.
"""
import base64
import hashlib
import os
import signal
import socket
import sys
import threading
import time

args = sys.argv[1:]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
tunnels = set()
lock = threading.Lock()


def header(lines, name):
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def serve(conn):
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            target = lines[0].split(b" ")[1]
            upgrade = (header(lines, b"upgrade") or b"").lower()
            if upgrade == b"websocket":
                if target == b"/deny":
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\ndenied")
                    return
                key = header(lines, b"sec-websocket-key") or b""
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\nHEAD " + head + b"\n\n"
                )
                with lock:
                    tunnels.add(conn)
                try:
                    if buf:
                        conn.sendall(buf)
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            return
                        conn.sendall(data)
                except OSError:
                    return
                finally:
                    with lock:
                        tunnels.discard(conn)
            body = b"pid=%d\n" % os.getpid() + head + b"\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def going_away(*_):
    def later():
        time.sleep(1)
        with lock:
            for t in list(tunnels):
                try:
                    t.sendall(b"GOING AWAY")
                    t.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        os._exit(0)
    threading.Thread(target=later, daemon=True).start()


signal.signal(signal.SIGTERM, going_away)
s = socket.socket(fileno=int(args[args.index("--socket-fd") + 1]))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
