"""proto/ratelimiter.py: the token bucket's promise to the timers that wait on it."""

from __future__ import annotations

import random

from wgdisco.proto.ratelimiter import TokenBucket


def test_take_succeeds_at_the_time_ready_at_names() -> None:
    # a timer that sleeps until ready_at() and then calls take() must get its token: with
    # rounding, (now - last) * rate could leave 0.9999999999 tokens and a deadline in the past
    # (a timer loop that spins: the mesh simulator found 1,871 such wake-ups in one run)
    rng = random.Random(3)
    misses = 0
    for _ in range(2000):
        bucket = TokenBucket(rng.choice([3.0, 7.0, 10.0, 16.0, 100.0, 0.3]), rng.choice([1, 2, 5]))
        now = rng.uniform(0, 1e6)
        while bucket.take(now):
            pass
        for _ in range(5):
            now = bucket.ready_at()
            misses += not bucket.take(now)
            while bucket.take(now):
                pass
    assert misses == 0


def test_a_bucket_gives_rate_tokens_a_second_and_at_most_its_burst() -> None:
    bucket = TokenBucket(10.0, 5)
    assert sum(bucket.take(0.0) for _ in range(20)) == 5
    assert bucket.ready_at() == 0.1
    assert sum(bucket.take(t / 1000) for t in range(1, 1001)) == 10
    assert sum(bucket.take(100.0) for _ in range(20)) == 5
