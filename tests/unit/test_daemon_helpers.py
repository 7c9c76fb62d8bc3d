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


def test_the_sender_and_the_device_share_no_container() -> None:
    """io and proto share no mutable state (issue 22): the sender asks the device for a sticky
    source and tells it which one the kernel refused; it never holds the device's dict."""
    from wgdisco.daemon.tunnel import wire_sources
    from wgdisco.io import udp
    from wgdisco.proto import keys
    from wgdisco.proto.device import Device

    device = Device(keys.clamp(bytes(range(32))), rng=lambda n: bytes(n), now=0.0)
    sender = udp.Sender({})
    wire_sources(sender, device)
    owned = {id(v) for v in vars(device).values() if isinstance(v, (dict, list, set))}
    for name, value in vars(sender).items():
        assert id(value) not in owned, f"Sender.{name} is one of the device's containers"
        assert id(getattr(value, "__self__", None)) not in owned, f"Sender.{name} is bound to a device container"
    endpoint = ("192.0.2.1", 51820)
    device.sources[endpoint] = source = (0, 50, b"\0" * 20)
    assert sender.source_for(endpoint) is source  # the query sees what the device recorded
    assert not sender.forget_source(endpoint, (0, 50, b"\1" * 20))  # not its source (any more): kept
    assert device.source_for(endpoint) is source
    assert sender.forget_source(endpoint, source)
    assert device.source_for(endpoint) is None
