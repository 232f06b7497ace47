"""A small, fast, real OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It speaks enough of the API for agentgym's clients: ``POST /v1/chat/completions`` (answers come
from a scripted ``responder``), ``GET /v1/models`` and ``GET /health``, over HTTP/1.1 with
keep-alive. It is a real server on a real socket (so client code is tested against the network,
not a mock) and cheap enough per request that client-side costs can be measured against it.

    with StubServer(lambda request: "The answer is 4.") as server:
        policy = OpenAIPolicy(server.base_url, model="stub")

Run it as a process: ``python -m agentgym.testing.stub_server --port 8123 --reply "hi"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["StubServer", "chat_response"]

Responder = Callable[[Mapping[str, Any]], str | Mapping[str, Any]]


def chat_response(request: Mapping[str, Any], reply: str | Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat.completion body answering ``request`` with ``reply`` (text or message)."""
    message = {"role": "assistant", "content": reply} if isinstance(reply, str) else dict(reply)
    n = int(request.get("n") or 1)
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
            "model": request.get("model", "stub"),
            "choices": [{"index": i, "message": message, "finish_reason": finish}
                        for i in range(n)],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection (requests with Content-Length bodies)."""

    def __init__(self, server: StubServer):
        self.server = server
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4: head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            method, path = head[0].split(" ")[:2]
            status, payload = self.server.handle(method, path, body)
            self._send(status, payload)

    def _send(self, status: int, payload: bytes) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        self.transport.write(  # type: ignore[attr-defined]
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)


class StubServer:
    """The server; a context manager that runs it on a background thread.

    Args:
        responder: ``request body -> reply`` (assistant text, or a message dict with
            ``tool_calls``); called for every chat request.
        port: 0 picks a free port.

    Attributes:
        requests: how many chat requests were served.
        connections: the open client connections (closed when the server stops, as a process
            that dies closes its sockets: clients see the connection drop, not a hang).
    """

    def __init__(self, responder: Responder, port: int = 0):
        self.responder, self.port = responder, port
        self.requests = 0
        self.connections: set[asyncio.BaseTransport] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Route one request; returns (status, JSON payload)."""
        if method == "GET" and path in ("/health", "/v1/health"):
            return 200, b"{}"
        if method == "GET" and path == "/v1/models":
            return 200, b'{"object": "list", "data": [{"id": "stub", "object": "model"}]}'
        if method != "POST" or path != "/v1/chat/completions":
            return 404, b'{"error": {"message": "not found"}}'
        try:
            request = json.loads(body)
        except json.JSONDecodeError:
            return 400, b'{"error": {"message": "body is not JSON"}}'
        self.requests += 1
        return 200, json.dumps(chat_response(request, self.responder(request))).encode()

    async def serve(self) -> None:
        """Serve until cancelled (for running in the caller's own loop or process)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", self.port,
                                          backlog=4096)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            for transport in list(self.connections):
                transport.close()
            await asyncio.sleep(0)  # let the loop run the closes before it stops

    def __enter__(self) -> StubServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="stub-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("stub server did not start")
        return self

    def _run(self) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self.serve())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)


def main() -> None:
    """``python -m agentgym.testing.stub_server``: serve a fixed reply until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--reply", default="The answer is 4.")
    args = parser.parse_args()
    server = StubServer(lambda request: args.reply, port=args.port)
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()
