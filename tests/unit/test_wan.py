"""The impaired WAN's policy (wgdisco/lab/wan.py's Impairment), on a fake clock."""

from __future__ import annotations

import random

import pytest

from wgdisco.lab.wan import PROFILES, Impairment, Profile, profile


def run(prof: Profile, n: int = 20000, gap: float = 0.001) -> tuple[Impairment, list[tuple[float, int]]]:
    imp = Impairment(prof, random.Random(7))
    out: list[tuple[float, int]] = []
    for i in range(n):
        now = i * gap
        for _d, frame in imp.due(now):
            out.append((now, int.from_bytes(frame, "big")))
        imp.submit(0, i.to_bytes(4, "big"), now)
    while (t := imp.next_time()) is not None:
        out.extend((t, int.from_bytes(f, "big")) for _d, f in imp.due(t))
    return imp, out


def test_loss_and_delay_as_asked_and_in_order_without_reordering() -> None:
    imp, out = run(Profile("t", delay_ms=20, jitter_ms=5, loss=0.03), gap=0.01)
    seqs = [s for _t, s in out]
    assert seqs == sorted(seqs)  # jitter alone never reorders
    lost = 1 - len(out) / 20000
    assert 0.025 < lost < 0.035
    delays = [t - s * 0.01 for t, s in out]
    assert min(delays) >= 0.015 - 0.01 and max(delays) <= 0.025 + 0.01  # the fake clock's step is 10 ms
    assert imp.counters()["up"]["lost"] == 20000 - len(out)


def test_reordering_and_duplication() -> None:
    imp, out = run(Profile("t", delay_ms=10, reorder=0.05, duplicate=0.02))
    seqs = [s for _t, s in out]
    late = sum(1 for i in range(1, len(seqs)) if seqs[i] < max(seqs[:i][-50:]))
    c = imp.counters()["up"]
    assert 0.04 < c["reordered"] / 20000 < 0.06 and late > 0.5 * c["reordered"]
    assert len(seqs) - len(set(seqs)) == c["duplicated"] and 0.015 < c["duplicated"] / 20000 < 0.025


def test_profiles() -> None:
    assert profile("off") is None and profile(None) is None and profile("home") is PROFILES["home"]
    assert PROFILES["mobile"].reorder == 0.01 and PROFILES["home"].loss == 0.01
    with pytest.raises(ValueError, match="unknown WAN profile 'dsl'"):
        profile("dsl")
