"""The hosts file block through which mesh members' names resolve (docs/mesh.md "Names").

wgdisco keeps one block per interface in the hosts file (``/etc/hosts``, or
``$WGDISCO_HOSTS_FILE``), between two marker lines::

    # wgdisco mesh0 begin: kept by wgdisco, edits between these lines are lost
    10.70.12.9	alice wg-abcdefghijklmnop
    fd12:3456:789a::1c2d:3e4f:5a6b:7c8d	alice wg-abcdefghijklmnop
    # wgdisco mesh0 end

Everything outside the block is left byte for byte. The block goes at the end, so an entry
the administrator wrote for the same name comes first and wins (glibc takes the first match).
Every write is atomic: the new file is written beside the old one and renamed over it
(rename(2)), so a reader sees the old file or the new one, never half of one. When the hosts
file is a mount point (a bind mount, as containers and ``ip netns exec`` make it) a rename
cannot replace it (EBUSY): then it is rewritten in place. Writers of the same file (two
interfaces) take turns with flock(2) on the directory. The shell writes what it is given; which
names are safe to write is decided by the node core (proto/names.py: strict host names only).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from wgdisco.errors import LocalError

__all__ = ["HostsFile", "DEFAULT_PATH", "ENV_PATH", "render_block", "replace_block"]

DEFAULT_PATH = "/etc/hosts"
ENV_PATH = "WGDISCO_HOSTS_FILE"


def _markers(iface: str) -> tuple[str, str]:
    return (f"# wgdisco {iface} begin: kept by wgdisco, edits between these lines are lost",
            f"# wgdisco {iface} end")


def render_block(iface: str, lines: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    begin, end = _markers(iface)
    return [begin, *(f"{addr}\t{' '.join(names)}" for addr, names in lines), end]


def replace_block(text: str, iface: str, block: list[str] | None) -> str:
    """``text`` with the interface's block replaced by ``block`` (None: removed)."""
    begin, end = _markers(iface)
    begin_tag, end_tag = begin.split(":", 1)[0], end
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if not inside and line.split(":", 1)[0] == begin_tag:
            inside = True
            continue
        if inside:
            if line == end_tag:
                inside = False
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    if block:
        out += block
    return "\n".join(out) + "\n" if out else ""


class HostsFile:
    """One interface's block in one hosts file."""

    def __init__(self, iface: str, path: str | None = None) -> None:
        self.iface = iface
        self.path = Path(path or os.environ.get(ENV_PATH) or DEFAULT_PATH)
        self.written = False  # we put a block there (so close removes it)

    def write(self, lines: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Replace our block with ``lines`` ((address, names) each). LocalError when it cannot."""
        self._edit(render_block(self.iface, lines))
        self.written = True

    def remove(self) -> None:
        """Take our block out (at shutdown)."""
        if self.written:
            self._edit(None)
            self.written = False

    def _edit(self, block: list[str] | None) -> None:
        directory = self.path.parent
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise LocalError(f"hosts file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)  # another interface's daemon may be editing it too
            try:
                old = self.path.read_text(encoding="utf-8", errors="surrogateescape")
                mode = self.path.stat().st_mode & 0o7777
            except FileNotFoundError:
                old, mode = "", 0o644
            new = replace_block(old, self.iface, block)
            if new == old:
                return
            self._replace(new, mode)
        except OSError as e:
            raise LocalError(f"hosts file {self.path}: {e.strerror or e}") from None
        finally:
            os.close(dfd)  # releases the lock

    def _replace(self, text: str, mode: int) -> None:
        data = text.encode("utf-8", errors="surrogateescape")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.wgdisco-", dir=self.path.parent)
        except OSError as e:
            # a read-only directory with the file itself writable: the systemd unit's sandbox
            # (ProtectSystem=strict, ReadWritePaths=/etc/hosts bind-mounts the file alone)
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            self._rewrite(data)
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            try:
                os.replace(tmp, self.path)
                return
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                    raise
            self._rewrite(data)  # a mount point
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _rewrite(self, data: bytes) -> None:
        """In place (not atomic: a reader may see half of it, the price of a bind-mounted file)."""
        with open(self.path, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
