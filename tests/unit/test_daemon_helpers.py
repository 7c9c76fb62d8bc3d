"""Small pure helpers of the daemon's modules: metric sample values, the Metrics bind warning."""

from __future__ import annotations

import pytest

from wgdisco.daemon.surface import sample_value
from wgdisco.daemon.tunnel import is_loopback


@pytest.mark.parametrize("value,text", [
    (0, "0"), (1234567, "1234567"), (10**15 + 1, "1000000000000001"), (3.0, "3"), (0.5, "0.5"),
    (1e-7, "1e-07"), (123456.789, "123456.789"),
])
def test_sample_values_are_exact(value: float, text: str) -> None:
    assert sample_value(value) == text  # {:g} gave 1.23457e+06 for 1234567


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("wg.example.net", False),
])
def test_metrics_on_a_non_loopback_address_is_flagged(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
