"""WebSocket endpoints for the protocol tests."""
import asyncio
import os

MARKER_DIR = os.environ.get("MARKER_DIR", "/tmp")


def marker(name, text=""):
    # Written whole, then renamed: a test that sees the file sees its text.
    path = os.path.join(MARKER_DIR, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain http"})
        return
    assert scope["type"] == "websocket"
    m = await receive()
    assert m["type"] == "websocket.connect", m
    path = scope["path"]
    if path == "/reject":
        await send({"type": "websocket.close", "code": 1008})
        return
    if path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"no entry"})
        return
    sub = scope["subprotocols"][0] if scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": sub, "headers": [(b"x-ws", b"yes")]})
    if path == "/flood":
        sent = 0
        try:
            while True:
                await send({"type": "websocket.send", "bytes": b"x" * 65536})
                sent += 65536
                marker("flood", str(sent))
        except OSError:
            marker("flood-ended", str(sent))
        return
    if path == "/raise":
        raise RuntimeError("boom-in-websocket")
    if path == "/close":
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        m = await receive()
        marker("close-disconnect", str(m.get("code")))
        return
    while True:  # echo
        m = await receive()
        if m["type"] == "websocket.disconnect":
            marker("disconnect", str(m["code"]))
            return
        if m.get("text") == "scope":
            import json
            await send({"type": "websocket.send", "text": json.dumps(
                {"scheme": scope["scheme"], "path": scope["path"], "subprotocols": scope["subprotocols"]})})
            continue
        if m.get("text") is not None:
            await send({"type": "websocket.send", "text": m["text"]})
        else:
            await send({"type": "websocket.send", "bytes": m["bytes"]})


class Calls:
    """`app` behind a call that is not a coroutine function: on
    `/sync-raise` the call itself raises (before any coroutine exists); on
    `/future` it returns an awaitable that is not a coroutine (a Task)."""

    def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and scope["path"] == "/sync-raise":
            raise RuntimeError("boom-before-the-coroutine")
        if scope["type"] == "websocket" and scope["path"] == "/future":
            return asyncio.ensure_future(app(scope, receive, send))
        return app(scope, receive, send)


calls = Calls()
