"""Strangers (proto/strangers.py): the latest record of non-peers, capped and expiring."""

from __future__ import annotations

from wgdisco.proto import records
from wgdisco.proto.strangers import Strangers


def sighting(i: int) -> records.Sighting:
    return records.Sighting(bytes([i]) * 32, [], txt={})


def test_capped_oldest_first_and_expiring() -> None:
    s = Strangers(cap=3, ttl=10.0)
    assert s.next_deadline() is None
    for i in range(5):
        s.put(sighting(i), "mdns", 100.0 + i)
    assert len(s) == 3 and s.take(bytes([0]) * 32, 105.0) is None  # the oldest went past the cap
    assert s.next_deadline() == 112.0  # key 2's record, seen at 102
    s.put(sighting(2), "dns", 106.0)  # seen again: the newest now
    assert s.next_deadline() == 113.0
    s.handle_timer(113.0)
    assert len(s) == 2  # key 3's expired
    assert s.take(bytes([2]) * 32, 115.9) == (sighting(2), "dns")
    assert s.take(bytes([2]) * 32, 115.9) is None  # taken once


def test_a_stale_record_is_not_handed_back() -> None:
    s = Strangers(cap=3, ttl=10.0)
    s.put(sighting(1), "mdns", 0.0)
    assert s.take(bytes([1]) * 32, 10.0) is None and len(s) == 0
