"""The four error kinds of wgdisco (see ../shared/STYLE.md, "House habits").

- DecodeError: malformed bytes from the network or a file. Drop, count.
- AuthError: a MAC, AEAD tag, replay or timestamp check failed. Drop, count, never reply.
- ConfigError: bad configuration; always names the file, the line and the key.
- LocalError: we misused our own API (a bug or an impossible request from the caller).

Shells catch only what they expect; the receive path never raises to its caller.
"""

from __future__ import annotations


class WgdiscoError(Exception):
    """Base class of every error wgdisco raises on purpose."""


class DecodeError(WgdiscoError):
    """Malformed input bytes."""


class AuthError(WgdiscoError):
    """Authentication failed: MAC, AEAD, replay or timestamp check."""


class LocalError(WgdiscoError):
    """API misuse by the local caller."""


class ConfigError(WgdiscoError):
    """Bad configuration, located by file, line and key.

    str() gives ``file:line: key: message`` (each part only if known), the form
    compilers use, so editors and humans can jump straight to it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"
