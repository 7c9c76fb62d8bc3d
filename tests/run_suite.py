"""The whole suite (`make test`): the tests marked ``background`` run in a second pytest beside
the others, the one marked ``quarter_hour`` in a third.

    python tests/run_suite.py [pytest options]

The ``background`` tests spend most of their minutes waiting on purpose (100 s of idle tunnel,
20 s floods at a fixed rate and the quiet after them, a verdict that must not change for 6 s,
STUN timeouts), their figures are their own processes' (CPU time, RSS, datagrams counted in
their own namespaces), and each lab has its own namespace prefix and interface names, so they
can share the machine with the rest: the suite's wall time drops by their length (about 4 of 20
minutes) without a tighter bound anywhere. The ``quarter_hour`` test (two NAT pairs idle for 15
minutes, issue 26) waits longer than all the background ones together, so it has a pytest of its
own, started first: it ends before the foreground does (about 16 of its 17 minutes). Any selection of tests in the arguments (paths, node
ids, ``-k``, ``-m``, ``--lf``) runs one pytest as given, as does WGDISCO_ONE_PYTEST=1.

All runs' output is shown (the others after the foreground one); the exit status is the first
non-zero of them (5, "no tests collected", counts as zero for the runs beside).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time

SELECTING = ("-k", "-m", "--lf", "--last-failed", "--ff", "--sw", "--stepwise", "--deselect")


def selects(args: list[str]) -> bool:
    """True when the arguments pick tests themselves (then one pytest runs them as asked)."""
    for arg in args:
        if arg.startswith(SELECTING) or (not arg.startswith("-") and ("/" in arg or arg.endswith(".py")
                                                                       or "::" in arg or os.path.exists(arg))):
            return True
    return False


def main(args: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    if os.environ.get("WGDISCO_ONE_PYTEST") or selects(args):
        return subprocess.call(pytest + args)
    started = time.monotonic()
    beside_runs = (("quarter_hour", "the test marked 'quarter_hour'"),
                   ("background and not quarter_hour", "the tests marked 'background'"))
    with contextlib.ExitStack() as stack:
        runs = []
        for mark, title in beside_runs:
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(pytest + ["-p", "no:cacheprovider", "-m", mark, *args],
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
            runs.append((title, log, proc))
        try:
            front = subprocess.call(pytest + ["-m", "not background and not quarter_hour", *args])
        finally:
            codes = [proc.wait() for _, _, proc in runs]
        for (title, log, _), code in zip(runs, codes):
            log.seek(0)
            print(f"\n=== {title}, run beside the others (exit {code}) ===", flush=True)
            sys.stdout.write(log.read())
    print(f"=== all runs took {time.monotonic() - started:.0f} s (foreground exit {front}, beside "
          f"{codes}) ===", flush=True)
    return front or next((c for c in codes if c not in (0, 5)), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
