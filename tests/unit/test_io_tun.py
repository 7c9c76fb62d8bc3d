"""wgdisco.io.netlink outside any namespace: what it refuses (no root needed).

wgdisco.io.tun and wgdisco.io.netlink on a real TUN device, in a throwaway
namespace: tests/netns/test_io_tun_lab.py.
"""

from __future__ import annotations

import asyncio

import pytest

from wgdisco.errors import LocalError
from wgdisco.io import netlink


def test_netlink_refuses_a_running_event_loop():
    async def main():
        netlink.link_exists("lo")

    with pytest.raises(LocalError, match="asyncio.to_thread"):
        asyncio.run(main())
