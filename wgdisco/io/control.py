"""The control socket: ``/run/wgdisco/<iface>.sock``, what ``wgdisco status`` talks to.

One request per connection: a command line (``status``), answered with one JSON
document, then the server closes. The socket is mode 0600 in a 0755 directory
(status shows endpoints and traffic, never keys beyond public ones). A stale
socket is replaced; a live one (another daemon) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

from wgdisco.errors import LocalError

CONTROL_DIR = "/run/wgdisco"
MAX_REQUEST = 4096

Handler = Callable[[str], Any]  # command -> a JSON-able value


class ControlServer:
    def __init__(self, *, socket_dir: str | os.PathLike[str] = CONTROL_DIR) -> None:
        self.dir = Path(socket_dir)
        self.path: Path | None = None
        self.server: asyncio.AbstractServer | None = None

    async def start(self, iface: str, handler: Handler) -> None:
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = self.dir / f"{iface}.sock"
        if path.exists():
            if _answers(path):
                raise LocalError(f"{path} is in use: is another wgdisco running {iface}?")
            path.unlink()
        self.handler = handler
        old = os.umask(0o077)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # as documented: read and write for root, nothing to execute
        self.path = path

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            command = line[:MAX_REQUEST].decode("ascii", "replace").strip()
            try:
                answer: Any = self.handler(command)
                if inspect.isawaitable(answer):  # a command that takes time (reload)
                    answer = await answer
            except LocalError as e:
                answer = {"error": str(e)}
            writer.write(json.dumps(answer, indent=2).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except (asyncio.LimitOverrunError, ValueError):  # a line over MAX_REQUEST: not a command
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
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(iface: str, command: str = "status", *, socket_dir: str = CONTROL_DIR, timeout: float = 5.0) -> Any:
    """Ask a running daemon; LocalError when none answers for ``iface``."""
    path = Path(socket_dir) / f"{iface}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    except FileNotFoundError:
        raise LocalError(f"no wgdisco is running {iface} ({path} does not exist)") from None
    except OSError as e:
        raise LocalError(f"cannot talk to {path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise LocalError(f"{path} answered something that is not JSON") from None


def interfaces(socket_dir: str = CONTROL_DIR) -> list[str]:
    return sorted(p.stem for p in Path(socket_dir).glob("*.sock"))
