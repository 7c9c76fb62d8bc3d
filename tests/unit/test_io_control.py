"""The control socket shell (io/control.py) in a temporary directory: what `wgdisco status` talks to."""

from __future__ import annotations

import asyncio
import stat

import pytest

from wgdisco.errors import LocalError
from wgdisco.io import control


def handler(command: str) -> object:
    if command != "status":
        raise LocalError(f"unknown command {command!r}")
    return {"interface": "wgt0", "peers": []}


@pytest.mark.asyncio
async def test_status_round_trip_mode_and_errors(tmp_path) -> None:
    server = control.ControlServer(socket_dir=tmp_path)
    await server.start("wgt0", handler)
    try:
        assert stat.S_IMODE((tmp_path / "wgt0.sock").stat().st_mode) == 0o600  # as docs/cli.md says
        answer = await asyncio.to_thread(control.request, "wgt0", socket_dir=str(tmp_path))
        assert answer == {"interface": "wgt0", "peers": []}
        answer = await asyncio.to_thread(control.request, "wgt0", "frobnicate", socket_dir=str(tmp_path))
        assert answer == {"error": "unknown command 'frobnicate'"}
        assert control.interfaces(str(tmp_path)) == ["wgt0"]
        with pytest.raises(LocalError, match="in use"):
            await control.ControlServer(socket_dir=tmp_path).start("wgt0", handler)
    finally:
        await server.close()
    assert not (tmp_path / "wgt0.sock").exists()


@pytest.mark.asyncio
async def test_an_oversized_line_is_dropped_quietly(tmp_path) -> None:
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server = control.ControlServer(socket_dir=tmp_path)
    await server.start("wgt1", handler)
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "wgt1.sock"))
        writer.write(b"s" * 70_000 + b"\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
        writer.close()
        answer = await asyncio.to_thread(control.request, "wgt1", socket_dir=str(tmp_path))
        assert answer["interface"] == "wgt0"  # still serving
    finally:
        await server.close()
    await asyncio.sleep(0)
    assert errors == []


@pytest.mark.asyncio
async def test_a_stale_socket_is_replaced(tmp_path) -> None:
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "wgt2.sock"))
    stale.close()  # the file stays, nobody answers
    server = control.ControlServer(socket_dir=tmp_path)
    await server.start("wgt2", handler)
    try:
        assert (await asyncio.to_thread(control.request, "wgt2", socket_dir=str(tmp_path)))["peers"] == []
    finally:
        await server.close()
