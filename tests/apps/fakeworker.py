#!/usr/bin/python3
"""A stand-in for polyhost-python that speaks raw HTTP/1.1 on the worker
socket, for tests of what the router does with a misbehaving upstream:
/fold answers with an obs-folded header line, /cr with a bare CR inside a
header value; anything else echoes the request head it received."""
import os
import socket
import sys
import threading

args = sys.argv[1:]


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
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            target = lines[0].split(b" ")[1]
            if target == b"/fold":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n Set-Cookie: evil=1\r\n\r\nok")
            elif target == b"/cr":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bad: a\rSet-Cookie: evil=1\r\n\r\nok")
            else:
                body = head + b"\r\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


if "--socket-fd" in args:
    # polyhost's way: a socket it bound, handed over; listening means ready.
    s = socket.socket(fileno=int(args[args.index("--socket-fd") + 1]))
else:
    path = args[args.index("--socket") + 1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
