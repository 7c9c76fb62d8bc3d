"""wgdisco.io.uapi: the UAPI socket server (temp socket dir, no root), plus real `wg` if present."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from wgdisco.errors import LocalError
from wgdisco.lab import require_tool, skip_or_fail
from wgdisco.io.uapi import UapiServer

GET_REPLY = b"private_key=" + b"11" * 32 + b"\nlisten_port=51820\nerrno=0\n\n"
SET_REPLY = b"errno=0\n\n"


class Recorder:
    """A handler that records requests and answers get/set with canned replies."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def __call__(self, request: bytes) -> bytes:
        self.requests.append(request)
        return GET_REPLY if request.startswith(b"get=1\n") else SET_REPLY


@pytest.fixture
def iface() -> str:
    return f"wgt{secrets.token_hex(3)}"


@pytest_asyncio.fixture
async def served(tmp_path, iface):
    handler = Recorder()
    server = UapiServer(socket_dir=tmp_path / "wireguard")
    await server.start(iface, handler)
    yield server, handler
    await server.close()


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 5)


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One reply: everything up to and including the empty line after errno=."""
    return await asyncio.wait_for(reader.readuntil(b"errno=0\n\n"), 5)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


@pytest.mark.asyncio
async def test_get_and_set(served, tmp_path, iface):
    server, handler = served
    path = tmp_path / "wireguard" / f"{iface}.sock"
    assert server.path == path
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700  # umask 077, as wireguard-go: owner only
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755

    reader, writer = await connect(path)
    writer.write(b"get=1\n\n")
    assert await reply(reader) == GET_REPLY
    writer.close()

    set_request = b"set=1\nlisten_port=51821\npublic_key=" + b"22" * 32 + b"\nallowed_ip=10.0.0.2/32\n\n"
    reader, writer = await connect(path)
    writer.write(set_request)
    assert await reply(reader) == SET_REPLY
    writer.close()
    assert handler.requests == [b"get=1\n\n", set_request]


@pytest.mark.asyncio
async def test_several_requests_on_one_connection(served):
    server, handler = served
    reader, writer = await connect(server.path)
    # Pipelined in one write, and split at awkward places in another.
    writer.write(b"get=1\n\nset=1\nfwmark=0\n\n")
    assert await reply(reader) == GET_REPLY
    assert await reply(reader) == SET_REPLY
    for chunk in (b"se", b"t=1\n", b"\n", b"get=1", b"\n", b"\n"):
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)
    assert await reply(reader) == SET_REPLY  # "set=1\n\n": an empty set is valid
    assert await reply(reader) == GET_REPLY
    writer.write_eof()
    assert await closed_by_server(reader)
    writer.close()
    assert handler.requests == [b"get=1\n\n", b"set=1\nfwmark=0\n\n", b"set=1\n\n", b"get=1\n\n"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [
        b"hello\n",  # unknown operation
        b"get=2\n\n",
        b"get=1\nx\n\n",  # get carries no keys
        b"GET / HTTP/1.0\r\n\r\n",
        b"\n",
    ],
)
async def test_garbage_closes_connection(served, garbage):
    server, handler = served
    reader, writer = await connect(server.path)
    writer.write(garbage)
    assert await closed_by_server(reader)
    writer.close()
    assert handler.requests == []
    await check_still_serving(server)


@pytest.mark.asyncio
async def test_oversize_request_closes_connection(tmp_path, iface):
    handler = Recorder()
    async with UapiServer(socket_dir=tmp_path, max_request=4096, max_line=4096) as server:
        await server.start(iface, handler)
        for request in (
            b"set=1\n" + b"x" * 10_000,  # one endless line
            b"set=1\n" + b"fwmark=0\n" * 1000,  # many lines, never the empty one
        ):
            reader, writer = await connect(server.path)
            writer.write(request)
            assert await closed_by_server(reader)
            writer.close()
        assert handler.requests == []
        await check_still_serving(server)


@pytest.mark.asyncio
async def test_a_large_request_is_read_whole_by_default(tmp_path, iface):
    # `wg setconf` with 130,561 allowed-ips lines is about 3.3 MB: wireguard-go takes it, so do we
    handler = Recorder()
    body = b"".join(b"allowed_ip=10.%d.%d.%d/32\n" % (i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(130_561))
    request = b"set=1\npublic_key=" + b"ab" * 32 + b"\n" + body + b"\n"
    async with UapiServer(socket_dir=tmp_path) as server:
        await server.start(iface, handler)
        reader, writer = await connect(server.path)
        writer.write(request)
        await writer.drain()
        assert await reader.readuntil(b"\n\n") == b"errno=0\n\n"
        writer.close()
    assert handler.requests == [request] and len(request) > 3_000_000


@pytest.mark.asyncio
async def test_eof_mid_request_and_failing_handler(tmp_path, iface):
    calls = []

    def handler(request: bytes) -> bytes:
        calls.append(request)
        if b"boom" in request:
            raise RuntimeError("handler bug")
        return SET_REPLY

    async with UapiServer(socket_dir=tmp_path) as server:
        await server.start(iface, handler)
        reader, writer = await connect(server.path)
        writer.write(b"set=1\nlisten_port=1\n")
        writer.write_eof()
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server.path)
        writer.write(b"set=1\nboom=1\n\n")
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server.path)
        writer.write(b"set=1\n\n")
        assert await reply(reader) == SET_REPLY
        writer.close()
    assert calls == [b"set=1\nboom=1\n\n", b"set=1\n\n"]


@pytest.mark.asyncio
async def test_async_handler(tmp_path, iface):
    async def handler(request: bytes) -> bytes:
        await asyncio.sleep(0)
        return SET_REPLY

    async with UapiServer(socket_dir=tmp_path) as server:
        await server.start(iface, handler)
        reader, writer = await connect(server.path)
        writer.write(b"get=1\n\n")
        assert await reply(reader) == SET_REPLY
        writer.close()


async def check_still_serving(server: UapiServer) -> None:
    reader, writer = await connect(server.path)
    writer.write(b"get=1\n\n")
    assert await reply(reader) == GET_REPLY
    writer.close()


@pytest.mark.asyncio
async def test_close_removes_socket_and_drops_clients(tmp_path, iface):
    server = UapiServer(socket_dir=tmp_path)
    await server.start(iface, Recorder())
    path = server.path
    reader, writer = await connect(path)  # an idle client must not block close()
    await asyncio.wait_for(server.close(), 5)
    assert not path.exists()
    assert await closed_by_server(reader)
    writer.close()
    await server.close()  # idempotent


@pytest.mark.asyncio
async def test_close_leaves_a_successors_socket(tmp_path, iface):
    server = UapiServer(socket_dir=tmp_path)
    await server.start(iface, Recorder())
    path = server.path
    path.unlink()  # someone removed ours and made their own
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        await server.close()
        assert path.exists()
    finally:
        other.close()


@pytest.mark.asyncio
async def test_stale_socket_is_replaced(tmp_path, iface):
    path = tmp_path / f"{iface}.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a daemon that died
    assert path.exists()
    async with UapiServer(socket_dir=tmp_path) as server:
        await server.start(iface, Recorder())
        await check_still_serving(server)


@pytest.mark.asyncio
async def test_live_socket_is_refused(tmp_path, iface):
    async with UapiServer(socket_dir=tmp_path) as first:
        await first.start(iface, Recorder())
        second = UapiServer(socket_dir=tmp_path)
        with pytest.raises(LocalError, match="another process is already serving .*\\.sock"):
            await second.start(iface, Recorder())
        await check_still_serving(first)  # untouched


@pytest.mark.asyncio
async def test_non_socket_file_is_not_replaced(tmp_path, iface):
    path = tmp_path / f"{iface}.sock"
    path.write_text("precious")
    with pytest.raises(LocalError, match="is not a socket"):
        await UapiServer(socket_dir=tmp_path).start(iface, Recorder())
    assert path.read_text() == "precious"


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden"])
async def test_bad_interface_names(tmp_path, bad):
    with pytest.raises(LocalError, match="invalid interface name"):
        await UapiServer(socket_dir=tmp_path).start(bad, Recorder())


# --- real `wg` (wireguard-tools) against the server -------------------------------------------

PRIVATE_HEX = "a8" + "5e" * 30 + "4f"  # any 32 bytes; wg derives the public key itself
PEER_HEX = "c4" * 32


def _x25519_public_hex(private_hex: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _b64(hex_key: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_key)).decode()


@pytest.mark.asyncio
async def test_real_wg_show_dump(iface):
    # skipped without wg or as an ordinary user; a failure under WGDISCO_REQUIRE_NETNS=1 (CI runs as root)
    wg = require_tool("wg")
    socket_dir = Path("/var/run/wireguard")  # where wg looks; the name is unique to this run
    if not os.access(socket_dir if socket_dir.exists() else socket_dir.parent, os.W_OK):
        skip_or_fail(f"cannot write {socket_dir} (wg only looks there; run as root)")
    canned = (
        f"private_key={PRIVATE_HEX}\nlisten_port=51820\n"
        f"public_key={PEER_HEX}\nendpoint=198.51.100.2:51820\nallowed_ip=10.0.0.2/32\n"
        f"allowed_ip=fd00::2/128\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
        f"rx_bytes=1234\ntx_bytes=5678\npersistent_keepalive_interval=25\nerrno=0\n\n"
    ).encode()
    requests: list[bytes] = []

    def handler(request: bytes) -> bytes:
        requests.append(request)
        return canned

    server = UapiServer(socket_dir=socket_dir)
    await server.start(iface, handler)
    try:
        proc = await asyncio.create_subprocess_exec(
            wg, "show", iface, "dump", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        await server.close()
    assert not (socket_dir / f"{iface}.sock").exists()
    assert proc.returncode == 0, err.decode()
    assert requests == [b"get=1\n\n"]
    lines = [line.split("\t") for line in out.decode().splitlines()]
    assert lines == [
        [_b64(PRIVATE_HEX), _b64(_x25519_public_hex(PRIVATE_HEX)), "51820", "off"],
        [_b64(PEER_HEX), "(none)", "198.51.100.2:51820", "10.0.0.2/32,fd00::2/128", "0", "1234", "5678", "25"],
    ]
