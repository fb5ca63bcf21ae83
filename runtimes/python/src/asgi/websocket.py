

NO_MESSAGES = ()  # a WebSocket's queue while no message waits


class WebSocket(Waiting):
    """One WebSocket: the handshake answer, then frames through `native.WsCodec`."""

    CONNECTING, OPEN, CLOSING, CLOSED = range(4)
    __slots__ = (
        "proto", "server", "scope", "key", "state", "codec", "pending", "queue", "connect_sent", "waiter",
        "close_code", "close_reason", "denial", "task", "ping_sent", "close_timer",
    )

    def __init__(self, proto, scope, key):
        self.proto = proto
        self.server = proto.server
        self.scope = scope
        self.key = key
        self.state = self.CONNECTING
        self.codec = None
        self.pending = b""  # bytes that came before the app accepted
        # A list while messages wait (not a deque: an empty deque holds a
        # 64-slot block, ~600 bytes; at most WS_QUEUE_HIGH messages wait, so
        # pop(0) stays cheap), the shared empty tuple while none do: an
        # idle WebSocket holds no list (72 bytes each).
        self.queue = NO_MESSAGES
        self.connect_sent = False
        self.waiter = None
        self.close_code = 1006
        self.close_reason = ""
        self.denial = None  # websocket.http.response: [status, headers, head sent]
        self.task = None
        self.ping_sent = None
        self.close_timer = None

    def start(self, data):
        server = self.server
        server.in_flight += 1
        server.websockets.add(self)
        self.pending = data
        # The app's own coroutine is the task, with no wrapper coroutine
        # around it (one frame less for as long as the WebSocket is open,
        # ~230 bytes); `ended` does what the wrapper's except/finally did.
        try:
            call = server.app(self.scope, self.receive, self.send)
        except BaseException as e:  # noqa: B902 - handled as the task's error
            call = _raise(e)
        if not asyncio.iscoroutine(call):
            call = _await(call)  # any other awaitable
        # A shared name: asyncio's own ("Task-N") is a string per task.
        self.task = server.loop.create_task(call, name="polyhost-websocket")
        # The WebSocket itself is the callback (`__call__` = `ended`; a
        # bound method would be 80 bytes more per WebSocket), run in one
        # shared, empty context, not a copy of the current one per
        # WebSocket: `ended` reads no context variable.
        self.task.add_done_callback(self, context=server.callback_context)

    # Input.

    def data_received(self, data):
        if self.codec is None:
            self.pending += data
            if len(self.pending) > (1 << 20):
                self.proto.pause()
            return
        queue = self.queue
        for ev in self.codec.feed(data):
            kind = ev[0]
            if kind == "text" or kind == "bytes":
                if queue is NO_MESSAGES:
                    queue = self.queue = []
                queue.append({"type": "websocket.receive", kind: ev[1]})
            elif kind == "pong":
                self.ping_sent = None
            else:  # close or error: the codec has queued the answer
                self.close_code, self.close_reason = ev[1], ev[2]
                self.flush()
                self.closed()
                self.proto.transport.close()
        self.flush()
        if len(self.queue) > WS_QUEUE_HIGH:
            self.proto.pause()
        self.wake()

    def flush(self):
        out = self.codec.take_output() if self.codec is not None else None
        if out and not self.proto.closed:
            self.proto.transport.write(out)

    def closed(self):
        if self.state != self.CLOSED:
            self.state = self.CLOSED
            if self.close_timer is not None:
                self.close_timer.cancel()
            self.wake()

    def lost(self):
        self.closed()

    async def receive(self):
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            queue = self.queue
            if queue:
                msg = queue.pop(0)
                if not queue:
                    self.queue = NO_MESSAGES
                if self.proto.read_paused and len(queue) < WS_QUEUE_HIGH // 2:
                    self.proto.resume()
                return msg
            if self.state == self.CLOSED:
                return {"type": "websocket.disconnect", "code": self.close_code, "reason": self.close_reason}
            # Waiting.wait, inline: one coroutine frame less per message
            # and per idle WebSocket.
            waiter = self.waiter = self.server.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None

    # Output.

    async def send(self, message):
        t = message["type"]
        transport = self.proto.transport
        if self.state == self.CONNECTING:
            if t == "websocket.accept":
                head = native.ws_accept_head(self.key, message.get("subprotocol"), message.get("headers", ()))
                transport.write(head)
                self.key = None
                self.state = self.OPEN
                self.codec = native.WsCodec(self.server.s["ws_max_message"])  # idle from now
                if self.pending:
                    data, self.pending = self.pending, b""
                    self.proto.resume()
                    self.data_received(data)
                return
            if t == "websocket.close":
                transport.write(native.simple_response(403, "Forbidden", True))
                transport.close()
                self.state = self.CLOSED
                return
            if t == "websocket.http.response.start":
                self.denial = [message["status"], message.get("headers", ()), False]
                self.state = self.CLOSING
                return
            raise RuntimeError(f"{t!r} before websocket.accept")
        if self.denial is not None:
            if t != "websocket.http.response.body" or self.state == self.CLOSED:
                raise RuntimeError(f"{t!r} after websocket.http.response.start")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not self.denial[2]:
                head, mode, _ = native.response_head(
                    self.denial[0], self.denial[1], False, False, False, more, len(body), False
                )
                self.denial[2] = True
                transport.write(head)
                self.denial.append(mode)
            if body:
                if self.denial[3] == native.MODE_CHUNKED:
                    transport.write(b"%x\r\n%b\r\n" % (len(body), body))
                else:
                    transport.write(body)
            if not more:
                if self.denial[3] == native.MODE_CHUNKED:
                    transport.write(b"0\r\n\r\n")
                transport.close()
                self.state = self.CLOSED
            return
        if self.state != self.OPEN:
            raise native.ClientDisconnected(f"the WebSocket is closed (code {self.close_code})")
        if t == "websocket.send":
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            self.codec.send(data)
            self.flush()
            if self.proto.write_paused:
                await self.proto.drained()
            return
        if t == "websocket.close":
            self.close(message.get("code", 1000), message.get("reason") or "")
            return
        raise ValueError(f"unknown message type {t!r} in a websocket scope")

    def close(self, code, reason=""):
        """Starts the close handshake; the connection goes when the peer
        answers or 5 s later."""
        if self.state != self.OPEN:
            return
        self.state = self.CLOSING
        self.close_code = code
        self.close_reason = reason
        self.codec.close(code, reason)
        self.flush()
        self.close_timer = self.server.loop.call_later(5.0, self.abort)

    def abort(self):
        self.closed()
        self.proto.transport.abort()

    def tick(self, now):
        """Pings and timeouts, once a second."""
        if self.state != self.OPEN:
            return
        s = self.server.s
        if self.ping_sent is not None and now - self.ping_sent > s["ws_ping_timeout"]:
            self.close_code, self.close_reason = 1011, "keepalive ping timeout"
            self.abort()
            return
        idle = self.codec.idle()  # since the peer last sent anything
        if s["ws_idle_timeout"] and idle >= s["ws_idle_timeout"]:
            self.close(1001, "idle timeout")
            return
        if s["ws_ping_interval"] and self.ping_sent is None and idle >= s["ws_ping_interval"]:
            self.ping_sent = now
            self.codec.ping()
            self.flush()

    def ended(self, task):
        """The app's task is done: what it left open is closed, its error
        logged (once, with its traceback)."""
        server = self.server
        transport = self.proto.transport
        try:
            if task.cancelled():
                transport.abort()
                return
            e = task.exception()
            if e is None:
                if self.state == self.CONNECTING:
                    transport.write(native.simple_response(403, "Forbidden", True))
                    transport.close()
                elif self.state == self.OPEN:
                    self.close(1000)
                elif self.denial is not None and self.state != self.CLOSED:
                    transport.close()
                return
            # (KeyboardInterrupt and SystemExit have already left the loop:
            # asyncio raises them out of the task's step.)
            if not (self.state == self.CLOSED and isinstance(e, OSError)):
                server.log_error(f"error in the application for WebSocket {self.scope['path']}:", e)
            if self.state == self.CONNECTING:
                transport.write(native.simple_response(500, "Internal Server Error", True))
                transport.close()
            elif self.state == self.OPEN:
                self.close(1011, "internal error")
            else:
                transport.close()
        finally:
            server.websockets.discard(self)
            server.done_one()

    __call__ = ended  # the task's done callback (see `start`)


async def _raise(e):
    """An app call that raised, as a coroutine: its task fails with `e`."""
    raise e


async def _await(awaitable):
    """An app call that returned an awaitable that is not a coroutine."""
    return await awaitable
