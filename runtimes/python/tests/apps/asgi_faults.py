"""ASGI apps that misbehave: a failing lifespan, a blocking call, a request
that never answers, an exception."""
import asyncio
import os
import time

MARKER_DIR = os.environ.get("MARKER_DIR", "/tmp")


def marker(name, text=""):
    with open(os.path.join(MARKER_DIR, name), "w") as f:
        f.write(text)


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
    elif path == "/error":
        raise RuntimeError("boom-in-async-app")
    elif path == "/hold":
        marker("holding")
        await asyncio.sleep(1.0)
        await ok(send, b"held")
    elif path == "/slow":
        await asyncio.sleep(1.0)
        await ok(send, b"slow done")
    else:
        await ok(send)
