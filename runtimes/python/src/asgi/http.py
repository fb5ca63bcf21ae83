"""polyhost's ASGI 3.0 server: the event-loop half of `polyhost-python --interface asgi`.

Loaded from the worker binary (see src/asgi/mod.rs); `native` is the Rust
half: head parsing and scopes, response heads, WebSocket framing.

Per connection, `HttpProtocol` reads heads, runs one `Cycle` (an HTTP
request) or one `WebSocket` at a time, and keeps the connection alive
between requests. Flow control: a request body or WebSocket input that the
app does not take stops reading (`pause_reading`); an app whose output the
client does not take waits in `send` (`pause_writing` -> a drain future).
"""
import asyncio
import collections
import contextvars
import os
import re
import socket
import sys
import threading
import time
import traceback

native = None  # set by serve()
BODY_HIGH = 1 << 20  # request body bytes queued for the app before reading pauses
WS_QUEUE_HIGH = 64  # WebSocket messages queued for the app before reading pauses
DRAIN_LIMIT = 64 << 20  # unread request body thrown away to keep a connection
HEX = re.compile(rb"[0-9a-fA-F]{1,15}")
LAG = 1.0  # seconds the loop may not turn before the watchdog speaks


def log(msg, site=None):
    prefix = f"polyhost-python: site {site}: " if site else "polyhost-python: "
    sys.stderr.write(prefix + msg + "\n")
    sys.stderr.flush()


class Waiting:
    """One coroutine at a time (the app's `receive`) waits for input."""

    __slots__ = ()

    def wake(self):
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self):
        self.waiter = self.proto.server.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class Server:
    def __init__(self, app, settings, loop):
        self.app = app
        self.s = settings
        self.site = settings["site"]
        self.loop = loop
        self.template = native.ScopeTemplate()
        self.state = None  # lifespan state (None if empty), copied into every scope
        self.conns = set()
        self.websockets = set()
        self.in_flight = 0
        self.stopping = False
        self.drained = None
        self.timeout = settings["request_timeout"] or None
        self.callback_context = contextvars.Context()  # see WebSocket.start

    def log_error(self, what, exc=None):
        log(what, self.site)
        if exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            sys.stderr.flush()

    def done_one(self):
        self.in_flight -= 1
        if self.drained is not None and self.in_flight <= len(self.websockets):
            if not self.drained.done():
                self.drained.set_result(None)


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("server", "transport", "buf", "cycle", "ws", "closed", "read_paused", "write_paused", "drain")

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.buf = b""
        self.cycle = None
        self.ws = None
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self.drain = None

    def connection_made(self, transport):
        self.transport = transport
        self.server.conns.add(self)

    def connection_lost(self, exc):
        self.closed = True
        self.server.conns.discard(self)
        if self.cycle is not None:
            self.cycle.disconnected()
        if self.ws is not None:
            self.ws.lost()
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    async def drained(self):
        while self.write_paused and not self.closed:
            if self.drain is None or self.drain.done():
                self.drain = self.server.loop.create_future()
            await self.drain

    def pause(self):
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume(self):
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def data_received(self, data):
        if self.ws is not None:
            self.ws.data_received(data)
            return
        self.buf = self.buf + data if self.buf else data
        self.process()

    def process(self):
        while not self.closed:
            cycle = self.cycle
            if cycle is not None:
                if self.buf and not cycle.body_done:
                    used = cycle.feed(self.buf)
                    self.buf = self.buf[used:] if used < len(self.buf) else b""
                if self.cycle is cycle:
                    if self.buf and cycle.body_done:
                        self.pause()  # a pipelined request waits
                    return
            if not self.buf:
                return
            server = self.server
            r = server.template.parse(self.buf, server.state)
            if r is None:
                return
            if len(r) == 2:
                self.transport.write(native.simple_response(r[0], r[1], True))
                self.transport.close()
                return
            head_len, scope, chunked, length, keep_alive, expect, key = r
            self.buf = self.buf[head_len:]
            if server.stopping:
                keep_alive = False
            if server.in_flight >= server.s["max_concurrency"]:
                self.transport.write(
                    native.simple_response(503, "polyhost-python: over max-concurrency", not keep_alive)
                )
                if not keep_alive:
                    self.transport.close()
                    return
                cycle = Cycle(self, scope, chunked, length, keep_alive, False)
                cycle.discard = True
                cycle.complete = True
                if not cycle.body_done:
                    self.cycle = cycle
                continue
            if key is not None:
                self.ws = WebSocket(self, scope, key)
                data, self.buf = self.buf, b""
                self.ws.start(data)
                return
            self.cycle = Cycle(self, scope, chunked, length, keep_alive, expect)
            self.cycle.start()

    def loop_soon_next(self):
        """The cycle's response is complete and its body read: the
        connection takes the next request (now, if one is buffered)."""
        self.cycle = None
        self.resume()
        if self.buf:
            self.server.loop.call_soon(self.process)


class Cycle(Waiting):
    """One HTTP request: the app's task, its body, its response."""

    __slots__ = (
        "proto", "scope", "keep_alive", "expect", "chunked", "left", "cstate", "body_done", "body",
        "queued", "final_sent", "discard", "waiter", "lost", "started", "head_sent", "complete", "mode",
        "task", "timed_out", "timer", "status", "headers", "trailers",
    )

    def __init__(self, proto, scope, chunked, length, keep_alive, expect):
        self.proto = proto
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect = expect
        self.chunked = chunked
        self.left = length  # body bytes left (Content-Length) or in the chunk
        self.cstate = 0  # chunked: 0 size line, 1 data, 2 data end, 3 trailers
        self.body_done = not chunked and length == 0
        self.body = collections.deque()
        self.queued = 0
        self.final_sent = False  # the app got more_body=False
        self.discard = False
        self.waiter = None
        self.lost = False
        self.started = False
        self.head_sent = False
        self.complete = False
        self.mode = 0
        self.task = None
        self.timed_out = False
        self.timer = None

    def start(self):
        server = self.proto.server
        server.in_flight += 1
        self.task = server.loop.create_task(self.run())
        if server.timeout:
            self.timer = server.loop.call_later(server.timeout, self.on_timeout)

    # The request body.

    def push(self, data):
        if self.discard:
            self.queued += len(data)
            if self.queued > DRAIN_LIMIT:
                self.proto.transport.close()
            return
        self.body.append(data)
        self.queued += len(data)
        if self.queued > BODY_HIGH:
            self.proto.pause()
        self.wake()

    def feed(self, buf):
        """Takes body bytes from the start of `buf`; returns how many."""
        if not self.chunked:
            n = min(self.left, len(buf))
            self.push(buf[:n] if n < len(buf) else buf)
            self.left -= n
            if self.left == 0:
                self.body_done = True
                self.wake()
                if self.complete:
                    self.proto.loop_soon_next()
            return n
        pos = 0
        end = len(buf)
        while not self.body_done:
            if self.cstate == 1:
                n = min(self.left, end - pos)
                if n == 0:
                    return pos
                self.push(buf[pos:pos + n])
                pos += n
                self.left -= n
                if self.left == 0:
                    self.cstate = 2
                continue
            i = buf.find(b"\r\n", pos)
            if i < 0:
                if end - pos > 8192:
                    self.broken()
                return pos
            line = buf[pos:i]
            pos = i + 2
            if self.cstate == 0:
                size = line.split(b";", 1)[0].strip()
                if not HEX.fullmatch(size):
                    self.broken()
                    return pos
                self.left = int(size, 16)
                self.cstate = 1 if self.left else 3
            elif self.cstate == 2:
                if line:
                    self.broken()
                    return pos
                self.cstate = 0
            elif not line:
                self.body_done = True
                self.wake()
                if self.complete:
                    self.proto.loop_soon_next()
        return pos

    def broken(self):
        self.proto.transport.close()
        self.disconnected()

    def disconnected(self):
        self.lost = True
        self.wake()

    async def receive(self):
        while True:
            if self.body:
                if len(self.body) == 1:
                    data = self.body.popleft()
                else:
                    data = b"".join(self.body)
                    self.body.clear()
                self.queued = 0
                self.proto.resume()
                more = not self.body_done
                self.final_sent = not more
                return {"type": "http.request", "body": data, "more_body": more}
            if self.body_done and not self.final_sent:
                self.final_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.lost or self.complete:
                # After the response (as uvicorn does): nothing more will come.
                return {"type": "http.disconnect"}
            if self.expect and not self.head_sent:
                self.expect = False
                self.proto.transport.write(native.CONTINUE)
            await self.wait()

    # The response.

    async def send(self, message):
        t = message["type"]
        if t == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError(
                    "http.response.body before http.response.start"
                    if not self.started
                    else "http.response.body after the response was complete"
                )
            if self.lost:
                raise native.ClientDisconnected("the client went away")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            self.write(body, more)
            if self.proto.write_paused:
                await self.proto.drained()
            return
        if t == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.status = message["status"]
            self.headers = message.get("headers", ())
            self.trailers = message.get("trailers", False)
            self.started = True
            return
        if t == "http.response.trailers":
            if not (self.started and self.trailers and self.head_sent) or self.complete:
                raise RuntimeError("http.response.trailers not announced or out of order")
            if not message.get("more_trailers", False):
                if self.mode == native.MODE_CHUNKED:
                    self.proto.transport.write(native.trailers(message.get("headers", ())))
                self.finish()
            return
        if t == "http.response.pathsend":
            if not self.started or self.complete:
                raise RuntimeError("http.response.pathsend out of order")
            await self.send_file(message["path"])
            return
        raise ValueError(f"unknown message type {t!r} in an http scope")

    async def send_file(self, path):
        """`http.response.pathsend`: the file with its length, read and
        written a piece at a time (flow control between pieces)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.proto.transport.write(self.head(False, size))
            left = size if self.mode == native.MODE_LENGTH else 0
            while left > 0 and not self.lost:
                piece = f.read(min(left, 256 << 10))
                if not piece:
                    self.proto.transport.close()  # the file shrank: the length was a lie
                    return
                left -= len(piece)
                self.proto.transport.write(piece)
                if self.proto.write_paused:
                    await self.proto.drained()
        self.finish()

    def head(self, more, first_len):
        """The response head (raises ValueError for a bad status or header:
        nothing was sent then, so the error still becomes a 500)."""
        head, self.mode, self.keep_alive = native.response_head(
            self.status,
            self.headers,
            self.scope["method"] == "HEAD",
            self.scope["http_version"] == "1.0",
            self.keep_alive,
            more,
            first_len,
            self.trailers,
        )
        self.head_sent = True
        return head

    def write(self, body, more):
        transport = self.proto.transport
        if not self.head_sent:
            head = self.head(more, len(body))
            if self.mode == native.MODE_LENGTH and not more:
                transport.write(head + body if body else head)
                self.finish()
                return
            transport.write(head)
        mode = self.mode
        if body and mode != native.MODE_NONE:
            if mode == native.MODE_CHUNKED:
                transport.write(b"%x\r\n%b\r\n" % (len(body), body))
            else:
                transport.write(body)
        if not more:
            if self.trailers and mode == native.MODE_CHUNKED:
                return  # the trailers message ends the response
            if mode == native.MODE_CHUNKED:
                transport.write(b"0\r\n\r\n")
            self.finish()

    def finish(self):
        self.complete = True
        proto = self.proto
        if not self.keep_alive or self.lost or proto.server.stopping:
            proto.transport.close()
        elif not self.body_done:
            self.discard = True
            self.body.clear()
            proto.resume()
        else:
            proto.loop_soon_next()

    async def run(self):
        server = self.proto.server
        try:
            await server.app(self.scope, self.receive, self.send)
            if not self.complete:
                if not self.head_sent and not self.lost:
                    server.log_error(
                        f"the application returned without a complete response for "
                        f"{self.scope['method']} {self.scope['path']}"
                    )
                    self.error_page(500)
                else:
                    self.proto.transport.close()
        except asyncio.CancelledError:
            if not self.timed_out:  # (a timeout has answered already)
                self.proto.transport.close()
        except BaseException as e:  # noqa: B902 - the app's error is logged, never raised
            if not (self.lost and isinstance(e, OSError)):
                server.log_error(
                    f"error in the application for {self.scope['method']} {self.scope['path']}:", e
                )
            if not self.head_sent and not self.lost:
                self.error_page(500)
            else:
                self.proto.transport.close()
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            if self.timer is not None:
                self.timer.cancel()
            server.done_one()
            self.task = None

    def error_page(self, status):
        self.head_sent = True
        self.keep_alive = self.keep_alive and self.body_done
        self.proto.transport.write(native.simple_response(status, _reason(status), not self.keep_alive))
        self.finish()

    def on_timeout(self):
        self.timer = None
        if self.task is None or self.task.done():
            return
        self.timed_out = True
        # Answered now, not when the task ends: it may ignore the cancellation.
        if not self.head_sent and not self.lost:
            self.error_page(504)
        elif not self.complete:
            self.proto.transport.close()
        self.task.cancel()
        server = self.proto.server
        server.log_error(
            f"request_timeout ({server.timeout}s) for {self.scope['method']} {self.scope['path']}: cancelled"
        )
        task = self.task
        server.loop.call_later(5.0, self.cancel_failed, task)

    def cancel_failed(self, task):
        if not task.done():
            self.proto.server.log_error(
                f"a request cancelled by request_timeout still runs 5 s later "
                f"({self.scope['method']} {self.scope['path']}); exiting so the supervisor restarts the process"
            )
            os._exit(1)


def _reason(status):
    return {500: "Internal Server Error", 504: "Gateway Timeout", 403: "Forbidden"}.get(status, "Error")

