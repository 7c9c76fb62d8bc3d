#!/usr/bin/env python3
"""``make install`` / ``make uninstall``: wgdisco on a machine, in a venv of its own (docs/install.md).

Debian 12's pip refuses a system-wide ``pip install .`` (PEP 668), so wgdisco lives in a
self-contained virtual environment, ``$(PREFIX)/lib/wgdisco``, with the compiled data path built
when a compiler, the Python headers and libssl-dev are there (setup.py; without them the install
still succeeds, on the pure-Python path, and says so). What goes where (final paths; ``DESTDIR``
is put in front of each, for staging and for the tests):

    $(PREFIX)/lib/wgdisco/                    the venv (and install-manifest.txt in it)
    $(PREFIX)/bin/wgdisco, wgdisco-userspace  launchers: the venv's python, -I, the module
    $(PREFIX)/share/man/man8/*.8              man pages generated from the programs' own help
    $(PREFIX)/share/doc/wgdisco/              README, CHANGELOG, docs/
    $(PREFIX)/share/wgdisco/systemd/wg-quick-userspace.conf
                                              a drop-in for wg-quick@.service, OFF until linked
    $(SYSCONFDIR)/systemd/system/wgdisco@.service   the unit, ExecStart = $(PREFIX)/bin/wgdisco

Relocation: a venv is not relocatable (its console scripts name its python by absolute path),
and a DESTDIR install must run from DESTDIR in a test and from PREFIX once copied. So the venv's
own scripts are not used: the launchers in bin/ find the venv relative to themselves
(``$(dirname "$0")/../lib/wgdisco/bin/python``), which holds in both places, and the venv's
python finds its site-packages from its own location (pyvenv.cfg beside it; ``home`` names the
system Python, the same in both places). ``-I`` keeps PYTHONPATH and the working directory out,
so the installed wgdisco runs whatever the caller's environment says.

The manifest lists every file and directory the install created (final paths); ``uninstall``
removes exactly those, directories only when empty. Installing again upgrades in place: the
same venv, ``pip install --upgrade``, files no longer installed removed, nothing else touched;
``/var/lib/wgdisco`` (mesh identities) and ``/etc/wireguard`` are never touched by either.
Standard library only: it runs with the system's python3 before any venv exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
MANIFEST = "install-manifest.txt"
LAUNCHER = """#!/bin/sh
# wgdisco's launcher (make install): the venv next door, found relative to this file
here=$(dirname "$(readlink -f "$0")")
exec "$here/../lib/wgdisco/bin/python" -I {how} "$@"
"""
DROPIN = """# wg-quick@.service with wgdisco's userspace tunnel instead of wireguard-go (docs/install.md).
# Installed OFF. wg-quick uses it only where there is no WireGuard kernel module; to turn it on
# for one interface:
#   mkdir -p /etc/systemd/system/wg-quick@wg0.service.d
#   ln -s {path} /etc/systemd/system/wg-quick@wg0.service.d/
#   systemctl daemon-reload && systemctl restart wg-quick@wg0
[Service]
Environment=WG_QUICK_USERSPACE_IMPLEMENTATION={bindir}/wgdisco-userspace
# wgdisco-userspace keeps its output (and so the journal gets its lines) only with LOG_LEVEL set
Environment=LOG_LEVEL=verbose
"""


class InstallError(Exception):
    """One line for the user; the install stops."""


def say(text: str) -> None:
    print(f"wgdisco install: {text}", flush=True)


class Layout:
    def __init__(self, prefix: str, destdir: str, sysconfdir: str) -> None:
        if not prefix.startswith("/") or not sysconfdir.startswith("/"):
            raise InstallError(f"PREFIX and SYSCONFDIR must be absolute paths (got {prefix!r}, {sysconfdir!r})")
        self.prefix, self.destdir, self.sysconfdir = prefix.rstrip("/") or "/", destdir, sysconfdir.rstrip("/")
        self.venv = f"{self.prefix}/lib/wgdisco"
        self.bindir = f"{self.prefix}/bin"
        self.mandir = f"{self.prefix}/share/man/man8"
        self.docdir = f"{self.prefix}/share/doc/wgdisco"
        self.datadir = f"{self.prefix}/share/wgdisco"
        self.unitdir = f"{self.sysconfdir}/systemd/system"
        self.dropin = f"{self.datadir}/systemd/wg-quick-userspace.conf"

    def real(self, path: str) -> Path:
        """Where a final path is on this machine now (DESTDIR in front)."""
        return Path(self.destdir + path) if self.destdir else Path(path)

    @property
    def manifest(self) -> Path:
        return self.real(f"{self.venv}/{MANIFEST}")


class Recorder:
    """What this install writes: files, and the directories it had to create."""

    def __init__(self, layout: Layout, old: dict[str, set[str]]) -> None:
        self.layout = layout
        self.files: set[str] = set()
        self.dirs: set[str] = {d for d in old.get("dir", set()) if layout.real(d).is_dir()}

    def mkdir(self, path: str) -> None:
        missing = []
        p = path
        while p != "/" and not self.layout.real(p).exists():
            missing.append(p)
            p = os.path.dirname(p)
        if self.layout.destdir:
            Path(self.layout.destdir).mkdir(parents=True, exist_ok=True)  # the staging dir is the caller's
        for d in reversed(missing):
            self.layout.real(d).mkdir(mode=0o755)
            self.dirs.add(d)

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path))
        real = self.layout.real(path)
        tmp = real.with_name(f".{real.name}.wgdisco-new")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.chmod(mode)
        os.replace(tmp, real)  # atomic: a running systemd or shell never sees half a file
        self.files.add(path)

    def copy(self, src: Path, path: str, mode: int = 0o644) -> None:
        self.write(path, src.read_bytes(), mode)


def read_manifest(path: Path) -> dict[str, set[str]]:
    entries: dict[str, set[str]] = {"file": set(), "dir": set(), "tree": set()}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        kind, _, value = line.partition(" ")
        if kind in entries and value.startswith("/"):
            entries[kind].add(value)
    return entries


def write_manifest(layout: Layout, rec: Recorder) -> None:
    lines = [f"# wgdisco install manifest: what `make uninstall PREFIX={layout.prefix}` removes",
             f"tree {layout.venv}"]
    lines += [f"file {f}" for f in sorted(rec.files)]
    lines += [f"dir {d}" for d in sorted(rec.dirs)]
    layout.manifest.write_text("\n".join(lines) + "\n")


def check_root(layout: Layout, what: str) -> None:
    if os.geteuid() != 0 and not layout.destdir:
        raise InstallError(f"{what} writes to {layout.prefix} and {layout.unitdir}: run it as root "
                           f"(sudo make {what}), or stage it with DESTDIR=<dir>")


def run(argv: list[str], what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise InstallError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def clean_source(into: Path) -> Path:
    """A copy of the checkout without build leftovers (a stale build/ would go into the wheel)."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                  ".pytest_cache", ".hypothesis", "bench", "fuzz", "tests")
    dst = into / "src"
    shutil.copytree(CHECKOUT, dst, ignore=skip)
    return dst


def make_venv(layout: Layout, python: str) -> Path:
    venv = layout.real(layout.venv)
    vpy = venv / "bin" / "python"
    if vpy.exists() and subprocess.run([str(vpy), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                                       capture_output=True).returncode == 0:
        say(f"upgrading the venv in place: {venv}")
        return vpy
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise InstallError(f"{venv} exists and is not wgdisco's venv; not touching it")
    say(f"creating the venv {venv}")
    run([python, "-m", "venv", str(venv)], f"{python} -m venv (Debian: apt-get install python3-venv)")
    return vpy


def pip_install(vpy: Path, src: Path) -> str:
    """wgdisco and its dependencies into the venv; how the compiled data path came out."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.setdefault("WGDISCO_BUILD_FASTPATH", "auto")  # =1: a failed build fails the install
    run([str(vpy), "-m", "pip", "install", "-q", "--upgrade", "pip"], "pip install --upgrade pip", env)
    # a local directory is built and installed again even at the same version (an upgrade in place)
    proc = run([str(vpy), "-m", "pip", "install", "--upgrade", str(src)], "pip install wgdisco", env)
    check = subprocess.run([str(vpy), "-I", "-c", "from wgdisco.io import _fastpath; print(_fastpath.CRYPTO)"],
                           capture_output=True, text=True)
    if check.returncode == 0:
        return f"compiled data path built ({check.stdout.strip()})"
    why = next((line for line in (proc.stderr + proc.stdout).splitlines() if "compiled data path" in line), "")
    return ("compiled data path NOT built: wgdisco will use the pure-Python data path "
            "(install gcc, python3-dev and libssl-dev, then make install again)" + (f"\n  {why.strip()}" if why else ""))


def install(layout: Layout, python: str) -> None:
    check_root(layout, "install")
    if sys.version_info < (3, 11):
        raise InstallError(f"wgdisco needs Python >= 3.11 ({python} is {sys.version.split()[0]})")
    started = time.monotonic()
    old = read_manifest(layout.manifest)
    with tempfile.TemporaryDirectory(prefix="wgdisco-install-") as tmp:
        src = clean_source(Path(tmp))
        rec = Recorder(layout, old)
        rec.mkdir(os.path.dirname(layout.venv))  # the venv itself is one "tree" in the manifest
        vpy = make_venv(layout, python)
        fastpath = pip_install(vpy, src)
        for name, how in (("wgdisco", "-m wgdisco"),
                          ("wgdisco-userspace", "-c 'import sys; from wgdisco.userspace import main; "
                                                "sys.argv[0] = \"wgdisco-userspace\"; sys.exit(main())'")):
            rec.write(f"{layout.bindir}/{name}", LAUNCHER.format(how=how), 0o755)
        unit = (CHECKOUT / "configs" / "wgdisco@.service").read_text()
        unit = unit.replace("@BINDIR@", layout.bindir).replace("/usr/local/share/doc/wgdisco", layout.docdir)
        rec.write(f"{layout.unitdir}/wgdisco@.service", unit)
        rec.write(layout.dropin, DROPIN.format(path=layout.dropin, bindir=layout.bindir))
        with tempfile.TemporaryDirectory(prefix="wgdisco-man-") as mandir:
            run([str(vpy), "-I", str(CHECKOUT / "packaging" / "manpage.py"), mandir], "generating the man pages")
            for page in sorted(Path(mandir).iterdir()):
                rec.copy(page, f"{layout.mandir}/{page.name}")
        for doc in [CHECKOUT / "README.md", CHECKOUT / "CHANGELOG.md", *sorted((CHECKOUT / "docs").glob("*"))]:
            if doc.is_file():
                rec.copy(doc, f"{layout.docdir}/{doc.relative_to(CHECKOUT)}")
        for gone in sorted(old["file"] - rec.files):  # installed last time, not any more
            layout.real(gone).unlink(missing_ok=True)
        write_manifest(layout, rec)
    say(fastpath)
    say(f"installed wgdisco {version(vpy)} under {layout.destdir}{layout.prefix} in {time.monotonic() - started:.0f} s")
    if not layout.destdir and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        say("systemd reloaded; start an interface with: systemctl enable --now wgdisco@wg0")
    elif not layout.destdir:
        say("systemd is not running here; on a systemd machine: systemctl daemon-reload, "
            "then systemctl enable --now wgdisco@wg0")


def version(vpy: Path) -> str:
    proc = subprocess.run([str(vpy), "-I", "-c", "import wgdisco; print(wgdisco.__version__)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def uninstall(layout: Layout) -> None:
    check_root(layout, "uninstall")
    entries = read_manifest(layout.manifest)
    if not entries["tree"]:
        raise InstallError(f"nothing to uninstall: no {layout.manifest} (was it installed with this PREFIX and DESTDIR?)")
    for path in sorted(entries["file"]):
        layout.real(path).unlink(missing_ok=True)
    for tree in sorted(entries["tree"]):
        shutil.rmtree(layout.real(tree), ignore_errors=True)
    for d in sorted(entries["dir"], key=lambda p: p.count("/"), reverse=True):
        try:
            layout.real(d).rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            say(f"kept {d}: not empty (files that the install did not put there)")
    say(f"removed wgdisco from {layout.destdir}{layout.prefix} ({len(entries['file'])} files and the venv); "
        "/var/lib/wgdisco and /etc/wireguard are left as they are")
    if not layout.destdir and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/install.py")
    parser.add_argument("action", choices=("install", "uninstall"))
    parser.add_argument("--prefix", default="/usr/local")
    parser.add_argument("--destdir", default="")
    parser.add_argument("--sysconfdir", default="/etc")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    try:
        layout = Layout(args.prefix, args.destdir.rstrip("/"), args.sysconfdir)
        if args.action == "install":
            install(layout, args.python)
        else:
            uninstall(layout)
    except InstallError as e:
        print(f"wgdisco {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
