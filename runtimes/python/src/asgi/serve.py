

class LifespanFailed(Exception):
    pass


class Lifespan:
    """The lifespan scope: startup before serving, shutdown after the drain."""

    def __init__(self, server):
        self.server = server
        self.queue = asyncio.Queue()
        self.startup = server.loop.create_future()
        self.shutdown = server.loop.create_future()
        self.task = None
        self.state = {}

    async def send(self, message):
        t = message["type"]
        fut = self.startup if t.startswith("lifespan.startup.") else self.shutdown
        if fut.done():
            raise RuntimeError(f"{t!r} out of order")
        if t.endswith(".complete"):
            fut.set_result(None)
        elif t.endswith(".failed"):
            fut.set_exception(LifespanFailed(message.get("message", "")))
        else:
            raise ValueError(f"unknown message type {t!r} in the lifespan scope")

    async def run_startup(self, mode):
        """True if the app took part; raises LifespanFailed."""
        server = self.server
        scope = {"type": "lifespan", "asgi": server.template.asgi, "state": self.state}
        self.queue.put_nowait({"type": "lifespan.startup"})
        self.task = server.loop.create_task(server.app(scope, self.queue.get, self.send))
        await asyncio.wait([self.task, self.startup], return_when=asyncio.FIRST_COMPLETED)
        if self.startup.done():
            self.startup.result()  # raises LifespanFailed
            return True
        exc = self.task.exception() if not self.task.cancelled() else None
        if mode == "on":
            if exc is not None:
                raise LifespanFailed(f"the lifespan handler raised: {exc!r}") from exc
            raise LifespanFailed("the app returned from the lifespan scope without lifespan.startup.complete")
        if exc is not None:
            log(f"ASGI lifespan is not supported by the app ({exc!r}); serving without it", server.site)
        return False

    async def run_shutdown(self, deadline):
        if self.task is None or self.task.done():
            return
        self.queue.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self.shutdown), max(0.1, deadline - time.monotonic()))
            self.shutdown.result()
        except asyncio.TimeoutError:
            log("lifespan shutdown did not finish before the graceful deadline", self.server.site)
        except LifespanFailed as e:
            log(f"lifespan shutdown failed: {e}", self.server.site)
        except Exception as e:  # noqa: B902
            self.server.log_error("lifespan shutdown raised:", e)


def watchdog(loop, beat, site):
    """A thread that logs the main thread's stack when the loop stalls."""
    main = threading.main_thread().ident
    reported = False
    while True:
        time.sleep(LAG / 4)
        lag = time.monotonic() - beat[0]
        if lag <= LAG:
            reported = False
            continue
        if reported:
            continue
        reported = True
        frame = sys._current_frames().get(main)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)\n"
        log(
            f"the event loop has not run for {lag:.1f}s: a blocking call in an async app? "
            f"The loop thread is at (most recent call last):\n{stack.rstrip()}",
            site,
        )


def unix_server_options(loop):
    """asyncio's own loop, from Python 3.13 on, stats the socket's path to
    remove the file when the server closes (`cleanup_socket`): the site's
    user cannot reach that path (a directory only root can), and the file is
    polyhost's (or, with --socket, removed by the worker's drain). uvloop
    has no such option."""
    if sys.version_info >= (3, 13) and isinstance(loop, asyncio.BaseEventLoop):
        return {"cleanup_socket": False}
    return {}


def new_loop():
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


async def main(server, lifespan, stop_fd):
    s = server.s
    loop = server.loop
    beat = [time.monotonic()]

    def heartbeat():
        beat[0] = time.monotonic()
        now = loop.time()
        for ws in list(server.websockets):
            ws.tick(now)
        loop.call_later(LAG / 4, heartbeat)

    heartbeat()
    threading.Thread(target=watchdog, args=(loop, beat, server.site), name="polyhost-watchdog", daemon=True).start()

    mode = s["lifespan"]
    if mode != "off":
        try:
            if await lifespan.run_startup(mode):
                # Copied into every scope only when the app put something
                # in it: an empty copy is 80 bytes for every open WebSocket,
                # and a scope without `state` is what an app without
                # lifespan gets anyway (the spec: optional; Starlette's
                # `request.state` makes its own).
                server.state = lifespan.state or None
        except LifespanFailed as e:
            log(f"lifespan startup failed: {e}", server.site)
            if e.__cause__ is not None:
                traceback.print_exception(type(e.__cause__), e.__cause__, e.__cause__.__traceback__, file=sys.stderr)
            return 3

    stop = loop.create_future()
    loop.add_reader(stop_fd, lambda: stop.done() or stop.set_result(None))
    sock = socket.socket(fileno=os.dup(s["listen"]()))
    sock.setblocking(False)
    listener = await loop.create_unix_server(
        lambda: HttpProtocol(server), sock=sock, backlog=4096, **unix_server_options(loop)
    )
    await stop
    loop.remove_reader(stop_fd)

    # Drain: stop accepting, close idle connections, let requests finish.
    deadline = time.monotonic() + s["graceful_timeout"]
    server.stopping = True
    listener.close()
    s["close_listener"]()
    for proto in list(server.conns):
        if proto.cycle is None and proto.ws is None:
            proto.transport.close()
    server.drained = loop.create_future()
    if server.in_flight > len(server.websockets):
        try:
            await asyncio.wait_for(server.drained, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            log(f"requests still running after {s['graceful_timeout']}s; exiting anyway", server.site)
    if server.websockets:
        # WebSockets stay open for the whole grace, then go away (1001).
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        for ws in list(server.websockets):
            ws.close(1001, "going away")
        end = time.monotonic() + 1.0
        while server.websockets and time.monotonic() < end:
            await asyncio.sleep(0.02)
    await lifespan.run_shutdown(deadline + 1.0)
    return 0


def serve(native_module, app, settings):
    global native
    native = native_module
    loop, kind = new_loop()
    asyncio.set_event_loop(loop)
    server = Server(app, settings, loop)
    lifespan = Lifespan(server)
    return loop.run_until_complete(main(server, lifespan, settings["stop_fd"]))
