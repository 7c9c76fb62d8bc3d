"""miniupnpd (Debian's miniupnpd-nftables 2.3.1) on a lab NAT router: UPnP IGD, NAT-PMP and PCP.

``Lab.nat_router(..., upnp=[stun server, ...])`` calls ``start_miniupnpd``. Everything lives in
the router's namespace and the lab's temp directory (config, pid and lease files); the lab
stops the process, and the namespace takes the nftables table with it.

Lab quirks this handles (issue 16):

- miniupnpd calls every documentation and private range "reserved" and forwards nothing from
  such an external address unless a STUN check says incoming connections get through:
  ``ext_perform_stun=yes`` with the lab's stund (lab/netns.py ``nat_ruleset(port_forwarding=True)``
  lets the server's answers from its other address and port in, and does not masquerade the
  router's own traffic ``fully-random``).
- Debian's ``/etc/miniupnpd/nft_init.sh`` sources ``miniupnpd_functions.sh``, which the package
  does not ship; the table and chains miniupnpd fills are made here (TABLE).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .skips import require_tool

NatRouter = Proc = Any  # lab/netns.py's (which imports this module): no import cycle

MINIUPNPD = "/usr/sbin/miniupnpd"
STARTS = 3  # tries to start it (see start_miniupnpd)
TABLE = "miniupnpd"  # upnp_table_name and upnp_nat_table_name
NFT = f"""
table inet {TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""


def config_text(router: NatRouter, stun_server: str, lease_file: str, natpmp: bool = True) -> str:
    return "\n".join([
        f"ext_ifname={router.wan_if}",
        f"listening_ip={router.lan_if}",
        "http_port=0",
        "enable_upnp=yes",
        f"enable_natpmp={'yes' if natpmp else 'no'}",  # NAT-PMP and PCP
        "ext_perform_stun=yes",
        f"ext_stun_host={stun_server}",
        "ext_stun_port=3478",
        "secure_mode=yes",
        f"uuid={uuid.uuid4()}",
        f"lease_file={lease_file}",
        f"upnp_table_name={TABLE}",
        f"upnp_nat_table_name={TABLE}",
        "min_lifetime=120",
        "max_lifetime=86400",
        "clean_ruleset_interval=600",
        "allow 1024-65535 10.0.0.0/8 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
    ])


def start_miniupnpd(router: NatRouter, *, stun_server: str, natpmp: bool = True, timeout: float = 15.0) -> Proc:
    """Start miniupnpd in ``router`` (made by ``Lab.nat_router``) and wait until it serves
    (``natpmp``: NAT-PMP and PCP too, else UPnP IGD alone)."""
    require_tool(MINIUPNPD)
    router.run(["nft", "-f", "-"], input=NFT)
    logdir = router.lab.logdir
    conf = logdir / f"{router.name}-miniupnpd.conf"
    pidfile = logdir / f"{router.name}-miniupnpd.pid"
    conf.write_text(config_text(router, stun_server, str(logdir / f"{router.name}-miniupnpd.leases"), natpmp))
    for attempt in range(STARTS):
        proc = router.popen([MINIUPNPD, "-d", "-f", str(conf), "-P", str(pidfile)],
                            name=f"{router.name}-miniupnpd")
        deadline = time.monotonic() + timeout
        while (natpmp and ":5351 " not in router.run(["ss", "-Hnlu"]).stdout) or "HTTP listening" not in proc.stderr():
            if not proc.alive() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return proc
        proc.stop()
        # its STUN check waits 3 x 3 s for answers and exits without them (a busy machine)
        if attempt == STARTS - 1 or "Performing STUN failed" not in proc.stderr():
            raise RuntimeError(f"miniupnpd did not start in {router.name}:\n{proc.stdout()}{proc.stderr()}")
    raise AssertionError("unreachable")


def nft_rules(router: NatRouter) -> str:
    """miniupnpd's table as ``nft list`` shows it (its DNAT and filter rules)."""
    return router.run(["nft", "list", "table", "inet", TABLE]).stdout
