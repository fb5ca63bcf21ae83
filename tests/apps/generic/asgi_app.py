"""An ASGI app for uvicorn (`--fd 3`): the user's own Python server."""
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = "asgi server=uvicorn pid={} uid={} path={} env={}".format(
        os.getpid(), os.getuid(), scope["path"], os.environ.get("FIXTURE_ENV", "<unset>")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
