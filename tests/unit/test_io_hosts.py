"""The hosts file block (io/hosts.py): atomic replacement, markers, other lines untouched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wgdisco.errors import LocalError
from wgdisco.io.hosts import HostsFile, replace_block

BASE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# a comment\n"


def test_block_written_replaced_and_removed_leaving_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(BASE)
    path.chmod(0o644)
    h = HostsFile("mesh0", str(path))
    h.write([("10.70.0.5", ("alice", "wg-abcdefghijklmnop")), ("fd00::5", ("alice", "wg-abcdefghijklmnop"))])
    text = path.read_text()
    assert text.startswith(BASE)
    assert "10.70.0.5\talice wg-abcdefghijklmnop\n" in text and text.count("# wgdisco mesh0") == 2
    inode = path.stat().st_ino
    h.write([("10.70.0.6", ("bob",))])
    text = path.read_text()
    assert "alice" not in text and "10.70.0.6\tbob\n" in text and text.startswith(BASE)
    assert path.stat().st_ino != inode  # renamed over: a reader never sees half a file
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    other = HostsFile("mesh1", str(path))  # another interface's block is its own
    other.write([("10.80.0.1", ("carol",))])
    h.remove()
    assert path.read_text() == BASE + "# wgdisco mesh1 begin: kept by wgdisco, edits between these lines are lost\n" \
        "10.80.0.1\tcarol\n# wgdisco mesh1 end\n"
    other.remove()
    assert path.read_text() == BASE
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]  # no temporary file left


def test_replace_block_is_idempotent_and_tolerates_a_missing_end() -> None:
    block = ["# wgdisco m begin: kept by wgdisco, edits between these lines are lost", "10.0.0.1\ta", "# wgdisco m end"]
    once = replace_block(BASE, "m", block)
    assert replace_block(once, "m", block) == once
    assert replace_block(once, "m", None) == BASE
    broken = BASE + block[0] + "\n10.0.0.1\ta\n"  # cut off: everything after the begin marker is ours
    assert replace_block(broken, "m", None) == BASE


def test_missing_directory_is_a_local_error(tmp_path: Path) -> None:
    h = HostsFile("mesh0", str(tmp_path / "nope" / "hosts"))
    with pytest.raises(LocalError, match="hosts file"):
        h.write([("10.0.0.1", ("a",))])


def test_environment_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGDISCO_HOSTS_FILE", str(tmp_path / "h"))
    h = HostsFile("mesh0")
    h.write([("10.0.0.1", ("a",))])
    assert (tmp_path / "h").read_text().count("10.0.0.1\ta") == 1
    assert os.access(tmp_path / "h", os.R_OK)
