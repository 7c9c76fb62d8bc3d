"""Delete lab namespaces left behind by crashed or killed test runs.

    python -m wgdisco.lab.cleanup            # namespaces whose owner process is gone
    python -m wgdisco.lab.cleanup --all      # every wgdXXXXXX-* namespace, even live ones
    python -m wgdisco.lab.cleanup --dry-run  # only list

Only names matching ``wgd[0-9a-f]{6}-`` are ever touched.  A namespace is
"stale" when the owner file of its prefix is missing or names a process that
no longer exists, so a concurrently running test session is left alone
(unless ``--all``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from .netns import OWNER_DIR, PREFIX_RE, delete_netns, list_netns, owner_alive


def lab_namespaces() -> list[str]:
    """All namespaces whose names match the lab pattern."""
    return [ns for ns in list_netns() if PREFIX_RE.match(ns)]


def cleanup(*, everything: bool = False, dry_run: bool = False,
            prefixes: Iterable[str] | None = None) -> list[str]:
    """Delete stale lab namespaces (optionally only those with given prefixes); return their names."""
    only = tuple(prefixes) if prefixes is not None else None
    doomed = []
    for ns in lab_namespaces():
        prefix = PREFIX_RE.match(ns).group(0)  # type: ignore[union-attr]
        if only is not None and prefix not in only:
            continue
        if everything or not owner_alive(prefix):
            doomed.append(ns)
    if dry_run:
        return doomed
    for ns in doomed:
        delete_netns(ns)
    _forget_dead_owners(only)
    return doomed


def _forget_dead_owners(only: tuple[str, ...] | None) -> None:
    """Remove owner files of labs whose process is gone (log dirs in /tmp are kept)."""
    if not OWNER_DIR.is_dir():
        return
    live = {PREFIX_RE.match(ns).group(0) for ns in lab_namespaces()}  # type: ignore[union-attr]
    for path in OWNER_DIR.glob("wgd*-owner"):
        prefix = path.name.removesuffix("owner")
        if (only is None or prefix in only) and prefix not in live and not owner_alive(prefix):
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wgdisco.lab.cleanup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="also delete namespaces of running labs")
    ap.add_argument("--dry-run", action="store_true", help="list, do not delete")
    args = ap.parse_args(argv)
    names = cleanup(everything=args.all, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for ns in names:
        print(f"{verb} {ns}")
    if not names:
        print("no stale lab namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
