"""The whole suite (`make test`): the tests marked ``background`` run in a second pytest beside
the others.

    python tests/run_suite.py [pytest options]

The ``background`` tests spend most of their minutes waiting on purpose (100 s of idle tunnel,
20 s floods at a fixed rate and the quiet after them, a verdict that must not change for 6 s,
STUN timeouts), their figures are their own processes' (CPU time, RSS, datagrams counted in
their own namespaces), and each lab has its own namespace prefix and interface names, so they
can share the machine with the rest: the suite's wall time drops by their length (about 4 of 20
minutes) without a tighter bound anywhere. Any selection of tests in the arguments (paths, node
ids, ``-k``, ``-m``, ``--lf``) runs one pytest as given, as does WGDISCO_ONE_PYTEST=1.

Both runs' output is shown (the background one after the foreground one); the exit status is the
first non-zero of the two (5, "no tests collected", counts as zero for the background run).
"""

from __future__ import annotations

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
    with tempfile.TemporaryFile("w+") as log:
        beside = subprocess.Popen(pytest + ["-p", "no:cacheprovider", "-m", "background", *args],
                                  stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            front = subprocess.call(pytest + ["-m", "not background", *args])
        finally:
            back = beside.wait()
        log.seek(0)
        print("\n=== the tests marked 'background', run beside the others ===", flush=True)
        sys.stdout.write(log.read())
    print(f"=== both runs took {time.monotonic() - started:.0f} s (foreground exit {front}, "
          f"background exit {back}) ===", flush=True)
    back = 0 if back == 5 else back
    return front or back


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
