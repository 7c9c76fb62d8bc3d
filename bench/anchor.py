"""The modern wireguard-go for the benchmarks: Debian 13's package, fetched with apt into a private cache.

    .venv/bin/python bench/anchor.py            # prints the path of the binary (fetches it once)

Debian 12 ships wireguard-go 0.0.20220316, without TUN offloads or UDP GSO/GRO; Debian 13
(trixie) ships 0.0.20231211, which has them (issue 18). Its binary is a Go program that runs
on Debian 12 unchanged. The machine's apt sources are not touched: ``apt-get`` runs with its
source list, lists and archive cache pointed at ``bench/cache/apt`` (an empty system
SourceList and a SourceParts directory holding one trixie ``.sources`` file), ``apt-get
download`` fetches the .deb, and ``dpkg -x`` unpacks it under ``bench/cache/``. Signatures are
checked with the Debian archive keyring as for any apt source.

Note: the 0.0.20231211 binary prints ``wireguard-go v0.0.20230223`` for ``--version`` (the
version string in its source was not bumped for the 2023-12-11 snapshot); ``PACKAGE_VERSION``
is the Debian package version it came from.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / "cache"
PACKAGE = "wireguard-go"
PACKAGE_VERSION = "0.0.20231211"  # the upstream version of Debian 13's package (0.0.20231211-1+bN)
SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = f"""Types: deb
URIs: http://deb.debian.org/debian
Suites: {SUITE}
Components: main
Signed-By: {KEYRING}
"""


class AnchorError(RuntimeError):
    pass


def apt_options(root: Path) -> list[str]:
    """apt-get options that keep everything under ``root``: no system source, list or cache used."""
    return [
        "-q", "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={root / 'sources'}",
        "-o", f"Dir::State::Lists={root / 'lists'}", "-o", f"Dir::Cache={root / 'cache'}",
        "-o", f"Dir::Cache::archives={root / 'archives'}", "-o", "APT::Sandbox::User=root",
    ]


def binary_path(cache: Path = CACHE) -> Path:
    return cache / f"{PACKAGE}-{PACKAGE_VERSION}" / "usr" / "bin" / PACKAGE


def fetch(cache: Path = CACHE) -> Path:
    """The path of Debian 13's wireguard-go, fetched and unpacked on first use. Raises AnchorError."""
    binary = binary_path(cache)
    if binary.exists():
        return binary
    root = cache / "apt"
    for sub in ("sources", "lists/partial", "cache", "archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources" / f"{SUITE}.sources").write_text(SOURCES)
    opts = apt_options(root)

    def run(argv: list[str], cwd: Path | None = None) -> str:
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AnchorError(f"{argv[0]}: {e}") from None
        if cp.returncode != 0:
            raise AnchorError(f"{' '.join(argv[:1] + argv[-2:])} exited {cp.returncode}: "
                              f"{(cp.stderr or cp.stdout).strip()[-500:]}")
        return cp.stdout

    run(["apt-get", *opts, "update"])
    policy = run(["apt-cache", *opts, "policy", PACKAGE])
    candidate = next((line.split(":", 1)[1].strip() for line in policy.splitlines()
                      if line.strip().startswith("Candidate:")), "")
    if not candidate.startswith(PACKAGE_VERSION):
        raise AnchorError(f"{SUITE} offers {PACKAGE} {candidate or '(none)'}, not {PACKAGE_VERSION}")
    archives = root / "archives"
    for old in archives.glob(f"{PACKAGE}_*.deb"):
        old.unlink()
    # the version from this private list only (the system's dpkg status may name another one)
    run(["apt-get", *opts, "download", f"{PACKAGE}={candidate}"], cwd=archives)
    debs = sorted(archives.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise AnchorError(f"apt-get download left no {PACKAGE} .deb in {archives}")
    target = binary.parents[2]
    run(["dpkg", "-x", str(debs[-1]), str(target)])
    if not binary.exists():
        raise AnchorError(f"{debs[-1].name} holds no {binary.relative_to(target)}")
    return binary


def main() -> int:
    try:
        print(fetch())
    except AnchorError as e:
        print(f"cannot fetch {PACKAGE} {PACKAGE_VERSION}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
