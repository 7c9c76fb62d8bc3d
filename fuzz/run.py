"""Run one fuzz target: python fuzz/run.py TARGET [RUNS] (default 1,000,000 executions).

Prints one JSON line: target, executions, seconds, crashes (0 or 1: atheris stops at the first).
A crash leaves its input as crash-<hash> in the current directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import atheris  # noqa: E402

import targets  # noqa: E402


def main() -> int:
    name = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    fn = targets.TARGETS[name]
    count = [0]

    def one(data: bytes) -> None:
        count[0] += 1
        fn(data)
        if count[0] >= runs:
            # end here rather than through atheris' exit: under an LD_PRELOADed AddressSanitizer
            # (make test-asan) that exit path aborts in the sanitizer's __cxa_throw interceptor
            report()
            os._exit(0)

    start = time.monotonic()

    def report() -> None:
        print(json.dumps({"target": name, "executions": count[0], "seconds": round(time.monotonic() - start, 1),
                          "crashes": 0 if count[0] >= runs else 1}), flush=True)

    atheris.Setup([sys.argv[0], "-print_final_stats=0", f"-atheris_runs={runs + 1}"], one)
    try:
        atheris.Fuzz()
    finally:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
