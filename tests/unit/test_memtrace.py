"""daemon/memtrace.py: the opt-in tracemalloc aid (WGDISCO_TRACEMALLOC) costs nothing when unset."""

from __future__ import annotations

import tracemalloc

import pytest

from wgdisco.daemon import memtrace


class Marker:
    """An object type the gc lists (bytes and bytearrays are not tracked by the gc)."""


@pytest.fixture
def untraced():
    was = tracemalloc.is_tracing()
    if was:
        pytest.skip("tracemalloc already runs in this process (python -X tracemalloc)")
    yield
    tracemalloc.stop()


def test_unset_starts_nothing(untraced) -> None:
    assert memtrace.start({}) is None
    assert memtrace.start({"WGDISCO_TRACEMALLOC": ""}) is None
    assert not tracemalloc.is_tracing()


def test_set_writes_snapshots(untraced, tmp_path) -> None:
    trace = memtrace.start({"WGDISCO_TRACEMALLOC": str(tmp_path / "snaps"), "WGDISCO_TRACEMALLOC_EVERY": "3600"})
    assert trace is not None and tracemalloc.is_tracing()
    # 1,000 Markers: among the 60 most common types whatever else the process holds (with 100 they
    # fell below the cut in a run as an ordinary user)
    kept = [(bytearray(1000), Marker()) for _ in range(1000)]  # noqa: F841 (allocated between the snapshots)
    second = trace.dump()
    trace.stop()
    first = tmp_path / "snaps" / second.name.replace("-0001", "-0000")
    diff = tracemalloc.Snapshot.load(str(second) + ".tracemalloc").compare_to(
        tracemalloc.Snapshot.load(str(first) + ".tracemalloc"), "lineno")
    assert sum(s.size_diff for s in diff) >= 100_000
    text = (tmp_path / "snaps" / (second.name + ".txt")).read_text()
    assert "vmrss_kb" in text and "fds" in text and " Marker\n" in text
