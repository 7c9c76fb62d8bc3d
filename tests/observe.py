"""What lab tests observe of a running node, and waiting on it: a status field, a counter, a log
line. Never a bare sleep used as synchronisation; a sleep that lets time pass to show that nothing
happens says so and is followed by an assertion about what did not happen (docs/testing.md)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from wgdisco.lab.wg import Node

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str | Callable[[], str],
               interval: float = 0.1) -> T:
    """The first truthy value of ``predicate()``, polled every ``interval`` s; AssertionError naming
    ``what`` (a callable: evaluated then, e.g. to show a log) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def status(node: Node) -> dict:
    """``wgdisco status IFACE --json`` from inside the node's namespace."""
    return json.loads(node.host.run([sys.executable, "-m", "wgdisco", "status", node.iface, "--json"]).stdout)


def metric(node: Node, name: str, address: str = "127.0.0.1:9586") -> int:
    """The value of counter ``wgdisco_<name>`` (one sample), scraped from inside the node's namespace;
    the node's [Discovery] Metrics must be ``address``."""
    scrape = node.host.run([sys.executable, "-c", "import urllib.request as u;"
                            f"print(u.urlopen('http://{address}/metrics', timeout=5).read().decode())"]).stdout
    found = re.search(rf"^wgdisco_{name}\{{.*\}} (\d+)$", scrape, re.M)
    assert found is not None, scrape
    return int(found.group(1))
