"""ASGI apps that misbehave: a failing lifespan, a blocking call, a request
that never answers, an exception."""
import asyncio
import os
import time

MARKER_DIR = os.environ.get("MARKER_DIR", "/tmp")


def marker(name, text=""):
    # Written whole, then renamed: a test that sees the file sees its text.
    path = os.path.join(MARKER_DIR, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


async def ok(send, body=b"ok"):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def lifespan_fails(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable at db:5432"})
        return
    await ok(send)


async def lifespan_raises(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("startup exploded")
    await ok(send)


async def no_lifespan(scope, receive, send):
    assert scope["type"] == "http", "this app knows no lifespan"
    await ok(send)


# /slow's barrier (one worker per test: nothing to reset).
SLOW = {"in_flight": 0, "all_here": asyncio.Event()}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return  # lifespan=auto: unsupported, served without
    path = scope["path"]
    if path == "/block":
        time.sleep(2.5)  # the blocking call the watchdog must show
        await ok(send, b"blocked")
    elif path == "/hang":
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            marker("cancelled")
            raise
    elif path == "/hang-started":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.sleep(3600)
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200, "headers": [("x-str", "not bytes")]})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/error":
        raise RuntimeError("boom-in-async-app")
    elif path == "/stubborn":
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            marker("swallowed")
            await asyncio.sleep(3600)  # ignores the cancellation
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})
    elif path == "/pathsend":
        f = os.path.join(MARKER_DIR, "file.txt")
        with open(f, "wb") as out:
            out.write(b"from a file\n" * 50000)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": f})
    elif path == "/flood":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sent = 0
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
                sent += 65536
                marker("flood", str(sent))
        except OSError:
            marker("flood-ended", str(sent))
    elif path == "/hold":
        marker("holding")
        await asyncio.sleep(3.0)
        await ok(send, b"held")
    elif path == "/slow":
        # A barrier: each request waits until `n` are in flight at once, which
        # only happens if they share the loop (one at a time, the first would
        # wait alone until its 60 s give-up and say how many it saw).
        n = int(scope["query_string"].decode().partition("n=")[2] or 1)
        SLOW["in_flight"] += 1
        if SLOW["in_flight"] >= n:
            SLOW["all_here"].set()
        try:
            await asyncio.wait_for(SLOW["all_here"].wait(), 60)
        except asyncio.TimeoutError:
            pass
        await ok(send, b"slow done, %d in flight" % SLOW["in_flight"])
    else:
        await ok(send)
