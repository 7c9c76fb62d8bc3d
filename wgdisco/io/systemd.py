"""The service manager: readiness notifications (sd_notify) and log lines for the journal.

Notifications (sd_notify(3), "the notification protocol" in systemd's docs): one datagram of
newline-separated ``KEY=VALUE`` assignments to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace (the ``@`` becomes
a NUL byte). No reply comes back; a manager that is not listening loses nothing but the
message. This needs no library: ``Notifier`` is the whole client. Like sd_notify's
``unset_environment``, ``from_environ`` takes the variable out of the environment, so hooks and
helpers the daemon starts do not talk to the manager in its name.

What wgdisco says and when (daemon/tunnel.py; the unit is ``Type=notify``):

- ``READY=1`` once the interface is up and its UAPI socket has answered a ``get``;
- ``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC in µs, as systemd ≥ 253 asks) when
  SIGHUP arrives, then ``READY=1`` when the reload is done;
- ``STOPPING=1`` when it begins to shut down;
- ``STATUS=`` one human line alongside, shown by ``systemctl status``.

The journal: systemd sets ``$JOURNAL_STREAM`` to ``<device>:<inode>`` of the stream it
connected to stdout/stderr (systemd.exec(5)). When it matches our stderr, each line goes out
as ``<N>message``: the journal takes ``<N>`` as the syslog priority (sd-daemon(3),
"SD_WARNING" and friends) and stamps the time itself, so the line carries no timestamp.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from typing import TextIO

__all__ = ["Notifier", "JournalFormatter", "under_journal", "configure_logging", "PRIORITY"]

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_JOURNAL = "JOURNAL_STREAM"

# syslog(3) priorities, as sd-daemon.h's SD_ERR ... SD_DEBUG prefixes
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def socket_address(name: str) -> str | bytes | None:
    """The address ``$NOTIFY_SOCKET`` names: a path, or an abstract name (``@x`` -> ``b"\\0x"``).
    None for what we cannot reach (empty, relative, or ``vsock:`` of a VM's manager)."""
    if name.startswith("@") and len(name) > 1:
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None


class Notifier:
    """Sends notifications to one ``$NOTIFY_SOCKET``; does nothing when there is none."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.sent = 0  # messages the socket accepted (tests, status)
        self.failed: str | None = None  # the last send error, once

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier of ``$NOTIFY_SOCKET`` (taken out of ``environ``: see the module doc)."""
        env = os.environ if environ is None else environ
        name = env.pop(ENV_SOCKET, "")
        return cls(socket_address(name) if name else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message (``ready="1"`` is ``READY=1``); True if the socket took it."""
        if self.address is None:
            return False
        text = "".join(f"{key.upper()}={str(value).replace(chr(10), ' ')}\n" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError as e:  # the manager went away (or never listened): nothing to do about it
            self.failed = e.strerror or str(e)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(ready=1, **({"status": status} if status else {}))

    def reloading(self, status: str | None = None, *, monotonic_usec: int | None = None) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 if monotonic_usec is None else monotonic_usec
        return self.notify(reloading=1, monotonic_usec=usec, **({"status": status} if status else {}))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(stopping=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text)


def under_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_JOURNAL, "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL message``: the priority for the journal, no time of our own."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        # a traceback spans lines: each line gets the prefix, or the journal reads it as priority 6
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def quiet_log_records() -> None:
    """No thread or process lookups per log record: the formats name neither, and 40 members
    starting at once log a few thousand lines each (py-spy put a quarter of a daemon's samples
    in ``threading.current_thread`` under LogRecord while a 40-member mesh converged)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure_logging(level: int, stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """``logging.basicConfig`` to ``stream`` at ``level`` (so, as it, nothing when the root logger
    has handlers already): journal lines under journald, else lines with their own time. True
    when the journal format was chosen."""
    journal = under_journal(stream, environ)
    quiet_log_records()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    return journal
