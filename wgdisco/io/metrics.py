"""Prometheus text metrics over HTTP (``[Discovery] Metrics = 127.0.0.1:9586``).

A minimal HTTP/1.0 responder on the daemon's asyncio loop: ``GET /metrics`` gets the
text exposition format (version 0.0.4) from the handler; anything else gets 404.
Bind it to loopback unless you mean otherwise: it shows peers' public keys and traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

from wgdisco.errors import LocalError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    def __init__(self, render: Callable[[], str]) -> None:
        self.render = render
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        try:
            self.server = await asyncio.start_server(self._serve, host, port)
        except OSError as e:
            raise LocalError(f"metrics: cannot listen on {host}:{port}: {e.strerror or e}") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            line = request.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                body = self.render().encode()
                head = f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = f"HTTP/1.0 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
