"""An ASGI 3.0 app that checks every scope and message the server gives it
against the spec (in the spirit of wsgiref.validate) and fails loudly: an
AssertionError reaches the error log, which the tests check is clean."""
import asyncio
import hashlib
import json
import os

MARKER_DIR = os.environ.get("MARKER_DIR", "/tmp")


def marker(name, text=""):
    # Written whole, then renamed: a test that sees the file sees its text.
    path = os.path.join(MARKER_DIR, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def check_scope(scope):
    assert scope["type"] == "http", scope["type"]
    assert scope["asgi"]["version"] == "3.0", scope["asgi"]
    assert isinstance(scope["asgi"].get("spec_version"), str), scope["asgi"]
    assert scope["http_version"] in ("1.0", "1.1"), scope["http_version"]
    assert isinstance(scope["method"], str) and scope["method"] == scope["method"].upper()
    assert scope["scheme"] in ("http", "https"), scope["scheme"]
    assert isinstance(scope["path"], str) and scope["path"].startswith("/"), scope["path"]
    assert isinstance(scope["raw_path"], bytes), scope["raw_path"]
    assert isinstance(scope["query_string"], bytes), scope["query_string"]
    assert isinstance(scope["root_path"], str) and not scope["root_path"].endswith("/")
    assert isinstance(scope["headers"], list)
    for pair in scope["headers"]:
        assert len(pair) == 2, pair
        name, value = pair
        assert isinstance(name, bytes) and isinstance(value, bytes), pair
        assert name == name.lower(), name
        assert not name.startswith(b"x-polyhost-"), name
    for key in ("client", "server"):
        v = scope.get(key)
        assert v is None or (len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)), (key, v)
    assert isinstance(scope.get("state", {}), dict)


class Checked:
    """receive/send wrappers that check the protocol's order."""

    def __init__(self, receive, send, head):
        self._receive = receive
        self._send = send
        self.head = head
        self.body_done = False
        self.disconnected = False
        self.started = False
        self.complete = False
        self.messages = 0
        self.max_chunk = 0

    async def receive(self):
        m = await self._receive()
        assert not self.disconnected, f"a message after http.disconnect: {m}"
        if m["type"] == "http.request":
            assert not self.body_done, f"http.request after more_body=False: {m}"
            assert isinstance(m.get("body", b""), bytes), m
            assert isinstance(m.get("more_body", False), bool), m
            self.messages += 1
            self.max_chunk = max(self.max_chunk, len(m.get("body", b"")))
            self.body_done = not m.get("more_body", False)
        else:
            assert m["type"] == "http.disconnect", m
            self.disconnected = True
        return m

    async def send(self, m):
        if m["type"] == "http.response.start":
            assert not self.started
            self.started = True
        else:
            assert m["type"] == "http.response.body" and self.started and not self.complete, m
            self.complete = not m.get("more_body", False)
        await self._send(m)

    async def body(self):
        h = hashlib.sha256()
        n = 0
        while not self.body_done:
            m = await self.receive()
            if m["type"] == "http.disconnect":
                raise OSError("disconnected while reading the body")
            h.update(m.get("body", b""))
            n += len(m.get("body", b""))
        return n, h.hexdigest()


def plain(obj):
    if isinstance(obj, bytes):
        return obj.decode("latin-1")
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        m = await receive()
        assert m["type"] == "lifespan.startup", m
        scope["state"]["answer"] = 42
        await send({"type": "lifespan.startup.complete"})
        m = await receive()
        assert m["type"] == "lifespan.shutdown", m
        marker("shutdown")
        await send({"type": "lifespan.shutdown.complete"})
        return
    check_scope(scope)
    c = Checked(receive, send, scope["method"] == "HEAD")
    path = scope["path"]
    if path.endswith("/upload"):
        n, digest = await c.body()
        out = {"len": n, "sha256": digest, "messages": c.messages, "max_chunk": c.max_chunk}
        await respond(c, json.dumps(out).encode())
    elif path.endswith("/stream"):
        await c.body()
        await c.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await c.send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await c.send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path.endswith("/forever"):
        await c.body()
        await c.send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await c.send({"type": "http.response.body", "body": b"tick\n" * 100, "more_body": True})
                await asyncio.sleep(0.01)
        except OSError:
            pass
        m = await c.receive()
        assert m["type"] == "http.disconnect", m
        marker("disconnected")
        return
    else:
        await c.body()
        info = plain({k: v for k, v in scope.items() if k not in ("asgi", "extensions")})
        info["asgi"] = scope["asgi"]
        info["extensions"] = sorted(scope.get("extensions") or {})
        await respond(c, json.dumps(info).encode())
    assert c.complete
    m = await c.receive()
    assert m["type"] == "http.disconnect", f"after the response: {m}"


async def respond(c, body):
    # Headers as lists, not tuples: the spec allows any iterable of pairs.
    await c.send({"type": "http.response.start", "status": 200,
                  "headers": [[b"content-type", b"application/json"], [b"x-head", b"yes" if c.head else b"no"]]})
    await c.send({"type": "http.response.body", "body": body})
