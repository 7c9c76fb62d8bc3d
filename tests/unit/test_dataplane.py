"""The data-plane thread survives what it did not expect (issue 17, finding 5)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from wgdisco.daemon.dataplane import DataPlane
from wgdisco.io import udp


class FakeTun:
    def __init__(self) -> None:
        self.r, self.w = os.pipe()  # never readable: no packets

    def fileno(self) -> int:
        return self.r


class FailingNode:
    """A timer that raises the first three times it fires, then is done."""

    def __init__(self) -> None:
        self.calls = 0

    def run_timers(self, now: float) -> float | None:
        if self.calls >= 4:
            return None
        self.calls += 1
        if self.calls <= 3:
            raise RuntimeError(f"boom {self.calls}")
        return None


def test_an_unexpected_exception_is_counted_logged_once_and_survived(caplog) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    tun, node, drops = FakeTun(), FailingNode(), {}
    deleted = []
    plane = DataPlane("t0", tun=tun, device=None, node=node, sender=udp.Sender({}, sock),  # type: ignore[arg-type]
                      lock=threading.Lock(), drops=drops, flush=lambda: None,
                      on_link_deleted=lambda: deleted.append(1))
    with caplog.at_level(logging.ERROR, logger="wgdisco"):
        plane.start({"WGDISCO_DATAPATH": "python"})  # the thread, not a data path, is under test
        deadline = time.monotonic() + 5
        while node.calls < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = plane.thread.is_alive()
        plane.stop()
    sock.close()
    os.close(tun.r)
    os.close(tun.w)
    assert node.calls == 4 and alive and not deleted
    assert drops == {"dataplane-error": 3}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # once, with its traceback
    assert "RuntimeError: boom 1" in errors[0].getMessage()


def test_a_scope_id_beyond_32_bits_is_refused_at_the_input() -> None:
    import pytest

    from wgdisco.errors import LocalError

    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        with pytest.raises(LocalError, match="not an interface index"):
            udp.to_sockaddr(sock, "fe80::1%18446744073709551616", 51820)
    finally:
        sock.close()
