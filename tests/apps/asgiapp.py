"""A raw ASGI 3.0 app (no framework) for polyhost's WebSocket tests.

HTTP: any path answers 200 "asgi root_path=<root_path> path=<path> pid=<pid>".
WebSocket /echo: accepts, sends text back as text and bytes back as bytes;
the text "close:<code>" closes with that code (reason "bye"). /deny closes
before accepting (the client gets 403).
"""
import os


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif kind == "http":
        while (await receive()).get("more_body"):
            pass
        body = ("asgi root_path=%s path=%s pid=%d" % (scope["root_path"], scope["path"], os.getpid())).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif kind == "websocket":
        connect = await receive()
        assert connect["type"] == "websocket.connect", connect
        if scope["path"].endswith("/deny"):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                await send({"type": "websocket.close", "code": int(text[6:]), "reason": "bye"})
                return
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
