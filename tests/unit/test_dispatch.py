"""One dispatch: the daemon's {event type: handler} table covers every event the node emits."""

from __future__ import annotations

import dataclasses
import typing

from wgdisco.daemon.surface import Surface
from wgdisco.proto import events, node


def test_every_node_event_has_a_handler() -> None:
    table = Surface(tunnel=None).handlers
    missing = [t.__name__ for t in events.EVENT_TYPES if t not in table]
    assert not missing, f"events with no handler in daemon/surface.py: {missing}"
    extra = [t.__name__ for t in table if t not in events.EVENT_TYPES]
    assert not extra, f"handlers for types the node never emits: {extra}"


def test_the_union_is_the_node_s() -> None:
    assert node.Event is events.Event
    assert set(typing.get_args(events.Event)) == set(events.EVENT_TYPES)
    assert all(dataclasses.is_dataclass(t) for t in events.EVENT_TYPES)


def test_an_unknown_event_is_an_error_not_silence() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stranger:
        x: int = 0

    try:
        Surface(tunnel=None).on_event(Stranger())
    except KeyError:
        return
    raise AssertionError("an event with no handler must not vanish")


def test_every_port_mapping_event_has_a_handler() -> None:
    import typing

    from wgdisco.daemon.portmapping import PortMapping
    from wgdisco.proto import portmap

    table = PortMapping.handlers.fget(object.__new__(PortMapping))  # type: ignore[attr-defined]
    assert set(table) == set(typing.get_args(portmap.Event))
