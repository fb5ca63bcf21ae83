"""The ASGI app of every ASGI workload, the same file for every server:

- `GET /` → 13 B "Hello, World!" (ASGI hello);
- `GET /poll?s=N` → waits N seconds (asyncio.sleep), then "polled" (long polls);
- a WebSocket on any path → echoes every message, text as text, bytes as bytes.

Lifespan is answered (startup/shutdown complete), so servers that run it by
default have nothing to report.
"""

import asyncio

HELLO = b"Hello, World!"
TEXT = (b"content-type", b"text/plain")


async def application(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        await http(scope, send)
    elif kind == "websocket":
        await echo(receive, send)
    elif kind == "lifespan":
        await lifespan(receive, send)


async def http(scope, send):
    body = HELLO
    if scope["path"] == "/poll":
        query = dict(p.split(b"=", 1) for p in scope["query_string"].split(b"&") if b"=" in p)
        await asyncio.sleep(float(query.get(b"s", b"1")))
        body = b"polled"
    await send({"type": "http.response.start", "status": 200,
                "headers": [TEXT, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def echo(receive, send):
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message["text"]})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


app = application
