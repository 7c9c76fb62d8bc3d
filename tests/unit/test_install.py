"""``make install``'s bad input and its man pages (the install itself: tests/netns/test_install_lab.py).

Without root (and without DESTDIR) the install says so in one line and writes nothing. As root,
the test runs it as ``nobody`` (setpriv); as an ordinary user, as that user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wgdisco import cli

CHECKOUT = Path(__file__).resolve().parents[2]


def as_ordinary_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to an ordinary user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


@pytest.mark.parametrize("target", ["install", "uninstall"])
def test_without_root_one_clear_line(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(as_ordinary_user(["make", "-C", str(CHECKOUT), "--no-print-directory", target,
                                            "PREFIX=/usr/local"]),
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0] == (
        f"wgdisco {target}: {target} writes to /usr/local and /etc/systemd/system: run it as root "
        f"(sudo make {target}), or stage it with DESTDIR=<dir>"), proc.stderr
    assert proc.stdout == ""


def test_a_relative_prefix_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(CHECKOUT / "packaging" / "install.py"), "install",
                           "--prefix", "usr/local", "--destdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "PREFIX and SYSCONFDIR must be absolute paths" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_uninstall_of_nothing_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(CHECKOUT / "packaging" / "install.py"), "uninstall",
                           "--destdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "nothing to uninstall" in proc.stderr


def test_man_pages_cover_every_command_and_are_clean_roff(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(CHECKOUT / "packaging" / "manpage.py"), str(tmp_path)], check=True,
                   env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    page = (tmp_path / "wgdisco.8").read_text()
    assert page.startswith('.TH WGDISCO 8 "1970-01-01" "wgdisco ')
    parser = cli.build_parser()
    commands = next(a.choices for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))  # noqa: SLF001
    for name in commands:
        assert f"\n.SS {name}\n" in page, name
    assert "\\fB\\-\\-json\\fR" in page
    user = (tmp_path / "wgdisco-userspace.8").read_text()
    assert "WG_PROCESS_FOREGROUND" in user and ".SH SYNOPSIS" in user
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff not installed: the roff was not checked for warnings")
    for page_path in (tmp_path / "wgdisco.8", tmp_path / "wgdisco-userspace.8"):
        check = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page_path)], capture_output=True, text=True)
        assert check.returncode == 0 and check.stderr == "", check.stderr
