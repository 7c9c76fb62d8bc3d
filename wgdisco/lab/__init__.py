"""A network-namespace lab for wgdisco's integration tests and ``wgdisco demo``.

Part of the package (so that ``wgdisco demo`` runs from an installed wheel), but
only the demo and the tests import it, never the daemon.

Build small internets out of Linux network namespaces: hosts, point-to-point
veth links, bridge "switches", routers and NAT routers (nftables), then run
real programs in them.  Everything a ``Lab`` creates carries one per-run
prefix (``wgd`` + 6 hex + ``-``) and is removed by ``Lab.close()`` — on normal
exit, on exceptions, at interpreter exit and on SIGTERM/SIGHUP.  Leftovers
from killed runs: ``python -m wgdisco.lab.cleanup``.  See ``wgdisco/lab/netns.py``
for the theory of operation.

Example::

    with Lab() as lab:
        wan = lab.lan("wan")
        lan = lab.lan("home")
        server = lab.host("srv")
        lab.attach(server, wan, addr="198.51.100.10/24")
        nat = lab.nat_router("nat", lan=lan, wan=wan, kind="easy",
                             lan_addr="10.1.0.1/24", wan_addr="198.51.100.1/24")
        alice = lab.host("alice")
        lab.attach(alice, lan, addr="10.1.0.2/24")
        alice.add_route("default", via=nat.lan_ip)
        alice.ping("198.51.100.10")

The skip policy (``require_netns``, ``require_tool``) lives in ``skips.py``.
The helper programs the lab runs in its hosts (``udpecho.py``, ``mdns_node.py``,
``tcpxfer.py``, ``attacker.py``, ...) sit next to this file: ``LAB_DIR``.
"""

from pathlib import Path

from .netns import (
    PREFIX_RE,
    CommandError,
    Host,
    Lab,
    LabError,
    LabUnsupported,
    Lan,
    NatKind,
    NatRouter,
    Proc,
    Router,
    close_all_labs,
    list_netns,
    nat_ruleset,
)
from .probes import UDPECHO, udp_echo_server, udp_probe
from .skips import NETNS_REASON, netns_problem, require_netns, require_tool, skip_or_fail

LAB_DIR = Path(__file__).resolve().parent  # the lab's helper programs, run by path (installed or not)

__all__ = [
    "LAB_DIR",
    "NETNS_REASON",
    "PREFIX_RE",
    "UDPECHO",
    "CommandError",
    "Host",
    "Lab",
    "LabError",
    "LabUnsupported",
    "Lan",
    "NatKind",
    "NatRouter",
    "Proc",
    "Router",
    "close_all_labs",
    "list_netns",
    "nat_ruleset",
    "netns_problem",
    "require_netns",
    "require_tool",
    "skip_or_fail",
    "udp_echo_server",
    "udp_probe",
]
