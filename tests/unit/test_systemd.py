"""wgdisco.io.systemd: sd_notify datagrams on a real AF_UNIX socket, and journal-aware log lines.

The daemon's use of it (READY=1 only after the UAPI socket answers, RELOADING/READY around
SIGHUP, STOPPING=1) runs in the lab: tests/netns/test_install_lab.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from wgdisco.io import systemd
from wgdisco.io.uapi import UapiServer, answers_get


def receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def fields(datagram: bytes) -> dict[str, str]:
    text = datagram.decode()
    assert text.endswith("\n"), text
    return dict(line.split("=", 1) for line in text.splitlines())


def test_ready_reaches_a_path_socket_and_the_variable_is_taken_out(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path, "OTHER": "x"}
    with receiver(path) as sock:
        notifier = systemd.Notifier.from_environ(env)
        assert env == {"OTHER": "x"}  # as sd_notify(unset_environment=1): our children do not inherit it
        assert notifier.enabled and notifier.ready("wg0 up")
        assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "wg0 up"}
        assert notifier.sent == 1


def test_abstract_socket_names_start_with_at() -> None:
    name = f"wgdisco-test-{os.getpid()}-{time.monotonic_ns()}"
    with receiver(b"\0" + name.encode()) as sock:
        notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == b"\0" + name.encode()
        assert notifier.stopping("going down")
        assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "going down"}


def test_reloading_carries_monotonic_usec(tmp_path: Path) -> None:
    path = str(tmp_path / "n")
    with receiver(path) as sock:
        notifier = systemd.Notifier(path)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading("reloading wg0.conf")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        got = fields(sock.recv(4096))
        assert got["RELOADING"] == "1" and got["STATUS"] == "reloading wg0.conf"
        assert before <= int(got["MONOTONIC_USEC"]) <= after  # systemd >= 253 wants it with RELOADING=1


def test_a_newline_in_a_value_cannot_add_an_assignment(tmp_path: Path) -> None:
    path = str(tmp_path / "n")
    with receiver(path) as sock:
        systemd.Notifier(path).status("a\nREADY=1")
        assert fields(sock.recv(4096)) == {"STATUS": "a READY=1"}


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234", "@"])
def test_no_usable_socket_means_no_notifications(value: str) -> None:
    notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": value} if value else {})
    assert not notifier.enabled and not notifier.ready()


def test_a_manager_that_is_gone_is_not_an_error(tmp_path: Path) -> None:
    notifier = systemd.Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready() is False
    assert notifier.failed and notifier.sent == 0


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert systemd.under_journal(stream, env)
        assert not systemd.under_journal(other, env)  # set for stdout, but we write elsewhere
        assert not systemd.under_journal(stream, {})
        assert not systemd.under_journal(stream, {"JOURNAL_STREAM": "garbage"})


def test_journal_lines_carry_a_priority_and_no_time() -> None:
    fmt = systemd.JournalFormatter()

    def line(level: int, msg: str, exc: bool = False) -> str:
        info = None
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                info = sys.exc_info()
        return fmt.format(logging.LogRecord("wgdisco", level, __file__, 1, msg, None, info))

    assert line(logging.INFO, "interface wg0 up") == "<6>INFO interface wg0 up"
    assert line(logging.WARNING, "w") == "<4>WARNING w"
    assert line(logging.ERROR, "e") == "<3>ERROR e"
    assert line(logging.DEBUG, "d") == "<7>DEBUG d"
    assert line(logging.CRITICAL, "c") == "<2>CRITICAL c"
    # every line of a traceback keeps the priority
    assert all(x.startswith("<3>") for x in line(logging.ERROR, "failed", exc=True).split("\n"))


def test_answers_get_is_true_only_for_a_live_uapi_server(tmp_path: Path) -> None:
    async def main() -> tuple[bool, bool, bool]:
        server = UapiServer(socket_dir=tmp_path)
        await server.start("wgt0", lambda request: b"listen_port=51820\nerrno=0\n\n")
        live = await answers_get(tmp_path / "wgt0.sock")
        await server.close()
        gone = await answers_get(tmp_path / "wgt0.sock")
        bad = UapiServer(socket_dir=tmp_path)
        await bad.start("wgt1", lambda request: b"errno=22\n\n")
        refused = await answers_get(tmp_path / "wgt1.sock")
        await bad.close()
        return live, gone, refused

    assert asyncio.run(main()) == (True, False, False)
