"""Uploads that cannot tie up the server: a byte limit enforced while the body arrives.

Starlette parses a multipart form before the endpoint runs, spooling it to disk; by then a
2 GB upload has already been read. `UploadLimit` sits in front: a declared `Content-Length`
over the limit is refused before the body is read, and a body without one (chunked) is counted
as it comes and refused the moment it passes the limit. Before answering, what the client is
still sending is read and dropped, up to `drain_bytes` and `drain_seconds` (a lingering close,
as nginx does), so the client reads a 413 rather than a reset connection. A client that stops
sending mid-body is answered 408 after `idle_timeout` seconds rather than holding a worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

# Multipart framing, field names and the small form fields beside the files.
FORM_OVERHEAD = 1 << 20


async def send_problem(send, status: int, reason: str, error: str) -> None:
    body = json.dumps({"error": error, "reason": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def megabytes(n: int) -> str:
    return f"{n / 1e6:g} MB"


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UploadLimit:
    """ASGI middleware: a request body may hold `photos_for(path)` photos of `photo_bytes` each,
    plus the form around them; a longer one is answered 413 `too_large`."""

    def __init__(
        self,
        app,
        photo_bytes: int,
        photos_for: Callable[[str], int],
        idle_timeout: float = 30.0,
        drain_bytes: int = 32 << 20,
        drain_seconds: float = 5.0,
    ):
        self.app = app
        self.photo_bytes = photo_bytes
        self.photos_for = photos_for
        self.idle_timeout = idle_timeout
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.photos_for(scope["path"]) * self.photo_bytes + FORM_OVERHEAD
        too_large = (
            413,
            "too_large",
            f"the upload is too large: photos may be {megabytes(self.photo_bytes)} at most",
        )
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            if declared <= limit + self.drain_bytes:
                await self._drain(receive)
            return await send_problem(send, *too_large)

        received, refused, body_done, started = 0, None, False, False

        async def receive_within_limit():
            nonlocal received, refused, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:  # after the body, receive() only waits for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except asyncio.TimeoutError:
                refused = (408, "upload_timeout", "the upload stalled; send it again")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refused = too_large
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message):
            nonlocal started
            if refused:  # the app's answer to a cut-off body is replaced by ours
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_unless_refused)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            if refused is too_large and not body_done:
                await self._drain(receive)
            await send_problem(send, *refused)

    async def _drain(self, receive) -> None:
        """Read and drop the rest of the body, within the drain limits."""
        loop = asyncio.get_running_loop()
        deadline, dropped = loop.time() + self.drain_seconds, 0
        while dropped <= self.drain_bytes:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))
