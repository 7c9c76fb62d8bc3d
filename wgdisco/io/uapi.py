"""The WireGuard cross-platform UAPI socket, so that ``wg show`` and ``wg set`` work.

Protocol (https://www.wireguard.com/xplatform/, wireguard-go ``ipc/uapi_unix.go``
and ``device/uapi.go`` ``IpcHandle``): a Unix stream socket
``/var/run/wireguard/<iface>.sock``.  A request is the line ``get=1`` or
``set=1`` followed by ``key=value`` lines and ends with an empty line; the reply
ends with ``errno=N`` and an empty line.  One connection may carry several
requests, served in order until the client closes it.

This shell only frames requests: the raw request bytes (``get=1\\n\\n`` or
``set=1\\n...\\n\\n``) go to ``handler`` and whatever bytes it returns are
written back verbatim, so the handler produces the whole reply, ``errno=`` line
included.  A connection is closed without a reply on anything else: an unknown
first line, a ``get=1`` not followed by the empty line, a line longer than
``max_line`` (64 KiB), a request larger than ``max_request`` (no cap by default, as
wireguard-go), or EOF in the middle of a request.

Like wireguard-go, the socket is created with umask 077 (mode 0700: only its
owner, root, may connect) in a directory of mode 0755; a live socket of the same name
(another daemon answers) is refused, a stale one (nobody answers) replaced.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from wgdisco.errors import LocalError

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"
MAX_LINE = 64 * 1024  # one key=value line; a request has no total cap (wireguard-go reads it line by line)
OPERATIONS = (b"get=1\n", b"set=1\n")

Handler = Callable[[bytes], bytes | Awaitable[bytes]]


class UapiServer:
    """Serves one interface's UAPI socket on the running event loop."""

    def __init__(self, *, socket_dir: str | os.PathLike[str] = SOCKET_DIR, max_request: int | None = None,
                 max_line: int = MAX_LINE) -> None:
        self.socket_dir = Path(socket_dir)
        self.max_request = max_request  # None: no cap (`wg setconf` with 130,000 allowed-ips lines is 3 MB)
        self.max_line = max_line
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self._handler: Handler | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, iface: str, handler: Handler) -> None:
        """Listen on ``<socket_dir>/<iface>.sock`` and serve requests with ``handler``.

        ``handler`` takes the raw request bytes and returns the reply bytes; it may
        also be a coroutine function.  Raises LocalError if another process is
        already serving that socket or the socket cannot be made.
        """
        if self._server is not None:
            raise LocalError("UAPI server already started")
        if not iface or "/" in iface or iface.startswith(".") or "\0" in iface:
            raise LocalError(f"invalid interface name for a UAPI socket: {iface!r}")
        self.socket_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = self.socket_dir / f"{iface}.sock"
        sock = _listen(path)
        self._handler = handler  # before serving starts: the first client may come at once
        try:
            st = os.stat(path)
            self._server = await asyncio.start_unix_server(self._on_connection, sock=sock, limit=self.max_line)
        except BaseException:
            sock.close()
            path.unlink(missing_ok=True)
            raise
        self._inode = (st.st_dev, st.st_ino)
        self.path = path

    async def close(self) -> None:
        """Stop listening, drop open connections and remove the socket file (if still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        if self.path is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def __aenter__(self) -> UapiServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await self._read_request(reader)) is not None:
                reply = self._handler(request)  # type: ignore[misc]
                if inspect.isawaitable(reply):
                    reply = await reply
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("UAPI handler failed; closing the connection")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next whole request, or None at EOF or on anything malformed."""
        try:
            first = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                log.debug("UAPI: EOF inside the first line %r", e.partial[:32])
            return None
        except asyncio.LimitOverrunError:
            log.debug("UAPI: first line longer than %d bytes", self.max_line)
            return None
        if first not in OPERATIONS:
            log.debug("UAPI: invalid operation %r", first[:32])
            return None
        # Then key=value lines up to the empty line that ends the request.
        request = bytearray(first)
        try:
            if first == b"get=1\n":
                line = await reader.readexactly(1)
                if line != b"\n":
                    return None
                return bytes(request + line)
            while True:
                line = await reader.readuntil(b"\n")
                request += line
                if self.max_request is not None and len(request) > self.max_request:
                    log.debug("UAPI: request longer than %d bytes", self.max_request)
                    return None
                if line == b"\n":
                    return bytes(request)
        except asyncio.IncompleteReadError:
            log.debug("UAPI: EOF inside a request")
        except asyncio.LimitOverrunError:
            log.debug("UAPI: line longer than %d bytes", self.max_line)
        return None


async def answers_get(path: str | os.PathLike[str], timeout: float = 2.0) -> bool:
    """True if the server at ``path`` answers ``get=1`` with ``errno=0``, as it does for ``wg show``
    (the daemon's own check before it reports ready; the reply is read, never kept or shown)."""
    async def ask() -> bool:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(b"get=1\n\n")
            await writer.drain()
            tail = b""  # only the end is kept: a reply with many peers is megabytes
            while not tail.endswith(b"\n\n"):
                chunk = await reader.read(65536)
                if not chunk:
                    return False
                tail = (tail + chunk)[-16:]
        finally:
            writer.close()
        return (b"\n" + tail).endswith(b"\nerrno=0\n\n")  # the whole reply may be that line alone

    try:
        return await asyncio.wait_for(ask(), timeout)
    except (OSError, asyncio.TimeoutError):
        return False


def _listen(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, made with umask 077; stale sockets replaced."""
    try:
        return _bind(path)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise LocalError(f"cannot create UAPI socket {path}: {e.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _bind(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise LocalError(f"{path} exists and is not a socket; not replacing it")
    if _answers(path):
        raise LocalError(f"another process is already serving {path} (is the interface up already?)")
    os.unlink(path)  # stale: left behind by a daemon that died
    try:
        return _bind(path)
    except OSError as e:
        raise LocalError(f"cannot create UAPI socket {path}: {e.strerror}") from None


def _bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)  # as wireguard-go: no window where others could connect
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _answers(path: Path) -> bool:
    """True if some process accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        return e.errno == errno.EAGAIN  # backlog full: alive, just busy
    finally:
        probe.close()
    return True
