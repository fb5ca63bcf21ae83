"""Starlette and FastAPI apps: lifespan state, a streaming response,
server-sent events, a WebSocket endpoint."""
import asyncio
import contextlib

from fastapi import FastAPI, Request as FRequest, WebSocket as FWebSocket
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}


async def index(request):
    return PlainTextResponse(f"{request.state.greeting} path={request.url.path} root={request.scope['root_path']}")


async def stream(request):
    async def parts():
        for i in range(3):
            yield f"chunk {i}\n"
            await asyncio.sleep(0.01)
    return StreamingResponse(parts(), media_type="text/plain")


async def sse(request):
    async def events():
        for i in range(3):
            yield f"event: tick\ndata: {i}\n\n"
            await asyncio.sleep(0.01)
    return StreamingResponse(events(), media_type="text/event-stream")


async def echo(ws):
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(f"echo: {text}")


async def upload(request):
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return PlainTextResponse(f"got {n}")


app = Starlette(
    routes=[Route("/", index), Route("/stream", stream), Route("/sse", sse),
            Route("/upload", upload, methods=["POST"]), WebSocketRoute("/ws", echo)],
    lifespan=lifespan,
)

api = FastAPI(lifespan=lifespan)


@api.get("/items/{item_id}")
async def item(item_id: int, request: FRequest, q: str = ""):
    return {"item_id": item_id, "q": q, "greeting": request.state.greeting}


@api.websocket("/ws")
async def api_ws(ws: FWebSocket):
    await ws.accept()
    data = await ws.receive_json()
    await ws.send_json({"got": data})
    await ws.close(code=4000)
