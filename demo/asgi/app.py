"""The ASGI demo: a page that talks to the site over a WebSocket (echo),
written against the ASGI 3.0 spec alone (no framework to install)."""

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>polyhost ASGI demo</title></head>
<body>
<h1>polyhost ASGI demo</h1>
<p>This page is served by an ASGI app on polyhost-python's event loop. Type a
message: it goes to the site over a WebSocket and comes back.</p>
<form id="f"><input id="m" value="hello" autocomplete="off"> <button>send</button></form>
<pre id="log"></pre>
<script>
const log = (t) => { document.getElementById("log").textContent += t + "\\n"; };
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onopen = () => log("connected");
ws.onmessage = (e) => log("< " + e.data);
ws.onclose = (e) => log("closed " + e.code);
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const m = document.getElementById("m").value;
  log("> " + m);
  ws.send(m);
};
</script>
</body></html>
"""


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
            await send({"type": "websocket.send", "text": "echo: " + text})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                (b"content-length", str(len(PAGE)).encode())]})
        await send({"type": "http.response.body", "body": PAGE})
