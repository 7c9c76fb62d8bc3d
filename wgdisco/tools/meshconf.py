"""Edits of a config file's [Discovery] section for ``wgdisco genmesh --rotate`` and
``wgdisco mesh ban`` (docs/mesh.md "Rotating the mesh key", "A lost or stolen device").

Pure text in, text out: every line outside the keys being set is kept byte for byte (comments,
order, other sections); ``write`` replaces the file atomically with its mode kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["set_keys", "add_deny", "write", "parse_duration"]

_SECTION = re.compile(r"^\s*\[\s*([A-Za-z]+)\s*\]")


def _key_of(line: str) -> str | None:
    body = line.split("#", 1)[0]
    if "=" not in body:
        return None
    return body.split("=", 1)[0].strip().lower()


def _discovery_span(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the [Discovery] section's lines (header included), or None."""
    start = None
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m is None:
            continue
        if start is not None:
            return start, i
        if m.group(1).lower() == "discovery":
            start = i
    return None if start is None else (start, len(lines))


def set_keys(text: str, values: dict[str, str | None]) -> str:
    """``text`` with each [Discovery] key of ``values`` set (its first line replaced, any later
    ones removed; None: every line of it removed); keys not there yet go at the section's end
    (before its trailing blank lines). A [Discovery] section is added when there is none."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    span = _discovery_span(lines)
    if span is None:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines.append("[Discovery]\n")
        span = (len(lines) - 1, len(lines))
    start, end = span
    body = lines[start + 1:end]
    wanted = {k.lower(): (k, v) for k, v in values.items()}
    done: set[str] = set()
    out = []
    for line in body:
        key = _key_of(line)
        if key in wanted:
            name, value = wanted[key]
            if value is not None and key not in done:
                out.append(f"{name} = {value}\n")
            done.add(key)
            continue
        out.append(line)
    tail = len(out)
    while tail and not out[tail - 1].strip():
        tail -= 1
    new = [f"{name} = {value}\n" for key, (name, value) in wanted.items() if key not in done and value is not None]
    out[tail:tail] = new
    return "".join(lines[:start + 1] + out + lines[end:])


def add_deny(text: str, public_b64: str) -> str:
    """``text`` with ``public_b64`` added to MeshDeny (appended to its last line, or a new line)."""
    lines = text.splitlines(keepends=True)
    span = _discovery_span(lines)
    if span is not None:
        for i in range(span[1] - 1, span[0], -1):
            if _key_of(lines[i]) == "meshdeny":
                body, sep, comment = lines[i].rstrip("\n").partition("#")
                items = [x.strip() for x in body.split("=", 1)[1].split(",") if x.strip()]
                if public_b64 not in items:
                    items.append(public_b64)
                lines[i] = f"MeshDeny = {', '.join(items)}" + (f"  {sep}{comment}" if sep else "") + "\n"
                return "".join(lines)
    return set_keys(text, {"MeshDeny": public_b64})


def write(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a reader sees the old file or the new one),
    keeping its mode (a config holds keys: 0600 stays 0600)."""
    path = Path(path)
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``7d``, ``1w``: seconds (ValueError otherwise)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m, 2h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]
