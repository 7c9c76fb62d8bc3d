"""HintTrier: records are hints; live tunnels are never moved by them."""

from __future__ import annotations

from wgdisco.proto.hints import HintTrier

A, B = b"A" * 32, b"B" * 32


def never_live(_peer: bytes) -> bool:
    return False


def test_candidates_tried_in_order_one_per_interval_then_backoff() -> None:
    h = HintTrier(try_interval=1.0, max_backoff=8.0)
    h.sighting(A, ["c1", "c2"], "mdns", 0.0, live=False)
    assert [(t.endpoint, t.source) for t in h.due(0.0, never_live)] == [("c1", "mdns")]
    assert h.due(0.5, never_live) == []
    assert h.next_time() == 1.0
    assert [t.endpoint for t in h.due(1.0, never_live)] == ["c2"]
    # a full round failed: wait 2 s, then 4, then 8 (capped)
    assert h.next_time() == 3.0
    assert [t.endpoint for t in h.due(3.0, never_live)] == ["c1"]
    assert [t.endpoint for t in h.due(4.0, never_live)] == ["c2"]
    assert h.next_time() == 8.0
    h.due(8.0, never_live), h.due(9.0, never_live)
    assert h.next_time() == 17.0


def test_live_peer_is_never_touched() -> None:
    h = HintTrier()
    h.sighting(A, ["elsewhere"], "dns", 0.0, live=True)
    assert h.due(0.0, never_live) == [] and h.ignored_live == 1
    h.sighting(B, ["c1"], "dns", 0.0, live=False)
    assert h.due(0.0, lambda peer: peer == B) == []  # became live before its turn
    assert h.next_time() is None


def test_success_ends_and_new_candidates_restart() -> None:
    h = HintTrier()
    h.sighting(A, ["c1", "c2"], "mdns", 0.0, live=False)
    h.due(0.0, never_live)
    h.succeeded(A)
    assert h.due(5.0, never_live) == []
    h.sighting(A, ["c3"], "mdns", 10.0, live=False)
    assert [t.endpoint for t in h.due(10.0, never_live)] == ["c3"]
    # the same sighting again keeps the schedule (no restart, no burst)
    h.sighting(A, ["c3"], "mdns", 10.1, live=False)
    assert h.due(10.1, never_live) == []


def test_empty_sighting_does_nothing() -> None:
    h = HintTrier()
    h.sighting(A, [], "dns", 0.0, live=False)
    assert h.next_time() is None
